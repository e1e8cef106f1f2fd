"""Analyses of trained models (not metrics): CECV, L-G-DCNN's chemical-environment diagnostic."""

from harness.analysis.cecv import (
    THRESHOLDS,
    count_clusters,
    element_environments,
    environment_matrix,
    plot_cecv,
    run_cecv,
)

__all__ = ["THRESHOLDS", "count_clusters", "element_environments", "environment_matrix", "plot_cecv", "run_cecv"]
