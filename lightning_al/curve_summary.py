"""Per-strategy summaries of learning curves: labels to reach a target, area under the curve, time per round.

``results`` maps a strategy name to its runs (one history per seed, the list of dicts that
`lightning_al.ActiveLearningLoop.run` returns). Every figure is computed per seed, then reported as
mean ± sample standard deviation over the seeds. Curves are compared on the label counts that every
run recorded the metric at (`common_grid`), so runs are aligned on ``num_labelled``, never on row
positions.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from lightning_al.plotting import History, labels_to_reach

# The timed phases of a round, as the loop records them in each history row.
TIMED_PHASES = ("train_seconds", "test_seconds", "score_seconds", "select_seconds")
# The accuracy level `comparison_table` asks every strategy to reach when every run reaches it.
DEFAULT_TARGET = 0.9


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean ``m = sum_i x_i / n`` and sample standard deviation ``sqrt(sum_i (x_i - m)^2 / (n - 1))`` (0 if n = 1).

    Args:
        values: at least one number.

    >>> mean_std([1.0, 3.0])
    (2.0, 1.4142135623730951)
    """
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def common_grid(results: Mapping[str, Sequence[History]], metric: str) -> list[int]:
    """The label counts at which every run of every strategy recorded ``metric``, ascending.

    Args:
        results: strategy name → its runs.
        metric: the history key, e.g. ``"test_accuracy"``.
    """
    grids = [{int(row["num_labelled"]) for row in run if metric in row} for runs in results.values() for run in runs]
    return sorted(set.intersection(*grids)) if grids else []


def area_under_curve(run: History, grid: Sequence[int], metric: str) -> float:
    """Trapezoid area of ``metric`` over ``num_labelled`` on ``grid``: ``sum_i (n_{i+1} - n_i)(m_i + m_{i+1}) / 2``.

    Args:
        run: one history.
        grid: at least 2 label counts, ascending, at each of which ``run`` recorded ``metric``.
        metric: the history key.

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
    """Per strategy and seed, ``AULC / mean(AULC of reference)`` on the `common_grid` (1 = as good as the reference).

    Args:
        results: strategy name → its runs; must hold ``reference``.
        metric: the history key.
        reference: the strategy whose mean area is the unit.
    """
    if reference not in results:
        raise ValueError(f"Expected `results` to hold the reference {reference!r}, but got {sorted(results)}.")
    grid = common_grid(results, metric)
    base = statistics.mean(area_under_curve(run, grid, metric) for run in results[reference])
    return {name: [area_under_curve(run, grid, metric) / base for run in runs] for name, runs in results.items()}


def seconds_per_round(run: History) -> float:
    """Mean over the run's rows of the time spent fitting, testing, scoring and selecting (`TIMED_PHASES`).

    Args:
        run: one history.
    """
    return statistics.mean(sum(float(row.get(phase, 0.0)) for phase in TIMED_PHASES) for row in run)


def reach_cell(runs: Sequence[History], target: float, metric: str) -> str:
    """``"mean ± std"`` labels to reach ``target``; says how many seeds reached it when not all did.

    Args:
        runs: one strategy's runs.
        target: the metric value to reach (``>=``).
        metric: the history key.
    """
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
    """A markdown table: per strategy, labels to reach each target, normalised AULC, seconds per round.

    Args:
        results: strategy name → its runs; must hold ``reference``.
        targets: metric values, one column each.
        metric: the history key.
        reference: the strategy whose mean area under the curve is the unit.
    """
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


def final_value(run: History, metric: str) -> float:
    """``metric`` at the largest label count at which ``run`` recorded it.

    Args:
        run: one history with at least one row recording ``metric``.
        metric: the history key.

    >>> final_value([{"num_labelled": 10, "a": 0.5}, {"num_labelled": 20, "a": 0.6}, {"num_labelled": 30}], "a")
    0.6
    """
    rows = [row for row in run if metric in row]
    if not rows:
        raise ValueError(f"Expected the run to record {metric!r} in some row, but none does.")
    return float(max(rows, key=lambda row: int(row["num_labelled"]))[metric])


def common_target(results: Mapping[str, Sequence[History]], metric: str, cap: float = DEFAULT_TARGET) -> float:
    """``min(cap, L)``, with ``L`` the best level every run reached, ``min_runs max_rows metric``, floored to 1 %.

    Labels-to-reach it is then a number for every seed of every strategy.

    Args:
        results: strategy name → its runs.
        metric: the history key.
        cap: the level used whenever every run reaches it (90 %, as in the benchmark tables).

    >>> common_target({"A": [[{"num_labelled": 10, "a": 0.5}, {"num_labelled": 20, "a": 0.876}]]}, "a")
    0.87
    """
    best = min(max(float(row[metric]) for row in run if metric in row) for runs in results.values() for run in runs)
    return min(cap, math.floor(best * 100 + 1e-9) / 100)


def comparison_table(
    results: Mapping[str, Sequence[History]],
    metric: str = "test_accuracy",
    reference: str | None = "Random",
    target: float | None = None,
) -> str:
    """A markdown table: per strategy, its runs, final metric, area under the curve, labels to ``target``, time.

    Every cell but *runs* is mean ± sample std over the strategy's runs. *AULC* is `area_under_curve`
    on the `common_grid`, divided by ``reference``'s mean area when ``reference`` is in ``results``
    (`normalised_areas`), raw otherwise; "–" when the runs share fewer than 2 label counts.

    Args:
        results: strategy name → its runs (each recording ``metric`` in some row).
        metric: the history key.
        reference: the strategy whose mean area is the unit, or None for raw areas.
        target: the level of the *labels to* column; None: `common_target`.
    """
    target = common_target(results, metric) if target is None else target
    grid = common_grid(results, metric)
    normalised = reference is not None and reference in results
    if len(grid) < 2:
        areas = None
    elif normalised:
        areas = normalised_areas(results, metric, reference)
    else:
        areas = {name: [area_under_curve(run, grid, metric) for run in runs] for name, runs in results.items()}
    header = [
        "strategy",
        "runs",
        f"final {metric.replace('_', ' ')}",
        f"AULC ÷ {reference}" if normalised else "AULC",
        f"labels to {target:.0%}",
        "s / round",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, runs in results.items():
        final_mean, final_std = mean_std([final_value(run, metric) for run in runs])
        time_mean, time_std = mean_std([seconds_per_round(run) for run in runs])
        area = "–"
        if areas is not None:
            area_mean, area_std = mean_std(areas[name])
            area = f"{area_mean:.3f} ± {area_std:.3f}" if normalised else f"{area_mean:.2f} ± {area_std:.2f}"
        cells = [
            name,
            str(len(runs)),
            f"{final_mean:.4f} ± {final_std:.4f}",
            area,
            reach_cell(runs, target, metric),
            f"{time_mean:.2f} ± {time_std:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
