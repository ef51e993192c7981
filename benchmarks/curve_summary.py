"""The benchmarks' learning-curve summaries: `lightning_al.curve_summary`, re-exported under its old name."""

from __future__ import annotations

from lightning_al.curve_summary import (
    TIMED_PHASES,
    area_under_curve,
    common_grid,
    mean_std,
    normalised_areas,
    reach_cell,
    seconds_per_round,
    summary_table,
)
from lightning_al.plotting import History

__all__ = [
    "TIMED_PHASES",
    "History",
    "area_under_curve",
    "common_grid",
    "mean_std",
    "normalised_areas",
    "reach_cell",
    "seconds_per_round",
    "summary_table",
]
