"""Runs killed with SIGKILL (during fit, during scoring, right after labelling) resume without losing
or repeating a label, and end with the labelled set of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "kill_run.py"


def run(output_dir: Path, point: str = "none", round: int = 0, task: str = "multiclass") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(output_dir), point, str(round), task],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    output_dir = tmp_path_factory.mktemp("reference")
    finished = run(output_dir)
    assert finished.returncode == 0, finished.stderr
    return json.loads((output_dir / "labelled.json").read_text())


@pytest.mark.parametrize(("point", "round"), [("fit", 2), ("scoring", 1), ("labelled", 2)])
def test_a_killed_run_resumes_to_the_same_labelled_set(tmp_path, reference, point, round):
    killed = run(tmp_path, point, round)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "labelled.json").exists()

    resumed = run(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads((tmp_path / "labelled.json").read_text())
    assert len(result["ids"]) == len(set(result["ids"])) == 10 + 4 * 5  # nothing lost, nothing twice
    assert result["ids"] == reference["ids"]
    assert result["rounds"] == reference["rounds"]  # each sample labelled in the same round
    assert [row["selected_ids"] for row in result["history"][:-1]] == [
        row["selected_ids"] for row in reference["history"][:-1]
    ]
    assert [row["num_labelled"] for row in result["history"]] == [10, 15, 20, 25, 30]


@pytest.fixture(scope="module")
def segmentation_reference(tmp_path_factory) -> dict:
    output_dir = tmp_path_factory.mktemp("segmentation_reference")
    finished = run(output_dir, task="segmentation")
    assert finished.returncode == 0, finished.stderr
    return json.loads((output_dir / "labelled.json").read_text())


@pytest.mark.parametrize(("point", "round"), [("scoring", 1), ("labelled", 2)])
def test_a_killed_segmentation_run_resumes_without_losing_a_mask(tmp_path, segmentation_reference, point, round):
    reference, killed_dir = segmentation_reference, tmp_path
    killed = run(killed_dir, point, round, task="segmentation")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run(killed_dir, task="segmentation")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads((killed_dir / "labelled.json").read_text())
    assert len(result["ids"]) == len(set(result["ids"])) == 10 + 4 * 5
    assert result["ids"] == reference["ids"] and result["rounds"] == reference["rounds"]
    assert all(result["labels_match"])  # every stored mask is the dataset's own, after the kill too
