"""Leaderboards: MLflow runs -> markdown tables, per-dataset pages with plots, CSV exports."""

from harness.leaderboard.build import LeaderboardError, write_all, write_leaderboard

__all__ = ["LeaderboardError", "write_all", "write_leaderboard"]
