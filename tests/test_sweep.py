"""`lightning-al sweep`: strategies × seeds as resumable runs, one summary; stopped, it continues."""

from __future__ import annotations

import doctest
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_al import curve_summary, sweep
from lightning_al.cli import ActiveLearningCLI, main
from lightning_al.curve_summary import common_target, comparison_table
from lightning_al.sweep import Sweep, SweepRun

SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "configs" / "sweep.yaml"
# Runs of a few seconds, mostly start-up: 10 initial labels, 2 queries of 5, one short epoch per fit.
TINY = {
    "data": {"initial_labelled": 10, "batch_size": 16, "min_steps_per_epoch": 1},
    "trainer": {"max_epochs": 1},
    "loop": {"query_size": 5, "rounds": 2, "progress": False},
}
ROWS = TINY["loop"]["rounds"] + 1


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI gets its arguments from ``args``; pytest's own ``sys.argv`` would make LightningCLI warn."""
    monkeypatch.setattr("sys.argv", ["lightning-al"])


def tiny_config(tmp_path: Path, **sweep_section: Any) -> dict[str, Any]:
    """The shipped sweep, shrunk to seconds, into ``tmp_path / "sweep"``."""
    config = yaml.safe_load(SHIPPED.read_text())
    for section, values in TINY.items():
        config[section].update(values)
    config["sweep"]["strategies"]["BALD"]["init_args"]["mc_samples"] = 3
    config["sweep"].update({"output_dir": str(tmp_path / "sweep"), "workers": 2, **sweep_section})
    return config


def write(tmp_path: Path, config: dict[str, Any], name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def headers(run: SweepRun) -> list[str]:
    """The command lines the sweep started this run with, from its log."""
    log = run.directory / sweep.LOG_FILE
    return [line for line in log.read_text().splitlines() if line.startswith("=== ")] if log.exists() else []


def stamps(runs: list[SweepRun]) -> dict[str, int]:
    return {run.name: (run.directory / "history.json").stat().st_mtime_ns for run in runs if run.finished}


def test_a_killed_sweep_continues_and_then_reads_every_run_back(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path, tiny_config(tmp_path))
    runs = Sweep.from_file(path).runs
    assert [run.name for run in runs] == [f"{s}_seed{k}" for k in (0, 1) for s in ("Random", "Entropy", "BALD")]

    with (tmp_path / "killed.txt").open("w") as out:
        command = [sys.executable, "-m", "lightning_al.cli", "sweep", "--config", str(path)]
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(run.started for run in runs) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its runs, at once
    process.wait()
    started = {run.name for run in runs if run.started}
    finished_before = stamps(runs)
    assert started, (tmp_path / "killed.txt").read_text()
    assert len(finished_before) < len(runs)

    main(["sweep", "--config", str(path)])
    printed = capsys.readouterr().out
    assert f"{len(finished_before)} finished earlier, {len(runs) - len(finished_before)} to run," in printed
    for run in runs:
        assert [row["round"] for row in run.history()] == list(range(ROWS)), run.name
        assert run.finished
        starts = headers(run)
        if run.name in finished_before:  # not run again
            assert len(starts) == 1
        elif run.name in started:  # continued from its state, not restarted
            assert len(starts) == 2 and starts[1].endswith("--resume")
        else:  # launched (perhaps) but killed before its first state: started afresh
            assert starts and not any(start.endswith("--resume") for start in starts)
    assert {name: stamps(runs)[name] for name in finished_before} == finished_before

    output = tmp_path / "sweep"
    summary = (output / "summary.md").read_text()
    assert "| strategy | runs | final test accuracy | AULC ÷ Random |" in summary
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in summary.splitlines() if line.startswith("| ")}
    assert {"Random", "Entropy", "BALD"} <= set(rows)
    assert rows["Random"][1] == "2" and rows["Random"][3].startswith("1.000 ± ")
    assert (output / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml.safe_load((output / "base.yaml").read_text())["loop"] == TINY["loop"]  # no strategy, seed or folder

    before, logs = stamps(runs), {run.name: headers(run) for run in runs}
    main(["sweep", "--config", str(path)])
    assert f"{len(runs)} finished earlier, 0 to run" in capsys.readouterr().out
    assert stamps(runs) == before and {run.name: headers(run) for run in runs} == logs


def test_a_failing_run_is_reported_while_the_others_finish(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    strategies = {"Random": "lightning_al.strategies.Random", "Broken": "lightning_al.strategies.NoSuchStrategy"}
    path = write(tmp_path, tiny_config(tmp_path, seeds=[0], strategies=strategies))
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--config", str(path)])
    assert exit_info.value.code == 1
    output = tmp_path / "sweep"
    assert f"Broken_seed0: exit code 2, log: {output / 'Broken_seed0' / 'log.txt'}" in capsys.readouterr().err
    assert "NoSuchStrategy" in (output / "Broken_seed0" / "log.txt").read_text()
    assert len(json.loads((output / "Random_seed0" / "history.json").read_text())) == ROWS
    summary = (output / "summary.md").read_text()
    assert "| Random | 1 |" in summary and "- Broken_seed0: exit code 2" in summary


def test_a_changed_experiment_is_refused_but_seeds_strategies_and_workers_may_change(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tiny_config(tmp_path)
    Sweep.from_config(config).prepare()
    base = (tmp_path / "sweep" / "base.yaml").read_text()

    grown = tiny_config(tmp_path, seeds=[0, 1, 2], workers=1)
    grown["sweep"]["strategies"]["Margin"] = {"class_path": "lightning_al.strategies.Margin"}
    Sweep.from_config(grown).prepare()
    assert "Margin" in yaml.safe_load((tmp_path / "sweep" / "sweep.yaml").read_text())["strategies"]

    changed = tiny_config(tmp_path)
    changed["trainer"]["max_epochs"] = 2
    with pytest.raises(ValueError, match=r"`trainer.max_epochs` \(saved 1, now 2\) changed"):
        Sweep.from_config(changed).prepare()
    changed = tiny_config(tmp_path)
    changed["sweep"]["strategies"]["BALD"]["init_args"]["mc_samples"] = 5
    with pytest.raises(ValueError, match=r"`sweep.strategies.BALD.init_args.mc_samples` \(saved 3, now 5\)"):
        Sweep.from_config(changed).prepare()
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--config", str(write(tmp_path, changed))])
    assert exit_info.value.code == 2 and "Delete that folder" in capsys.readouterr().err
    assert (tmp_path / "sweep" / "base.yaml").read_text() == base


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"bogus": 1}, r"keys of `sweep` to be among .*, but got unknown \['bogus'\]"),
        ({"strategies": {}}, r"`sweep.strategies` to map names to strategies, but got \{\}"),
        ({"strategies": {"A": {"init_args": {}}}}, r"`sweep.strategies.A` to be a class path or a mapping"),
        ({"strategies": {"A B": "x.A", "A-B": "x.B"}}, r"distinct folders, but got \['A-B_seed0', 'A-B_seed0'\]"),
        ({"seeds": [0, 0]}, r"`sweep.seeds` to hold distinct integers, but got \[0, 0\]"),
        ({"seeds": [0, "1"]}, r"`sweep.seeds` to be an integer, but got '1'"),
        ({"seeds": []}, r"`sweep.seeds` to be a non-empty list of integers, but got \[\]"),
        ({"workers": 0}, r"`sweep.workers` to be an integer at least 1, but got 0"),
        ({"output_dir": None}, r"`sweep.output_dir` to be a folder path, but got None"),
        ({"reference": "Margin"}, r"`sweep.reference` to be one of \['Random', 'Entropy', 'BALD'\], but got 'Margin'"),
        ({"target": "high"}, r"`sweep.target` to be a number, but got 'high'"),
    ],
)
def test_bad_sweep_sections_are_refused_naming_the_key(tmp_path: Path, section: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sweep.from_config(tiny_config(tmp_path, **section))


def test_bad_command_lines_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tiny_config(tmp_path)
    del config["sweep"]
    for argv, message in [
        (["--config", str(write(tmp_path, tiny_config(tmp_path))), "--workers", "0"], "`--workers` to be at least 1"),
        (["--config", str(write(tmp_path, config, "plain.yaml"))], "a `sweep` section (a mapping), but got NoneType"),
        (["--config", str(tmp_path / "missing.yaml")], "`--config` to be a readable YAML file"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            sweep.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_every_run_of_the_shipped_sweep_parses_with_its_strategy_and_seeds(tmp_path: Path) -> None:
    shipped = Sweep.from_file(SHIPPED)
    assert len(shipped.strategies) == 3 and shipped.seeds == (0, 1) and shipped.reference == "Random"
    shipped = Sweep.from_config({**yaml.safe_load(SHIPPED.read_text()), "sweep": tiny_config(tmp_path)["sweep"]})
    base = shipped.prepare()
    for run in shipped.runs:
        command = run.command(base)
        assert command[1:3] == ["-m", "lightning_al.cli"]
        cli = ActiveLearningCLI(args=command[3:])
        assert type(cli.loop.strategy).__qualname__ == run.strategy_config["class_path"].rpartition(".")[2]
        assert (cli.loop.seed, cli.datamodule.seed, cli.config["seed_everything"]) == (run.seed,) * 3
        assert cli.loop.output_dir == run.directory and not cli.config["resume"]


def test_comparison_table_on_hand_computed_curves() -> None:
    def run(*accuracies: float) -> list[dict[str, Any]]:
        return [
            {"num_labelled": 10 * (i + 1), "test_accuracy": a, "train_seconds": 1.0} for i, a in enumerate(accuracies)
        ]

    results = {"Random": [run(0.5, 0.7), run(0.5, 0.9)], "Entropy": [run(0.6, 0.95), run(0.6, 0.95)]}
    assert common_target(results, "test_accuracy") == 0.7  # Random's first seed never passes 0.7
    lines = comparison_table(results).splitlines()
    assert lines[0] == "| strategy | runs | final test accuracy | AULC ÷ Random | labels to 70% | s / round |"
    # Areas on [10, 20]: Random 6 and 7 (mean 6.5), Entropy 7.75 → 7.75 / 6.5 = 1.1923.
    assert lines[2] == "| Random | 2 | 0.8000 ± 0.1414 | 1.000 ± 0.109 | 20 ± 0 | 1.00 ± 0.00 |"
    assert lines[3] == "| Entropy | 2 | 0.9500 ± 0.0000 | 1.192 ± 0.000 | 20 ± 0 | 1.00 ± 0.00 |"
    raw = comparison_table({"Entropy": results["Entropy"]}, reference="Random", target=0.99).splitlines()
    assert raw[0].split(" | ")[3:5] == ["AULC", "labels to 99%"] and raw[2].split(" | ")[3:5] == ["7.75 ± 0.00", "> 20"]
    assert comparison_table({"A": [run(0.5)]}).splitlines()[2].split(" | ")[3] == "–"  # one label count: no area


@pytest.mark.parametrize("module", [curve_summary, sweep], ids=lambda module: module.__name__)
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module, report=False)
    assert result.failed == 0 and result.attempted > 0
