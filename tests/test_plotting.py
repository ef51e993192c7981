"""Learning curves: alignment on label counts, mean ± sample std over seeds, the saved figure."""

from __future__ import annotations

import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from lightning_al.plotting import labels_to_reach, learning_curve, plot_learning_curves

# Three seeds of one strategy at the same label counts.
ALIGNED = [
    [{"num_labelled": 10, "test_accuracy": 0.50}, {"num_labelled": 20, "test_accuracy": 0.70}],
    [{"num_labelled": 10, "test_accuracy": 0.60}, {"num_labelled": 20, "test_accuracy": 0.75}],
    [{"num_labelled": 10, "test_accuracy": 0.70}, {"num_labelled": 20, "test_accuracy": 0.95}],
]
# Seeds that disagree: one starts unlabelled (a row without the metric), one stops early, one queries 15.
MISALIGNED = [
    [
        {"num_labelled": 0},
        {"num_labelled": 10, "test_accuracy": 0.5},
        {"num_labelled": 20, "test_accuracy": 0.6},
        {"num_labelled": 30, "test_accuracy": 0.7},
    ],
    [{"num_labelled": 10, "test_accuracy": 0.7}, {"num_labelled": 20, "test_accuracy": 0.8}],
    [{"num_labelled": 10, "test_accuracy": 0.6}, {"num_labelled": 25, "test_accuracy": 0.9}],
]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def band_at(ax, x: float) -> tuple[float, float]:
    """Lowest and highest y of the first fill_between band at abscissa ``x``."""
    vertices = ax.collections[0].get_paths()[0].vertices
    ys = [y for vx, y in vertices if vx == pytest.approx(x)]
    return min(ys), max(ys)


def test_band_is_mean_plus_minus_sample_std_over_seeds():
    figure = plot_learning_curves({"Entropy": ALIGNED})
    ax = figure.axes[0]
    line = ax.lines[0]
    assert line.get_xdata().tolist() == [10, 20]
    for i, count in enumerate((10, 20)):
        values = [run[i]["test_accuracy"] for run in ALIGNED]
        mean, std = statistics.mean(values), statistics.stdev(values)
        assert line.get_ydata()[i] == pytest.approx(mean)
        low, high = band_at(ax, count)
        assert low == pytest.approx(mean - std)
        assert high == pytest.approx(mean + std)
    assert ax.get_title() == "mean ± std over 3 seeds"
    assert ax.get_ylabel() == "test accuracy"


def test_misaligned_runs_are_aligned_on_label_counts():
    curve = learning_curve(MISALIGNED)
    assert curve.num_labelled.tolist() == [10, 20, 25, 30]
    assert curve.num_runs.tolist() == [3, 2, 1, 1]
    assert curve.mean.tolist() == pytest.approx([0.6, 0.7, 0.9, 0.7])
    assert curve.std.tolist() == pytest.approx([statistics.stdev([0.5, 0.7, 0.6]), statistics.stdev([0.6, 0.8]), 0, 0])

    ax = plot_learning_curves({"Margin": MISALIGNED}).axes[0]
    assert ax.lines[0].get_xdata().tolist() == [10, 20, 25, 30]
    assert band_at(ax, 25) == pytest.approx((0.9, 0.9))  # one run: no spread


def test_target_line_legend_and_saved_figure(tmp_path):
    path = tmp_path / "plots" / "curves.png"
    figure = plot_learning_curves({"Random": ALIGNED, "Margin": MISALIGNED}, target=0.8, title="digits", path=path)
    assert isinstance(figure, Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000
    ax = figure.axes[0]
    assert ax.get_title() == "digits"
    target = [line for line in ax.lines if line.get_label() == "target 0.8"]
    assert len(target) == 1 and set(target[0].get_ydata()) == {0.8}
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["Random", "Margin", "target 0.8"]


def test_default_title_counts_seeds_per_strategy():
    ax = plot_learning_curves({"A": ALIGNED, "B": ALIGNED[:1]}).axes[0]
    assert ax.get_title() == "mean ± std over 1–3 seeds"


def test_draws_into_the_given_axes_and_another_metric():
    figure, ax = plt.subplots()
    runs = [[{"num_labelled": 5, "val_loss": 1.0}, {"num_labelled": 9, "val_loss": 0.5}]]
    assert plot_learning_curves({"BALD": runs}, metric="val_loss", ax=ax) is figure
    assert ax.lines[0].get_ydata().tolist() == [1.0, 0.5]
    assert ax.get_ylabel() == "val loss"


def test_labels_to_reach_is_the_fewest_labels_at_or_above_target():
    history = [
        {"num_labelled": 0},
        {"num_labelled": 20, "test_accuracy": 0.5},
        {"num_labelled": 30, "test_accuracy": 0.9},
        {"num_labelled": 40, "test_accuracy": 0.89},
    ]
    assert labels_to_reach(history, 0.9) == 30
    assert labels_to_reach(history, 0.95) is None
    assert labels_to_reach(list(reversed(history)), 0.85) == 30


@pytest.mark.parametrize(
    ("histories", "error", "match"),
    [
        ([ALIGNED], TypeError, "Expected `histories` to map strategy names"),
        ({}, ValueError, "at least one strategy"),
        ({"Random": ALIGNED[0]}, TypeError, "single history .* wrap it in a list"),
        ({"Random": []}, ValueError, r"`histories\['Random'\]` to hold at least one run"),
        ({"Random": [[{"test_accuracy": 0.5}]]}, ValueError, "'num_labelled'"),
        ({"Random": [[{"num_labelled": 3, "accuracy": 0.5}]]}, ValueError, r"Random.*'test_accuracy'.*\['accuracy'"),
        (
            {"Random": [[{"num_labelled": 3, "test_accuracy": 0.5}, {"num_labelled": 3, "test_accuracy": 0.6}]]},
            ValueError,
            "one row per label count",
        ),
    ],
)
def test_bad_histories_are_refused_with_the_argument_named(histories, error, match):
    with pytest.raises(error, match=match):
        plot_learning_curves(histories)


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install matplotlib"):
        plot_learning_curves({"Random": ALIGNED})
