"""Leaderboards: MLflow runs -> markdown tables (+ plots)."""

from harness.leaderboard.build import LeaderboardError, write_leaderboard

__all__ = ["LeaderboardError", "write_leaderboard"]
