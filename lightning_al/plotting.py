"""Learning curves of active-learning runs: a metric against the number of labels, mean ± std over seeds.

A *history* is the list of plain dicts `ActiveLearningLoop.run` returns (one row per fit,
with ``num_labelled`` and metrics such as ``test_accuracy``); a *run* is one seed's history.
``histories`` maps a strategy name to its runs: ``{"Random": [history_seed0, history_seed1], ...}``.

Runs are aligned on their ``num_labelled`` values, never on row positions: a strategy's curve has a
point at every label count that at least one of its runs recorded the metric at, and the statistics
of that point use exactly those runs. A run that stopped early (budget, empty pool) or used other
query sizes therefore contributes fewer points; `LearningCurve.num_runs` says how many runs
each point rests on. Rows without the metric (the unfitted row of a run that starts with no labels)
are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

History = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class LearningCurve:
    """One strategy's metric against labels, over its runs; every array has shape ``(P,)`` for ``P`` label counts.

    Attributes:
        num_labelled: the label counts, ascending (int64).
        mean: mean of the metric over the runs that recorded it at that count (float64).
        std: sample standard deviation over those runs, ``sqrt(sum (m - mean)^2 / (n - 1))``; 0 when ``n = 1``.
        num_runs: ``n``, the number of runs behind each point.
    """

    num_labelled: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    num_runs: np.ndarray


def _check_run(run: Any, where: str) -> History:
    if isinstance(run, Mapping) or not isinstance(run, Sequence) or isinstance(run, str):
        raise TypeError(f"Expected {where} to be a history (a list of dicts), but got {type(run).__name__}.")
    for row in run:
        if not isinstance(row, Mapping):
            raise TypeError(f"Expected the rows of {where} to be dicts, but got {type(row).__name__}.")
        if "num_labelled" not in row:
            raise ValueError(f"Expected every row of {where} to have 'num_labelled', but got keys {sorted(row)}.")
    return run


def _check_runs(runs: Any, where: str) -> list[History]:
    """``runs`` as a list of histories; a lone history (a list of dicts) is refused with a hint."""
    if isinstance(runs, Mapping) or not isinstance(runs, Sequence) or isinstance(runs, str):
        raise TypeError(f"Expected {where} to be a list of runs (one history per seed), but got {type(runs).__name__}.")
    if not runs:
        raise ValueError(f"Expected {where} to hold at least one run, but got an empty list.")
    if isinstance(runs[0], Mapping):
        raise TypeError(
            f"Expected {where} to be a list of runs (one history per seed), but got a single history "
            "(a list of dicts); wrap it in a list."
        )
    return [_check_run(run, f"{where}[{i}]") for i, run in enumerate(runs)]


def learning_curve(runs: Sequence[History], metric: str = "test_accuracy") -> LearningCurve:
    """Mean and sample standard deviation of ``metric`` per label count over ``runs`` (aligned on ``num_labelled``).

    >>> runs = [[{"num_labelled": 10, "acc": 0.5}, {"num_labelled": 20, "acc": 0.7}],
    ...         [{"num_labelled": 10, "acc": 0.7}]]
    >>> curve = learning_curve(runs, "acc")
    >>> curve.num_labelled.tolist(), curve.mean.round(3).tolist(), curve.std.round(3).tolist()
    ([10, 20], [0.6, 0.7], [0.141, 0.0])
    >>> curve.num_runs.tolist()
    [2, 1]
    """
    runs = _check_runs(runs, "`runs`")
    values: dict[int, list[float]] = {}
    for i, run in enumerate(runs):
        seen: set[int] = set()
        for row in run:
            count = int(row["num_labelled"])
            if count in seen:
                raise ValueError(f"Expected one row per label count in `runs[{i}]`, but got {count} twice.")
            seen.add(count)
            if metric in row:
                values.setdefault(count, []).append(float(row[metric]))
    if not values:
        keys = sorted({key for run in runs for row in run for key in row})
        raise ValueError(f"Expected some rows of `runs` to record `metric`={metric!r}, but none do; keys: {keys}.")
    counts = sorted(values)
    per_count = [np.asarray(values[c], dtype=np.float64) for c in counts]
    return LearningCurve(
        num_labelled=np.asarray(counts, dtype=np.int64),
        mean=np.array([v.mean() for v in per_count]),
        std=np.array([v.std(ddof=1) if v.size > 1 else 0.0 for v in per_count]),
        num_runs=np.array([v.size for v in per_count], dtype=np.int64),
    )


def labels_to_reach(history: History, target: float, metric: str = "test_accuracy") -> int | None:
    """The fewest labels at which one run's ``metric`` reached ``target`` (``>=``), or None if it never did.

    >>> labels_to_reach([{"num_labelled": 20, "acc": 0.5}, {"num_labelled": 30, "acc": 0.91}], 0.9, "acc")
    30
    """
    history = _check_run(history, "`history`")
    reached = [int(row["num_labelled"]) for row in history if metric in row and float(row[metric]) >= target]
    return min(reached) if reached else None


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "plot_learning_curves needs matplotlib: `pip install matplotlib` or `pip install lightning-al[examples]`."
        ) from error
    return plt


def _default_title(curves: Mapping[str, LearningCurve]) -> str:
    seeds = sorted({int(curve.num_runs.max()) for curve in curves.values()})
    count = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    return f"mean ± std over {count} seed{'' if seeds == [1] else 's'}"


def plot_learning_curves(
    histories: Mapping[str, Sequence[History]],
    metric: str = "test_accuracy",
    target: float | None = None,
    title: str | None = None,
    path: str | Path | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Plot ``metric`` against labelled samples, one line (mean) and band (± std) per strategy.

    Points come from `learning_curve` (runs aligned on ``num_labelled``, see the module
    docstring). Needs matplotlib (``pip install lightning-al[examples]``), imported on call.

    Args:
        histories: strategy name → its runs, one history (list of dicts from the loop) per seed.
        metric: the row key on the y axis.
        target: if given, a dashed horizontal line at this value.
        title: axes title; defaults to "mean ± std over N seeds".
        path: if given, the figure is saved there (format from the suffix; parent folders created).
        ax: axes to draw into; by default a new figure from ``matplotlib.pyplot``.

    Returns:
        The matplotlib ``Figure`` holding the axes.
    """
    if not isinstance(histories, Mapping):
        raise TypeError(
            f"Expected `histories` to map strategy names to lists of runs, but got {type(histories).__name__}."
        )
    if not histories:
        raise ValueError("Expected `histories` to hold at least one strategy, but got an empty mapping.")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int | float) or math.isnan(target)):
        raise ValueError(f"Expected `target` to be a number or None, but got {target!r}.")
    curves = {}
    for name, runs in histories.items():
        runs = _check_runs(runs, f"`histories[{name!r}]`")
        try:
            curves[name] = learning_curve(runs, metric)
        except ValueError as error:
            raise ValueError(f"In `histories[{name!r}]`: {error}") from error
    plt = _pyplot()
    if ax is None:
        figure, ax = plt.subplots(figsize=(7, 4.5))
    else:
        figure = ax.figure
    for name, curve in curves.items():
        (line,) = ax.plot(curve.num_labelled, curve.mean, label=name)
        ax.fill_between(
            curve.num_labelled,
            curve.mean - curve.std,
            curve.mean + curve.std,
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel("labelled samples")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title if title is not None else _default_title(curves))
    ax.grid(alpha=0.3)
    ax.legend()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
    return figure
