"""Per-strategy summaries of learning curves: labels to reach a target, area under the curve, time per round.

``results`` maps a strategy name to its runs (one history per seed, the list of dicts that
:meth:`~lightning_al.ActiveLearningLoop.run` returns). Every figure is computed per seed, then
reported as mean ± sample standard deviation over the seeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_al.plotting import labels_to_reach

History = Sequence[Mapping[str, Any]]
# The timed phases of a round, as the loop records them in each history row.
TIMED_PHASES = ("train_seconds", "test_seconds", "score_seconds", "select_seconds")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def common_grid(results: Mapping[str, Sequence[History]], metric: str) -> list[int]:
    """The label counts at which every run of every strategy recorded ``metric``, ascending."""
    grids = [{int(row["num_labelled"]) for row in run if metric in row} for runs in results.values() for run in runs]
    return sorted(set.intersection(*grids)) if grids else []


def area_under_curve(run: History, grid: Sequence[int], metric: str) -> float:
    """Trapezoid area of ``metric`` over ``num_labelled`` on ``grid``: ``sum_i (n_{i+1} - n_i)(m_i + m_{i+1}) / 2``.

    >>> area_under_curve([{"num_labelled": 10, "a": 0.5}, {"num_labelled": 30, "a": 0.7}], [10, 30], "a")
    12.0
    """
    if len(grid) < 2:
        raise ValueError(f"Expected `grid` to hold at least 2 label counts, but got {list(grid)}.")
    by_count = {int(row["num_labelled"]): float(row[metric]) for row in run if metric in row}
    missing = [count for count in grid if count not in by_count]
    if missing:
        raise ValueError(f"Expected the run to record {metric!r} at every count of `grid`, but it lacks {missing}.")
    values = [by_count[count] for count in grid]
    return sum((grid[i + 1] - grid[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(grid) - 1))


def normalised_areas(
    results: Mapping[str, Sequence[History]], metric: str, reference: str = "Random"
) -> dict[str, list[float]]:
    """Per strategy and seed, its area under the curve divided by ``reference``'s mean area (same grid)."""
    if reference not in results:
        raise ValueError(f"Expected `results` to hold the reference {reference!r}, but got {sorted(results)}.")
    grid = common_grid(results, metric)
    base = statistics.mean(area_under_curve(run, grid, metric) for run in results[reference])
    return {name: [area_under_curve(run, grid, metric) / base for run in runs] for name, runs in results.items()}


def seconds_per_round(run: History) -> float:
    """Mean over the run's rows of the time spent fitting, testing, scoring and selecting."""
    return statistics.mean(sum(float(row.get(phase, 0.0)) for phase in TIMED_PHASES) for row in run)


def reach_cell(runs: Sequence[History], target: float, metric: str) -> str:
    """``"mean ± std"`` labels to reach ``target``; says how many seeds reached it when not all did."""
    reached = [labels_to_reach(run, target, metric) for run in runs]
    hits = [count for count in reached if count is not None]
    last = max(int(row["num_labelled"]) for run in runs for row in run)
    if not hits:
        return f"> {last}"
    mean, std = mean_std(hits)
    cell = f"{mean:.0f} ± {std:.0f}"
    return cell if len(hits) == len(runs) else f"{cell} ({len(hits)}/{len(runs)} seeds; rest > {last})"


def summary_table(
    results: Mapping[str, Sequence[History]],
    targets: Sequence[float],
    metric: str = "test_accuracy",
    reference: str = "Random",
) -> str:
    """A markdown table: per strategy, labels to reach each target, normalised AULC, seconds per round."""
    areas = normalised_areas(results, metric, reference)
    header = [
        "strategy",
        *(f"labels to {target:.0%}" for target in targets),
        f"AULC ÷ {reference}",
        "s / round",
        "seeds",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, runs in results.items():
        area_mean, area_std = mean_std(areas[name])
        time_mean, time_std = mean_std([seconds_per_round(run) for run in runs])
        cells = [
            name,
            *(reach_cell(runs, target, metric) for target in targets),
            f"{area_mean:.3f} ± {area_std:.3f}",
            f"{time_mean:.2f} ± {time_std:.2f}",
            str(len(runs)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
