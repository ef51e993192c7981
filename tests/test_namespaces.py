"""Both Lightning namespaces, first class: ``import lightning as L`` models and ``pytorch_lightning`` models.

The loop, every callback of the library, resume and the CLI run with a model of either package (the
2-process DDP run is parametrised in test_ddp.py); mixing the packages is refused naming both.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FAST_TRAINER, NAMESPACES, QUIET_TRAINER, blobs, tiny_classifier_class

import lightning_al as al
from lightning_al import namespace
from lightning_al.bayes import BayesKLCallback, convert_to_bayesian
from lightning_al.callbacks import ForgettingCallback
from lightning_al.cli import main, namespace_for
from lightning_al.estimators import BayesByBackprop, SnapshotEnsemble
from lightning_al.strategies import BALD, CEAL, MAL, VAAL, Entropy, LabelDispersion, LossPrediction


def tiny_model(ns: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tiny_classifier_class(ns)()


def datamodule(n: int = 90) -> al.ActiveDataModule:
    return al.ActiveDataModule(blobs(n), test_set=blobs(30, seed=1), initial_labelled=9, batch_size=8, seed=0)


def run(ns: str, strategy: al.Strategy, estimator: al.Estimator | None = None, **loop_kwargs) -> list[dict]:
    loop = al.ActiveLearningLoop(
        strategy,
        query_size=6,
        rounds=2,
        estimator=estimator,
        trainer_kwargs=FAST_TRAINER,
        progress=False,
        **loop_kwargs,
    )
    return loop.run(tiny_model(ns), datamodule())


def test_both_packages_are_installed_and_found() -> None:
    assert [ns.name for ns in namespace.installed()] == ["pytorch_lightning", "lightning.pytorch"]
    assert namespace.get("lightning") is namespace.get("lightning.pytorch")
    with pytest.raises(ValueError, match="Expected a Lightning namespace among"):
        namespace.get("lightning.fabric")


@pytest.mark.parametrize("ns", NAMESPACES)
def test_the_namespace_is_read_from_the_model(ns: str) -> None:
    assert namespace.namespace_of(tiny_model(ns)).name == ns
    with pytest.raises(TypeError, match=r"`model` to be a `pytorch_lightning\.LightningModule` or `lightning\.pytorch"):
        namespace.namespace_of(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("ns", NAMESPACES)
def test_the_loop_builds_its_trainers_from_the_model_namespace(ns: str) -> None:
    trainer_types: list[type] = []

    class Spy(al.callbacks.ForgettingCallback):
        def on_fit_start(self, trainer, pl_module) -> None:
            trainer_types.append(type(trainer))
            super().on_fit_start(trainer, pl_module)

    loop = al.ActiveLearningLoop(
        Entropy(), query_size=6, rounds=2, trainer_kwargs={**FAST_TRAINER, "callbacks": [Spy()]}, progress=False
    )
    dm = datamodule()
    history = loop.run(tiny_model(ns), dm)
    assert [row["num_labelled"] for row in history] == [9, 15, 21]
    assert all(0.0 <= row["test_accuracy"] <= 1.0 for row in history)
    expected = importlib.import_module(ns).Trainer
    assert trainer_types == [expected] * 3


def test_models_of_both_namespaces_run_in_one_process() -> None:
    first, second = run("pytorch_lightning", Entropy()), run("lightning.pytorch", Entropy())
    assert [row["selected_ids"] for row in first[:2]] == [row["selected_ids"] for row in second[:2]]


CALLBACK_RUNS = {
    "label_dispersion": lambda: (LabelDispersion(), None, None),
    "loss_prediction": lambda: (LossPrediction(["net.0", "net.1"], hidden=8, detach_after_epoch=2), None, None),
    "vaal": lambda: (VAAL(latent_dim=4, hidden=16), None, None),
    "mal": lambda: (MAL("net.1"), None, None),
    "ceal": lambda: (CEAL(Entropy(), threshold=0.5, decay=0.0), None, None),
    "snapshot_ensemble": lambda: (BALD(), SnapshotEnsemble(cycles=2), None),
    "bayes_by_backprop": lambda: (BALD(), BayesByBackprop(mc_samples=3), convert_to_bayesian),
}


@pytest.mark.parametrize("ns", NAMESPACES)
@pytest.mark.parametrize("name", sorted(CALLBACK_RUNS))
def test_every_callback_of_the_library_runs_in_either_namespace(ns: str, name: str) -> None:
    strategy, estimator, convert = CALLBACK_RUNS[name]()
    model = tiny_model(ns)
    if convert is not None:
        model = convert(model)
    kwargs = dict(FAST_TRAINER)
    if name == "bayes_by_backprop":
        kwargs["callbacks"] = [BayesKLCallback()]
    loop = al.ActiveLearningLoop(
        strategy, query_size=6, rounds=2, estimator=estimator, trainer_kwargs=kwargs, progress=False
    )
    dm = datamodule()
    history = loop.run(model, dm)
    assert dm.num_labelled == 21
    queried = [id_ for row in history for id_ in row.get("selected_ids", [])]
    assert len(queried) == len(set(queried)) == 12


@pytest.mark.parametrize("ns", NAMESPACES)
def test_library_callbacks_and_datamodule_work_in_a_users_own_trainer(ns: str) -> None:
    lightning = importlib.import_module(ns)
    forgetting = ForgettingCallback()
    assert isinstance(forgetting, lightning.Callback)
    dm = datamodule()
    assert isinstance(dm, lightning.LightningDataModule)
    trainer = lightning.Trainer(callbacks=[forgetting], **FAST_TRAINER, **QUIET_TRAINER)
    trainer.fit(tiny_model(ns), datamodule=dm)
    assert forgetting.presentations is not None
    assert int(forgetting.presentations[dm.labelled_ids].min()) >= 3  # 3 epochs


@pytest.mark.parametrize("ns", NAMESPACES)
def test_a_run_resumes_in_either_namespace(ns: str, tmp_path: Path) -> None:
    oracle_calls: list[list[int]] = []

    class StopAfterOne(al.DatasetOracle):
        def label(self, ids):
            oracle_calls.append(ids.tolist())
            if len(oracle_calls) == 2:
                raise al.LabelsPending("labels are on their way")
            return super().label(ids)

    dm = datamodule()
    loop = al.ActiveLearningLoop(
        Entropy(), query_size=6, rounds=3, oracle=StopAfterOne(dm.train_set), trainer_kwargs=FAST_TRAINER,
        output_dir=str(tmp_path), progress=False,
    )  # fmt: skip
    loop.run(tiny_model(ns), dm)
    assert loop.pending_query is not None and dm.num_labelled == 15

    resumed_dm = datamodule()
    resumed = al.ActiveLearningLoop(
        Entropy(), query_size=6, rounds=3, trainer_kwargs=FAST_TRAINER, output_dir=str(tmp_path), progress=False
    )
    history = resumed.run(tiny_model(ns, seed=5), resumed_dm, resume=True)
    assert resumed_dm.num_labelled == 27 and len(history) == 4
    assert history[1]["selected_ids"] == oracle_calls[1]  # the pending query is answered, not asked anew


@pytest.mark.parametrize(
    ("model_ns", "other"), [("lightning.pytorch", "pytorch_lightning"), ("pytorch_lightning", "lightning.pytorch")]
)
def test_a_callback_or_logger_of_the_other_namespace_is_refused(model_ns: str, other: str, tmp_path: Path) -> None:
    foreign = importlib.import_module(f"{other}.callbacks").ModelCheckpoint(dirpath=tmp_path)
    loop = al.ActiveLearningLoop(Entropy(), query_size=6, rounds=1, trainer_kwargs={"callbacks": [foreign]})
    dm = datamodule()
    with pytest.raises(
        TypeError, match=rf"`{model_ns}` Callback like the model, but got ModelCheckpoint from `{other}`"
    ):
        loop.run(tiny_model(model_ns), dm)
    assert dm.num_labelled == 9  # refused before anything was labelled

    logger = importlib.import_module(f"{other}.loggers").CSVLogger(tmp_path)
    loop = al.ActiveLearningLoop(Entropy(), query_size=6, rounds=1, trainer_kwargs={"logger": logger})
    with pytest.raises(TypeError, match=rf"`trainer_kwargs\['logger'\]`.*CSVLogger from `{other}`"):
        loop.run(tiny_model(model_ns), dm)


@pytest.mark.parametrize("ns", NAMESPACES)
def test_from_datamodule_takes_a_datamodule_of_either_namespace(ns: str) -> None:
    lightning = importlib.import_module(ns)
    train, test = blobs(60), blobs(20, seed=1)

    class Plain(lightning.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(train, batch_size=7)

        def test_dataloader(self):
            return torch.utils.data.DataLoader(test, batch_size=7)

    active = al.ActiveDataModule.from_datamodule(Plain(), initial_labelled=5)
    assert active.train_set is train and active.test_set is test and active.val_set is None
    assert active.batch_size == 7


# ----- the CLI ------------------------------------------------------------------------------------
UNIFIED_MODEL = """
import lightning as L
import torch
from torch import nn


class UnifiedMLP(L.LightningModule):
    def __init__(self, in_features: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)
"""

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "uncertainty.yaml"
TINY_RUN = [
    "--data.initial_labelled",
    "10",
    "--loop.query_size",
    "5",
    "--loop.rounds",
    "1",
    "--trainer.max_epochs",
    "1",
]


@pytest.fixture
def unified_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The uncertainty config with a ``lightning.pytorch`` model (importable from ``tmp_path``)."""
    (tmp_path / "unified_models.py").write_text(UNIFIED_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("sys.argv", ["lightning-al"])
    config = yaml.safe_load(CONFIG.read_text())
    config["model"] = {"class_path": "unified_models.UnifiedMLP", "init_args": {"in_features": 64}}
    path = tmp_path / "unified.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_cli_namespace_follows_the_config_model(unified_config: Path) -> None:
    assert namespace_for(["--config", str(CONFIG)])[0].name == "pytorch_lightning"
    ns, rest = namespace_for(["--config", str(unified_config), "--loop.rounds", "1"])
    assert ns.name == "lightning.pytorch" and rest == ["--config", str(unified_config), "--loop.rounds", "1"]
    assert (
        namespace_for(["--config", str(CONFIG), "--model", "unified_models.UnifiedMLP"])[0].name == "lightning.pytorch"
    )
    ns, rest = namespace_for(["--lightning", "lightning.pytorch", "--config", str(CONFIG)])
    assert ns.name == "lightning.pytorch" and rest == ["--config", str(CONFIG)]


@pytest.mark.parametrize("ns", NAMESPACES)
def test_the_cli_runs_an_experiment_in_either_namespace(ns: str, unified_config: Path, tmp_path: Path) -> None:
    config = CONFIG if ns == "pytorch_lightning" else unified_config
    out = tmp_path / "run"
    main(["--config", str(config), *TINY_RUN, "--loop.output_dir", str(out)])
    history = json.loads((out / "history.json").read_text())
    assert [row["num_labelled"] for row in history] == [10, 15]
    assert "test_accuracy" in history[-1]


def test_the_console_command_runs_a_lightning_model(unified_config: Path, tmp_path: Path) -> None:
    """``lightning-al`` as a user runs it, in a fresh interpreter that imports only ``lightning``'s model."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from lightning_al.cli import main
        main(sys.argv[1:])
        """
    )
    out = tmp_path / "console"
    args = ["--config", str(unified_config), *TINY_RUN, "--loop.output_dir", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "history.json").read_text())[-1]["num_labelled"] == 15
