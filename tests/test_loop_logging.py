"""The loop logs a whole experiment to the trainer's logger: one W&B run, read back offline."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import TinyClassifier, blobs
from pytorch_lightning.loggers import CSVLogger
from wandb_offline import offline_wandb, read_offline_run

import lightning_al as al
from lightning_al.strategies import Entropy


def run_loop(logger, **kwargs) -> list[dict]:
    dm = al.ActiveDataModule(blobs(60, seed=0), test_set=blobs(30, seed=1), initial_labelled=6, batch_size=8, seed=0)
    loop = al.ActiveLearningLoop(
        strategy=Entropy(),
        query_size=3,
        rounds=2,
        trainer_kwargs=dict(max_epochs=2, accelerator="cpu", logger=logger, log_every_n_steps=1),
        progress=False,
        **kwargs,
    )
    torch.manual_seed(0)
    return loop.run(TinyClassifier(), dm)


def test_one_wandb_run_per_experiment(tmp_path):
    wandb = pytest.importorskip("wandb")
    from pytorch_lightning.loggers import WandbLogger

    with offline_wandb(tmp_path):
        history = run_loop(WandbLogger(project="lightning-al-tests", save_dir=str(tmp_path)))
        wandb.finish()
    run = read_offline_run(tmp_path)  # exactly one offline run

    rounds = run.rows_with("al/round")
    assert [row["al/num_labelled"] for row in rounds] == [6, 9, 12]
    assert [row["al/test_accuracy"] for row in rounds] == pytest.approx([r["test_accuracy"] for r in history])
    assert run.metrics["al/test_accuracy"] == "al/num_labelled"
    steps = [row["trainer/global_step"] for row in run.rows_with("train_loss")]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # rounds' training steps never collide

    tables = [run.table(row["al/queried_samples"]) for row in run.rows_with("al/queried_samples")]
    assert [[r[0] for r in t["data"]] for t in tables] == [row["selected_ids"] for row in history[:2]]
    assert tables[0]["columns"][:4] == ["id", "score", "predicted", "label"]
    targets = blobs(60, seed=0).tensors[1]
    assert all(r[3] == int(targets[r[0]]) for t in tables for r in t["data"])  # the oracle's labels

    (curve,) = [run.table(row["al/learning_curve"]) for row in run.rows_with("al/learning_curve")]
    assert [r[0] for r in curve["data"]] == [6, 9, 12]
    (artifact,) = [a for a in run.artifacts if a["type"] == "labelled-ids"]
    assert artifact["metadata"]["num_labelled"] == 12
    assert run.config["strategy"] == "Entropy()" and run.config["query_size"] == 3


def test_csv_logger_gets_round_scalars(tmp_path):
    logger = CSVLogger(str(tmp_path), name="al")
    run_loop(logger)
    with open(logger.log_dir + "/metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rounds = [row for row in rows if row.get("al/num_labelled")]
    assert [int(float(row["al/num_labelled"])) for row in rounds] == [6, 9, 12]
    assert [int(row["step"]) for row in rounds] == [6, 9, 12]
