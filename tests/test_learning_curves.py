"""The learning-curve benchmark: its smoke run writes tables and plots and resumes; its summaries add up."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from lightning_al.datasets import Digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package, from any working directory

from benchmarks import learning_curves
from benchmarks.arms import ARMS, COLD_START_ONLY_ARMS, FAMILIES, VARIANT_ARMS
from benchmarks.curve_summary import (
    area_under_curve,
    common_grid,
    normalised_areas,
    reach_cell,
    seconds_per_round,
    summary_table,
)
from benchmarks.settings import SETTINGS, imbalanced_digits


def _run(labels_and_accuracy: list[tuple[int, float]], seconds: float = 1.0) -> list[dict]:
    return [
        {"round": r, "num_labelled": n, "test_accuracy": a, "train_seconds": seconds}
        for r, (n, a) in enumerate(labels_and_accuracy)
    ]


def test_quick_run_writes_table_and_plot_then_resumes_without_recomputing(tmp_path):
    argv = ["--quick", "--settings", "digits", "--strategies", "Entropy", "--workers", "1", "--output", str(tmp_path)]
    assert learning_curves.main(argv) == 0

    table = (tmp_path / "digits.md").read_text()
    assert "| strategy | labels to 80% | labels to 90% | labels to 95% | AULC ÷ Random | s / round | seeds |" in table
    rows = [line for line in table.splitlines() if line.startswith("| Random |") or line.startswith("| Entropy |")]
    assert len(rows) == 2  # Random is added as the reference
    assert rows[0].split(" | ")[4] == "1.000 ± 0.000"  # Random's AULC relative to itself
    assert "2 queries of 10 (20-40 labels, 3 fits)" in table
    assert (tmp_path / "digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "digits.png").stat().st_size > 10_000

    runs = tmp_path / "runs" / "digits"
    histories = {name: (runs / f"{name}_seed0" / "history.json") for name in ("Random", "Entropy")}
    assert [len(json.loads(p.read_text())) for p in histories.values()] == [3, 3]

    def stamps() -> dict[str, tuple[int, int]]:
        return {
            name: (p.stat().st_mtime_ns, (p.parent / "state.pt").stat().st_mtime_ns) for name, p in histories.items()
        }

    before = stamps()
    assert learning_curves.main(argv) == 0
    assert stamps() == before  # neither history nor state rewritten: nothing was recomputed
    assert (tmp_path / "digits.md").read_text() == table  # the same histories, read back


def test_a_changed_protocol_is_refused_rather_than_mixed(tmp_path):
    setting = SETTINGS["digits"].quick()
    learning_curves.check_protocol(setting, tmp_path)
    learning_curves.check_protocol(dataclasses.replace(setting, seeds=5, arms=("Random",)), tmp_path)  # runs add up
    with pytest.raises(SystemExit, match=r"\['epochs'\] changed"):
        learning_curves.check_protocol(dataclasses.replace(setting, epochs=3), tmp_path)


def test_area_under_curve_is_the_trapezoid_over_labels():
    run = _run([(10, 0.5), (20, 0.7), (40, 0.8)])
    # (20 - 10)(0.5 + 0.7)/2 + (40 - 20)(0.7 + 0.8)/2 = 6 + 15
    assert area_under_curve(run, [10, 20, 40], "test_accuracy") == pytest.approx(21.0)
    assert area_under_curve(run, [10, 20], "test_accuracy") == pytest.approx(6.0)
    with pytest.raises(ValueError, match=r"lacks \[30\]"):
        area_under_curve(run, [10, 30], "test_accuracy")


def test_areas_are_normalised_by_randoms_mean_on_the_shared_grid():
    results = {
        "Random": [_run([(10, 0.4), (20, 0.6)]), _run([(10, 0.6), (20, 0.8)])],  # areas 5 and 7: mean 6
        "Other": [_run([(10, 0.6), (20, 0.9), (30, 1.0)])],  # 30 is off the shared grid: area 7.5
    }
    assert common_grid(results, "test_accuracy") == [10, 20]
    areas = normalised_areas(results, "test_accuracy")
    assert areas["Random"] == pytest.approx([5 / 6, 7 / 6])
    assert areas["Other"] == pytest.approx([7.5 / 6])


def test_reach_cell_reports_mean_std_and_the_seeds_that_never_reached():
    runs = [_run([(20, 0.7), (30, 0.85), (40, 0.92)]), _run([(20, 0.75), (30, 0.91), (40, 0.93)])]
    assert reach_cell(runs, 0.8, "test_accuracy") == "30 ± 0"
    assert reach_cell(runs, 0.9, "test_accuracy") == f"35 ± {math.sqrt(50):.0f}"
    assert reach_cell(runs, 0.925, "test_accuracy") == "40 ± 0 (1/2 seeds; rest > 40)"
    assert reach_cell(runs, 0.99, "test_accuracy") == "> 40"


def test_seconds_per_round_sums_the_timed_phases_and_averages_the_rows():
    run = [
        {"num_labelled": 20, "test_accuracy": 0.5, "train_seconds": 1.0, "test_seconds": 0.5, "score_seconds": 0.25}
        | {"select_seconds": 0.25},
        {"num_labelled": 30, "test_accuracy": 0.6, "train_seconds": 3.0},
    ]
    assert seconds_per_round(run) == pytest.approx((2.0 + 3.0) / 2)
    table = summary_table({"Random": [run, run]}, (0.9,))
    assert "| Random | > 30 | 1.000 ± 0.000 | 2.50 ± 0.00 | 2 |" in table


def test_imbalanced_pool_keeps_a_geometric_share_of_each_class_and_a_balanced_test_set():
    pool, test = imbalanced_digits()
    counts = torch.bincount(pool.tensors[1], minlength=10).tolist()
    full = torch.bincount(Digits("pool").tensors[1]).tolist()
    assert counts == [round(n * 0.1 ** (c / 9)) for c, n in enumerate(full)]
    assert counts[0] == 119 and counts[9] == 12 and sum(counts) == 491
    test_counts = torch.bincount(test.tensors[1]).tolist()
    assert min(test_counts) == 58 and max(test_counts) == 60


def test_every_arm_is_in_one_family_and_the_main_settings_run_them_all():
    in_families = [name for names in FAMILIES.values() for name in names]
    assert sorted(in_families) == sorted(name for name in ARMS if name != "Random")
    main = tuple(name for name in ARMS if name not in COLD_START_ONLY_ARMS and name not in VARIANT_ARMS)
    assert SETTINGS["digits"].arms == SETTINGS["digits_imbalanced"].arms == main
    cold = SETTINGS["digits_cold_start"].arms
    assert cold[0] == "Random" and set(cold) <= set(ARMS) and {"TypiClust", "ProbCover", "BudgetAware"} <= set(cold)
    assert set(COLD_START_ONLY_ARMS) <= set(cold)


class _Interrupt(Exception):
    pass


class _StopAfter:
    """A progress queue whose ``put`` interrupts the run after ``rounds`` completed rounds."""

    def __init__(self, rounds: int) -> None:
        self.left = rounds

    def put(self, _: int) -> None:
        self.left -= 1
        if self.left == 0:
            raise _Interrupt


def test_an_interrupted_run_continues_after_its_last_completed_round(tmp_path):
    setting = SETTINGS["digits"].quick()
    with pytest.raises(_Interrupt):
        learning_curves.run_arm(setting, "Margin", 0, tmp_path, progress=_StopAfter(2))
    first_two = json.loads((tmp_path / "history.json").read_text())
    assert [row["num_labelled"] for row in first_two] == [20, 30]

    history = learning_curves.run_arm(setting, "Margin", 0, tmp_path)
    assert [row["num_labelled"] for row in history] == [20, 30, 40]
    assert history[:2] == first_two  # the same rows, timings included: not fitted again
