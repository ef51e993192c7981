"""The ``lightning-al`` command line: every shipped config builds, overrides apply, a run goes end to end."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import yaml

from lightning_al import ActiveDataModule, ActiveLearningLoop
from lightning_al.cli import DEFAULT_STRATEGY, ActiveLearningCLI, main
from lightning_al.datasets import Digits
from lightning_al.estimators import MCDropout
from lightning_al.strategies import BALD, Margin

CONFIG_DIR = Path(__file__).resolve().parents[1] / "examples" / "configs"
# sweep.yaml is a `lightning-al sweep` config (its `sweep` section lists strategies and seeds), not one run's:
# tests/test_sweep.py builds every run of it.
CONFIGS = sorted(path for path in CONFIG_DIR.glob("*.yaml") if path.stem != "sweep")
UNCERTAINTY = str(CONFIG_DIR / "uncertainty.yaml")
# A run small enough for a test: 10 initial labels, queries of 5, one short epoch per fit.
TINY = ["--data.initial_labelled", "10", "--loop.query_size", "5", "--trainer.max_epochs", "1"]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI gets its arguments from ``args``; pytest's own ``sys.argv`` would make LightningCLI warn."""
    monkeypatch.setattr("sys.argv", ["lightning-al"])


def resolve(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build(*args: str) -> ActiveLearningCLI:
    return ActiveLearningCLI(args=list(args))


def test_the_shipped_configs_cover_every_family() -> None:
    names = {path.stem for path in CONFIGS}
    assert {"uncertainty", "bayesian", "batchbald", "diversity", "coreset", "hybrid", "dynamics"} <= names
    assert {"loss_prediction", "vaal", "ceal", "file_oracle", "wandb"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_every_shipped_config_parses_and_instantiates(path: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    if raw["trainer"].get("logger", {}).get("class_path", "").endswith("WandbLogger"):
        pytest.importorskip("wandb")
    cli = build("--config", str(path), "--loop.output_dir", str(tmp_path))

    assert isinstance(cli.model, resolve(raw["model"]["class_path"]))
    assert isinstance(cli.datamodule, ActiveDataModule)
    assert cli.datamodule.num_labelled == raw["data"]["initial_labelled"]
    assert isinstance(cli.datamodule.train_set, resolve(raw["data"]["train_set"]["class_path"]))
    assert isinstance(cli.loop, ActiveLearningLoop)
    assert type(cli.loop.strategy) is resolve(raw["loop"]["strategy"]["class_path"])
    assert cli.loop.query_size == raw["loop"]["query_size"]
    assert (cli.loop.rounds, cli.loop.budget) == (raw["loop"].get("rounds"), raw["loop"].get("budget"))
    for section in ("estimator", "oracle"):
        if section in raw["loop"]:
            assert type(getattr(cli.loop, section)) is resolve(raw["loop"][section]["class_path"])
    # The trainer section is not one Trainer but every round's arguments: exactly those the config sets.
    assert cli.trainer is None
    assert set(cli.trainer_kwargs) == set(raw["trainer"])
    assert cli.loop.trainer_kwargs == cli.trainer_kwargs
    for name, value in raw["trainer"].items():
        if isinstance(value, dict):
            assert type(cli.trainer_kwargs[name]) is resolve(value["class_path"])
        else:
            assert cli.trainer_kwargs[name] == value


def test_print_config_parses_back_to_the_same_experiment(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(CONFIG_DIR / "bayesian.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    dumped = yaml.safe_load(printed)
    assert dumped["loop"]["strategy"]["class_path"] == "lightning_al.strategies.BALD"
    assert dumped["loop"]["estimator"]["init_args"]["mc_samples"] == 10
    assert dumped["trainer"]["max_epochs"] == 20
    assert dumped["resume"] is False

    (tmp_path / "printed.yaml").write_text(printed)
    cli = build("--config", str(tmp_path / "printed.yaml"))
    assert isinstance(cli.loop.strategy, BALD)
    assert isinstance(cli.loop.estimator, MCDropout) and cli.loop.estimator.mc_samples == 10
    assert cli.trainer_kwargs == {"accelerator": "cpu", "max_epochs": 20}  # the printed defaults are dropped
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "printed.yaml"), "--print_config"])
    assert capsys.readouterr().out == printed  # a fixed point


def test_command_line_overrides_any_field() -> None:
    cli = build(
        "--config",
        str(CONFIG_DIR / "bayesian.yaml"),
        "--loop.query_size=7",
        "--loop.estimator.init_args.mc_samples=3",
        "--trainer.max_epochs=2",
        "--model.init_args.hidden=16",
        "--data.batch_size=8",
    )
    assert cli.loop.query_size == 7
    assert cli.loop.estimator.mc_samples == 3
    assert cli.trainer_kwargs["max_epochs"] == 2
    assert cli.model.hparams.hidden == 16 and cli.model.net[0].out_features == 16
    assert cli.datamodule.batch_size == 8

    cli = build("--config", UNCERTAINTY, "--loop.strategy=lightning_al.strategies.Margin")
    assert isinstance(cli.loop.strategy, Margin)


def test_trainer_callbacks_and_explicit_flags_reach_every_round() -> None:
    cli = build(
        "--config",
        UNCERTAINTY,
        "--trainer.callbacks+=pytorch_lightning.callbacks.EarlyStopping",
        "--trainer.callbacks.monitor=train_loss",
        "--trainer.enable_checkpointing=false",
    )
    (callback,) = cli.trainer_kwargs["callbacks"]
    assert isinstance(callback, pl.callbacks.EarlyStopping) and callback.monitor == "train_loss"
    assert cli.trainer_kwargs["enable_checkpointing"] is False
    assert "logger" not in cli.trainer_kwargs  # left at the Trainer's default: the loop's own default applies


def test_default_strategy(tmp_path: Path) -> None:
    raw = yaml.safe_load(Path(UNCERTAINTY).read_text())
    del raw["loop"]["strategy"]
    (tmp_path / "no_strategy.yaml").write_text(yaml.safe_dump(raw))
    cli = build("--config", str(tmp_path / "no_strategy.yaml"))
    assert type(cli.loop.strategy) is resolve(DEFAULT_STRATEGY)


def test_runs_end_to_end_and_resumes_but_never_overwrites_a_run(tmp_path: Path) -> None:
    output = tmp_path / "run"
    args = ["--config", UNCERTAINTY, *TINY, "--loop.rounds", "2", "--loop.output_dir", str(output)]
    main(args)
    history = json.loads((output / "history.json").read_text())
    assert [row["round"] for row in history] == [0, 1, 2]
    assert [row["num_labelled"] for row in history] == [10, 15, 20]
    assert all(0.0 <= row["test_accuracy"] <= 1.0 for row in history)
    assert [len(row.get("selected_ids", [])) for row in history] == [5, 5, 0]
    saved = yaml.safe_load((output / "config.yaml").read_text())
    assert saved["loop"]["rounds"] == 2 and saved["data"]["initial_labelled"] == 10

    config_text = (output / "config.yaml").read_text()
    with pytest.raises(ValueError, match="resume"):
        main([*args, "--loop.query_size", "6"])
    assert (output / "config.yaml").read_text() == config_text  # the finished run's config is kept
    main([*args, "--resume"])  # the run is complete: resuming it adds nothing
    assert json.loads((output / "history.json").read_text()) == history
    assert (output / "config.yaml").read_text() == config_text


def _fill_query_file(directory: Path) -> int:
    """Label every row of the one query file under ``directory`` with the digits' true class; return its rows."""
    (path,) = directory.rglob("round_*.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    targets = Digits("pool").tensors[1]
    for row in rows:
        row["label"] = str(int(targets[int(row["id"])]))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def test_file_oracle_config_stops_for_labels_and_resumes(tmp_path: Path) -> None:
    output, labels = tmp_path / "run", tmp_path / "labels"
    args = [
        "--config",
        str(CONFIG_DIR / "file_oracle.yaml"),
        *TINY,
        "--loop.rounds=1",
        f"--loop.output_dir={output}",
        f"--loop.oracle.init_args.directory={labels}",
    ]
    main(args)  # round 0 fits, queries, and stops: a human has to label
    assert not (output / "history.json").exists() or json.loads((output / "history.json").read_text()) == []
    assert _fill_query_file(labels) == 5

    main([*args, "--resume"])
    history = json.loads((output / "history.json").read_text())
    assert [row["num_labelled"] for row in history] == [10, 15]


def _error_of(args: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code != 0
    return capsys.readouterr().err


def test_a_bad_class_path_is_named_in_the_error(capsys: pytest.CaptureFixture) -> None:
    err = _error_of(["--config", UNCERTAINTY, "--loop.strategy=lightning_al.strategies.NoSuchStrategy"], capsys)
    assert "loop.strategy" in err and "lightning_al.strategies.NoSuchStrategy" in err
    err = _error_of(["--config", UNCERTAINTY, "--loop.strategy=torch.nn.Linear"], capsys)
    assert "loop.strategy" in err and "Strategy" in err
    err = _error_of(["--config", UNCERTAINTY, "--model=lightning_al.models.NoSuchModel"], capsys)
    assert "model" in err and "NoSuchModel" in err


def test_constructor_arguments_are_checked() -> None:
    args: list[Any] = ["--config", UNCERTAINTY]
    with pytest.raises(ValueError, match="`run`"):
        ActiveLearningCLI(args=args, run=True)
    with pytest.raises(TypeError, match="`datamodule_class`"):
        ActiveLearningCLI(args=args, datamodule_class=pl.LightningDataModule)


def test_a_saved_config_never_holds_a_token(tmp_path: Path) -> None:
    from lightning_al.label_studio import LabelStudioError

    token = "f" * 40
    output = tmp_path / "run"
    args = [
        "--config", UNCERTAINTY, *TINY, "--loop.rounds=1", f"--loop.output_dir={output}",
        "--loop.oracle=lightning_al.label_studio.LabelStudioOracle",
        "--loop.oracle.init_args.url=http://127.0.0.1:9", f"--loop.oracle.init_args.token={token}",
        "--loop.oracle.init_args.class_names=[a,b,c,d,e,f,g,h,i,j]", "--loop.oracle.init_args.retries=0",
    ]  # fmt: skip
    with pytest.raises(LabelStudioError, match=r"Could not reach Label Studio at http://127\.0\.0\.1:9"):
        main(args)
    saved = (output / "config.yaml").read_text()
    assert "LabelStudioOracle" in saved and token not in saved
    assert yaml.safe_load(saved)["loop"]["oracle"]["init_args"]["token"] is None
