"""The digits demo: its command line runs, and uncertainty sampling beats Random on real data."""

from __future__ import annotations

import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import digits  # noqa: E402


def test_demo_command_line_writes_table_plot_and_history(tmp_path):
    out = tmp_path / "digits"
    command = [
        sys.executable,
        str(ROOT / "examples" / "digits.py"),
        "--seeds",
        "1",
        "--rounds",
        "1",
        "--epochs",
        "2",
        "--workers",
        "1",
        "--strategies",
        "Random",
        "Entropy",
        "--output",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    assert "| labels | Random | Entropy |" in result.stdout
    assert "labels to reach 90% test accuracy" in result.stdout
    assert (out / "learning_curves.png").stat().st_size > 10_000
    assert (out / "Entropy_seed0" / "history.json").exists()


def test_labels_to_reach_takes_the_first_crossing():
    history = [
        {"num_labelled": 20, "test_accuracy": 0.5},
        {"num_labelled": 30, "test_accuracy": 0.91},
        {"num_labelled": 40, "test_accuracy": 0.89},
    ]
    assert digits.labels_to_reach(history, 0.9) == 30
    assert digits.labels_to_reach(history, 0.95) is None


@pytest.mark.slow
def test_uncertainty_strategies_need_fewer_labels_than_random_on_digits():
    args = Namespace(initial=20, query_size=10, rounds=14, epochs=50, output=None)
    reached = {}
    for name, arm in digits.ARMS.items():
        history = digits.run_experiment(name, arm, seed=0, args=args)
        reached[name] = digits.labels_to_reach(history, 0.9) or float("inf")
    for name in ("LeastConfidence", "Margin", "Entropy"):
        assert reached[name] < reached["Random"], reached
