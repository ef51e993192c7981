"""Round logging: per-round scalars, query tables and the learning curve, read back from an offline W&B run."""

from __future__ import annotations

import csv
import importlib
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from conftest import FAST_TRAINER, QUIET_TRAINER, TinyClassifier, blobs
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from torch.utils.data import DataLoader
from wandb_offline import OfflineRun, describe_offline_run, offline_wandb, read_offline_run

from lightning_al.oracles import Query
from lightning_al.round_logging import (
    RoundFitLogger,
    RoundLogger,
    image_thumbnails,
    labelled_id_records,
    learning_curve,
    scalar_entries,
)

# ----- a small experiment: 12 pool samples, ground truth id % 3 ----------------------------------
NUM_POOL = 12
TRUE_LABELS = torch.arange(NUM_POOL) % 3
CONFIG = {"strategy": "Entropy()", "query_size": 4, "rounds": 2, "budget": None, "seed": 0}
QUERY_0 = Query(
    round=0,
    ids=torch.tensor([5, 7, 2]),
    scores=torch.tensor([0.9, 0.8, 0.3], dtype=torch.float64),
    predicted=torch.tensor([1, 0, 2]),
)
QUERY_1 = Query(round=1, ids=torch.tensor([0, 11, 3, 9]), scores=torch.tensor([2.0, 1.5, 1.0, 0.5]), predicted=None)
IMAGES_0 = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)  # (k, H, W) grayscale
IMAGES_1 = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # (k, C, H, W) RGB in [0, 1]
HISTORY = [
    {
        "round": 0,
        "num_labelled": 4,
        "test_accuracy": 0.5,
        "train_seconds": 0.25,
        "test_seconds": 0.0625,
        "score_seconds": 0.125,
        "select_seconds": 0.5,
        "selected_ids": [5, 7, 2],
        "selected_scores": [0.9, 0.8, 0.3],
    },
    {"round": 1, "num_labelled": 7, "test_accuracy": 0.625, "train_seconds": 0.75, "score_seconds": 0.25},
    {"round": 2, "num_labelled": 11, "test_accuracy": 0.75, "train_seconds": 1.0},
]
QUERIES = [(QUERY_0, IMAGES_0), (QUERY_1, IMAGES_1), (None, None)]
# Ids 1, 4, 6, 8 labelled at the start, then the two queries; id 10 never.
LABELLED_ROUND = torch.tensor([2, 0, 1, 2, 0, 1, 0, 1, 0, 2, -1, 2])
MAX_TABLE_ROWS, MAX_THUMBNAILS = 3, 2


class EpochLoggingClassifier(TinyClassifier):
    """TinyClassifier on plain (x, y) batches, logging its loss per step and per epoch."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__(hidden=hidden)
        self.save_hyperparameters()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss


def fit_one_round(loggers: list[Logger]) -> None:
    """Two epochs of three steps on 24 blobs, logging every step."""
    trainer = pl.Trainer(
        **{**QUIET_TRAINER, **FAST_TRAINER, "max_epochs": 2, "logger": loggers, "log_every_n_steps": 1}
    )
    trainer.fit(EpochLoggingClassifier(), DataLoader(blobs(24), batch_size=8))


def run_experiment(round_logger: RoundLogger, fit: bool = True) -> None:
    """What the loop does: start, then per round fit → log the round; finish."""
    round_logger.start(CONFIG)
    for round, (row, (query, inputs)) in enumerate(zip(HISTORY, QUERIES, strict=True)):
        if fit:
            fit_one_round(round_logger.fit_loggers(round))
        labels = TRUE_LABELS[query.ids] if query is not None else None
        round_logger.log_round(row, query, labels, inputs)
    round_logger.finish(HISTORY, LABELLED_ROUND, TRUE_LABELS)


def steps_by_round(rows: list[tuple[int | None, bool]]) -> list[list[int]]:
    """The fit rows' steps grouped by round, from ``(step, is_round_row)`` in logging order.

    Each round's fit rows come before its round row.
    """
    groups: list[list[int]] = [[]]
    for step, is_round_row in rows:
        if is_round_row:
            groups.append([])
        else:
            groups[-1].append(step)
    return [group for group in groups if group]


def check_steps_continue(groups: list[list[int]]) -> None:
    """Round r's steps are round 0's steps (offset 0) shifted by one past the largest step of round r - 1."""
    assert len(groups) == len(HISTORY)
    for previous, group in itertools.pairwise(groups):
        assert group == [max(previous) + 1 + step for step in groups[0]]


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> OfflineRun:
    """The experiment above, logged once to an offline W&B run through a WandbLogger, then read back."""
    wandb = pytest.importorskip("wandb")
    from pytorch_lightning.loggers import WandbLogger

    root = tmp_path_factory.mktemp("wandb_run")
    with offline_wandb(root):
        logger = WandbLogger(project="lightning-al-tests", save_dir=str(root))
        run_experiment(RoundLogger(logger, max_table_rows=MAX_TABLE_ROWS, max_thumbnails=MAX_THUMBNAILS))
        wandb.finish()
    return read_offline_run(root)


# ----- W&B, read back -----------------------------------------------------------------------------
def test_wandb_round_metrics_use_num_labelled_as_x_axis(offline_run: OfflineRun) -> None:
    assert offline_run.metrics["al/num_labelled"] == ""
    assert offline_run.metrics["al/*"] == "al/num_labelled"
    keys = ("al/test_accuracy", "al/train_seconds", "al/queried_samples", "al/query_scores", "al/learning_curve")
    for key in (*keys, "al/learning_curve_plot_table"):
        assert offline_run.metrics[key] == "al/num_labelled", key
    rows = offline_run.rows_with("al/test_accuracy")
    assert [row["al/num_labelled"] for row in rows] == [4, 7, 11]
    assert [row["al/round"] for row in rows] == [0, 1, 2]
    assert [row["al/test_accuracy"] for row in rows] == [0.5, 0.625, 0.75]
    assert [row["al/train_seconds"] for row in rows] == [0.25, 0.75, 1.0]
    assert [row.get("al/score_seconds") for row in rows] == [0.125, 0.25, None]
    assert rows[0]["al/test_seconds"] == 0.0625 and rows[0]["al/select_seconds"] == 0.5
    assert not any(key.startswith("al/selected") for row in rows for key in row)
    # the learning curve, logged last, still sits at the last x (synced from al/num_labelled)
    (curve_row,) = offline_run.rows_with("al/learning_curve")
    assert curve_row["al/num_labelled"] == 11


def test_wandb_queried_samples_table(offline_run: OfflineRun) -> None:
    rows = offline_run.rows_with("al/queried_samples")
    assert [row["al/num_labelled"] for row in rows] == [4, 7]
    first, second = (offline_run.table(row["al/queried_samples"]) for row in rows)
    labels_0 = TRUE_LABELS[QUERY_0.ids].tolist()
    assert first["columns"] == ["id", "score", "predicted", "label", "image"]
    # images appear in the run's table file by type only; max_thumbnails = 2
    assert first["data"] == [
        [5, 0.9, 1, labels_0[0], "Image"],
        [7, 0.8, 0, labels_0[1], "Image"],
        [2, 0.3, 2, labels_0[2], None],
    ]
    # no predictions in round 1; max_table_rows = 3 of the 4 queried
    assert second["columns"] == ["id", "score", "label", "image"]
    assert second["data"] == [[0, 2.0, 0, "Image"], [11, 1.5, 2, "Image"], [3, 1.0, 0, None]]
    # the table artifacts carry the thumbnails themselves
    tables = [artifact for artifact in offline_run.artifacts if artifact["type"] == "run_table"]
    queried = [artifact for artifact in tables if "al/queried_samples.table.json" in artifact["files"]]
    assert len(queried) == 2
    for artifact in queried:
        assert sum(name.startswith("media/images/") for name in artifact["files"]) == MAX_THUMBNAILS


def test_wandb_query_score_histograms(offline_run: OfflineRun) -> None:
    rows = offline_run.rows_with("al/query_scores")
    counts = [sum(row["al/query_scores"]["values"]) for row in rows]
    assert counts == [3, 4]  # every score, not only the table's rows
    bins = rows[1]["al/query_scores"]["bins"]
    assert (bins[0], bins[-1]) == (0.5, 2.0)


def test_wandb_learning_curve_table_and_plot(offline_run: OfflineRun) -> None:
    (row,) = offline_run.rows_with("al/learning_curve")
    table = offline_run.table(row["al/learning_curve"])
    assert table["columns"] == ["num_labelled", "test_accuracy", "round"]
    assert table["data"] == [[r["num_labelled"], r["test_accuracy"], r["round"]] for r in HISTORY]
    plot_keys = [key for row in offline_run.history for key in row if key.startswith("al/learning_curve_plot")]
    assert plot_keys


def test_wandb_labelled_ids_artifact(offline_run: OfflineRun) -> None:
    (artifact,) = [artifact for artifact in offline_run.artifacts if artifact["type"] == "labelled-ids"]
    expected = [
        {"id": i, "round": int(LABELLED_ROUND[i]), "label": int(TRUE_LABELS[i])}
        for i in range(NUM_POOL)
        if LABELLED_ROUND[i] >= 0
    ]
    assert len(expected) == HISTORY[-1]["num_labelled"]
    assert json.loads(offline_run.artifact_file(artifact, "labelled_ids.json")) == expected
    assert artifact["metadata"] == {"num_labelled": 11, "last_round": 2}


def test_wandb_config_and_training_steps(offline_run: OfflineRun) -> None:
    config = offline_run.config
    assert {key: config[key] for key in CONFIG} == {**CONFIG, "budget": "None"}
    assert config["hidden"] == 16  # the model's hyperparameters, from the first fit
    rows = [
        (row.get("trainer/global_step"), "al/num_labelled" in row)
        for row in offline_run.history
        if "al/num_labelled" in row or "epoch" in row
    ]
    check_steps_continue(steps_by_round(rows))


def test_describe_offline_run(offline_run: OfflineRun) -> None:
    listing = describe_offline_run(offline_run)
    print(listing)
    assert "al/* -> al/num_labelled" in listing
    assert "al/queried_samples" in listing and "labelled-ids" in listing


# ----- CSV and TensorBoard ------------------------------------------------------------------------
def test_csv_logger_gets_round_scalars_and_continuing_steps(tmp_path: Path) -> None:
    logger = CSVLogger(save_dir=str(tmp_path), name="csv")
    run_experiment(RoundLogger(logger))
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = [{key: value for key, value in row.items() if value != ""} for row in csv.DictReader(handle)]
    round_rows = [row for row in rows if "al/num_labelled" in row]
    assert [int(row["step"]) for row in round_rows] == [4, 7, 11]
    assert [float(row["al/test_accuracy"]) for row in round_rows] == [0.5, 0.625, 0.75]
    assert [row.get("al/score_seconds") for row in round_rows] == ["0.125", "0.25", None]
    check_steps_continue(steps_by_round([(int(row["step"]), "al/num_labelled" in row) for row in rows]))
    hparams = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
    assert hparams["strategy"] == "Entropy()" and hparams["query_size"] == 4 and hparams["hidden"] == 16


class RecordingWriter:
    """Stands in for a TensorBoard SummaryWriter, recording scalar and histogram calls."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.histograms: list[tuple[str, list[float], int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def add_histogram(self, tag: str, values: torch.Tensor, global_step: int) -> None:
        self.histograms.append((tag, values.tolist(), global_step))


def test_tensorboard_logger_gets_scalars_and_score_histograms(tmp_path: Path) -> None:
    logger = TensorBoardLogger(save_dir=str(tmp_path))
    writer = RecordingWriter()
    logger._experiment = writer  # the SummaryWriter the logger would create
    round_logger = RoundLogger(logger)
    query = Query(round=0, ids=torch.tensor([3, 1]), scores=torch.tensor([0.5, float("inf")]))
    round_logger.log_round(HISTORY[0], query, torch.tensor([0, 1]))
    round_logger.log_round(HISTORY[2])
    assert ("al/num_labelled", 4, 4) in writer.scalars and ("al/test_accuracy", 0.75, 11) in writer.scalars
    assert {tag for tag, _, _ in writer.scalars} >= {"al/round", "al/train_seconds", "al/select_seconds"}
    assert writer.histograms == [("al/query_scores", [0.5], 4)]  # finite scores only


# ----- the fit loggers, against a recording logger -------------------------------------------------
class RecordingLogger(Logger):
    """Records every call a Trainer or the round logger makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    @property
    def save_dir(self) -> str:
        return "/nowhere"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append(("log_metrics", (dict(metrics), step)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("log_hyperparams", dict(params)))

    def save(self) -> None:
        self.calls.append(("save", None))

    def finalize(self, status: str) -> None:
        self.calls.append(("finalize", status))

    def named(self, method: str) -> list[Any]:
        return [args for name, args in self.calls if name == method]


def test_fit_loggers_shift_steps_pass_hyperparams_once_and_never_finalize() -> None:
    logger = RecordingLogger()
    round_logger = RoundLogger([logger])
    run_experiment(round_logger)
    hyperparams = logger.named("log_hyperparams")
    assert hyperparams[0] == {**CONFIG, "budget": "None"}
    assert len(hyperparams) == 2 and hyperparams[1] == {"hidden": 16}  # model hparams: first round only
    assert logger.named("finalize") == []
    assert logger.calls[-1] == ("save", None)  # finish saves
    rows = [(step, "al/num_labelled" in metrics) for metrics, step in logger.named("log_metrics")]
    check_steps_continue(steps_by_round(rows))
    assert [step for step, is_round_row in rows if is_round_row] == [4, 7, 11]
    assert round_logger.state_dict()["last_fit_step"] == max(step for step, is_round_row in rows if not is_round_row)


def test_fit_logger_delegates_to_the_users_logger() -> None:
    logger = RecordingLogger()
    (view,) = RoundLogger(logger).fit_loggers(0)
    assert isinstance(view, RoundFitLogger) and view.logger is logger
    assert (view.name, view.version, view.save_dir, view.named) == ("recording", 0, "/nowhere", logger.named)
    view.log_metrics({"a": 1.0}, step=3)
    assert logger.calls[-1] == ("log_metrics", ({"a": 1.0}, 3))


def test_state_dict_restores_the_step_offset() -> None:
    first = RoundLogger(RecordingLogger())
    first.fit_loggers(0)[0].log_metrics({"a": 1.0}, step=41)
    logger = RecordingLogger()
    second = RoundLogger(logger)
    second.load_state_dict(first.state_dict())
    second.fit_loggers(1)[0].log_metrics({"a": 1.0}, step=0)
    assert logger.calls == [("log_metrics", ({"a": 1.0}, 42))]


def test_nothing_is_logged_off_rank_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")  # as a launcher sets it on the second process
    logger = RecordingLogger()
    run_experiment(RoundLogger(logger), fit=False)
    assert logger.calls == []


# ----- helpers -----------------------------------------------------------------------------------
def test_scalar_entries_keep_ints_and_drop_non_scalars() -> None:
    row = {"round": 2, "num_labelled": 7, "acc": 0.5, "loss": torch.tensor(1.5), "done": True, "selected_ids": [1]}
    entries = scalar_entries(row)
    assert entries == {"round": 2, "num_labelled": 7, "acc": 0.5, "loss": 1.5}
    assert isinstance(entries["num_labelled"], int) and isinstance(entries["loss"], float)


def test_image_thumbnails() -> None:
    grey = torch.randint(0, 256, (3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    thumbnails = image_thumbnails(grey, limit=2)
    assert len(thumbnails) == 2 and all(np.array_equal(t, g.numpy()) for t, g in zip(thumbnails, grey, strict=False))
    rgb = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    (thumbnail,) = image_thumbnails(rgb, limit=8)
    assert thumbnail.shape == (4, 4, 3)
    assert np.array_equal(thumbnail, (rgb[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    # values outside [0, 1] are stretched from min to max: (v + 1) / 4 * 255
    (stretched,) = image_thumbnails(torch.tensor([[[[-1.0, 0.0], [1.0, 3.0]]]]), limit=1)
    assert stretched.tolist() == [[0, 64], [128, 255]]
    (big,) = image_thumbnails(torch.zeros(1, 1, 128, 96), limit=1)
    assert big.shape == (64, 48)
    for not_images in (torch.zeros(4, 5), torch.zeros(4, 2, 8, 8), [torch.zeros(4, 8, 8)]):
        assert image_thumbnails(not_images, limit=4) is None
    assert image_thumbnails(grey, limit=0) is None


def test_learning_curve_rows() -> None:
    history = [
        {"round": 0, "num_labelled": 0},  # nothing trained yet
        {"round": 1, "num_labelled": 5, "test_accuracy": 0.4, "test_loss": 1.25, "test_seconds": 0.5},
        {"round": 2, "num_labelled": 9, "test_accuracy": 0.6},
    ]
    assert learning_curve(history) == (
        ["num_labelled", "test_accuracy", "round", "test_loss"],
        [[5, 0.4, 1, 1.25], [9, 0.6, 2, None]],
    )


def test_labelled_id_records() -> None:
    records = labelled_id_records(torch.tensor([-1, 2, 0, -1]), torch.tensor([0, 1, 2, 0]))
    assert records == [{"id": 1, "round": 2, "label": 1}, {"id": 2, "round": 0, "label": 2}]
    with pytest.raises(ValueError, match="`labels` to have the shape"):
        labelled_id_records(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="`labelled_round` to be an integer tensor"):
        labelled_id_records(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loggers": "wandb"}, TypeError, "`loggers` to be a Logger"),
        ({"loggers": [object()]}, TypeError, "`loggers` to hold Lightning Loggers, but got object"),
        ({"max_table_rows": 0}, ValueError, "`max_table_rows` to be an int >= 1, but got 0"),
        ({"max_thumbnails": -1}, ValueError, "`max_thumbnails` to be an int >= 0, but got -1"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        RoundLogger(**{"loggers": RecordingLogger(), **kwargs})


def test_log_round_rejects_bad_input() -> None:
    round_logger = RoundLogger(RecordingLogger())
    with pytest.raises(ValueError, match="'num_labelled'"):
        round_logger.log_round({"round": 0})
    with pytest.raises(ValueError, match=r"`labels` to have shape \(3,\)"):
        round_logger.log_round(HISTORY[0], QUERY_0, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`inputs` to hold the 3 queried samples"):
        round_logger.log_round(HISTORY[0], QUERY_0, TRUE_LABELS[QUERY_0.ids], torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="Expected a `query`"):
        round_logger.log_round(HISTORY[0], None, torch.tensor([0]))
    with pytest.raises(ValueError, match="`round` to be an int >= 0"):
        round_logger.fit_loggers(-1)


def test_module_imports_and_logs_without_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import lightning_al

    monkeypatch.setattr(lightning_al, "round_logging", sys.modules["lightning_al.round_logging"], raising=False)
    monkeypatch.delitem(sys.modules, "lightning_al.round_logging")
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails
    module = importlib.import_module("lightning_al.round_logging")
    logger = CSVLogger(save_dir=str(tmp_path))
    module.RoundLogger(logger).log_round(HISTORY[0], QUERY_0, TRUE_LABELS[QUERY_0.ids], IMAGES_0)
    logger.save()
    assert "al/test_accuracy" in (Path(logger.log_dir) / "metrics.csv").read_text()
