"""Active-learning runs under 2-process CPU DDP (gloo), compared by tests/test_ddp.py with one process.

    python ddp_run.py OUTPUT_DIR DEVICES [NAMESPACE | tasks]

NAMESPACE is ``pytorch_lightning`` (default) or ``lightning.pytorch``: the package of the model; ``tasks``
runs the multi-label and segmentation tasks instead (``pytorch_lightning``).

Lightning's ``ddp`` strategy starts this script again for rank 1. Every rank writes
``OUTPUT_DIR/rank{r}.json``: per strategy, the ids selected in each round and their scores.

Training cannot give bit-identical weights on two ranks and on one process (the batches are split
differently and gradients are summed in another order), so the model is trained with a learning rate
of 0: the fit, its gradient all-reduce and the per-round Trainers all run, the weights stay the
initial ones, and the selections depend only on the sharded scoring, the gather by id, the selection
on rank 0 and its broadcast, which must then agree with one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import QUIET_TRAINER, blobs, tiny_classifier_class

import lightning_al as al
from lightning_al import distributed
from lightning_al.datasets import Shapes
from lightning_al.models import MultiLabelMLP
from lightning_al.strategies import BADGE, BALD, CoreSet, Entropy
from lightning_al.tasks import MultiLabel, Segmentation

torch.set_num_threads(1)


class Frozen:
    """Trained with SGD at learning rate 0: every step runs, no weight changes."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)  # type: ignore[attr-defined]


def frozen_classifier(namespace: str) -> torch.nn.Module:
    return type("FrozenClassifier", (Frozen, tiny_classifier_class(namespace)), {})()


def ddp_trainer_kwargs(devices: int) -> dict[str, Any]:
    """One epoch on ``devices`` CPU processes (the ``ddp`` strategy when more than one)."""
    trainer_kwargs: dict[str, Any] = dict(max_epochs=1, accelerator="cpu", devices=devices, **QUIET_TRAINER)
    if devices > 1:
        trainer_kwargs["strategy"] = "ddp"
    return trainer_kwargs


def selections(history: list[dict[str, Any]], dm: al.ActiveDataModule) -> dict[str, Any]:
    """The ids selected in each round, their scores, and the labelled ids at the end."""
    return {
        "selected_ids": [row["selected_ids"] for row in history if "selected_ids" in row],
        "selected_scores": [row.get("selected_scores") for row in history if "selected_ids" in row],
        "labelled_ids": dm.labelled_ids.tolist(),
    }


def run_all(devices: int, namespace: str = "pytorch_lightning") -> dict[str, Any]:
    """Two rounds with each strategy (``pool_subset`` for one of them); the selections per strategy."""
    trainer_kwargs = ddp_trainer_kwargs(devices)
    results: dict[str, Any] = {}
    for name, strategy, pool_subset in (
        ("entropy", Entropy(), None),
        ("entropy_subset", Entropy(), 41),
        ("badge", BADGE(), None),
        ("coreset", CoreSet(), None),
    ):
        torch.manual_seed(0)
        model = frozen_classifier(namespace)
        dm = al.ActiveDataModule(blobs(101), initial_labelled=10, batch_size=8, eval_batch_size=16, seed=0)
        loop = al.ActiveLearningLoop(
            strategy,
            query_size=5,
            rounds=2,
            trainer_kwargs=trainer_kwargs,
            seed=3,
            progress=False,
            pool_subset=pool_subset,
        )
        history = loop.run(model, dm)
        results[name] = selections(history, dm)
    results["world_size"] = distributed.rank_and_world()[1]
    results["namespace"] = al.namespace.namespace_of(model).name
    return results


class FrozenSegmenter(Frozen, al.namespace.get("pytorch_lightning").LightningModule):
    """conv → ReLU → Dropout2d → 1×1 conv (no batch norm, whose statistics would differ per rank)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Dropout2d(0.3), torch.nn.Conv2d(6, 3, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, mask = batch
        return torch.nn.functional.cross_entropy(self(x), mask, ignore_index=255)


class FrozenMultiLabel(Frozen, MultiLabelMLP):
    pass


def run_tasks(devices: int) -> dict[str, Any]:
    """Two rounds per strategy on the segmentation and multi-label tasks; the selections per run."""
    trainer_kwargs = ddp_trainer_kwargs(devices)
    x = torch.randn(61, 6, generator=torch.Generator().manual_seed(0))
    y = torch.stack([x[:, 0] > 0, x[:, 1] > 0.5, x[:, 0] + x[:, 2] > 0], dim=1).float()
    results: dict[str, Any] = {}
    for name, strategy in (
        ("seg_entropy", Entropy()),
        ("seg_bald", BALD(mc_samples=4)),
        ("seg_coreset", CoreSet()),
        ("seg_badge", BADGE()),
        ("ml_bald", BALD(mc_samples=4)),
        ("ml_badge", BADGE()),
    ):
        torch.manual_seed(0)
        if name.startswith("seg"):
            model: torch.nn.Module = FrozenSegmenter()
            dm = al.ActiveDataModule(Shapes(37, size=8, seed=0), task=Segmentation(3), initial_labelled=6, seed=0)
        else:
            model = FrozenMultiLabel(in_features=6, num_labels=3, hidden=8)
            dm = al.ActiveDataModule(torch.utils.data.TensorDataset(x, y), task=MultiLabel(3), initial_labelled=6)
        dm.batch_size, dm.eval_batch_size = 4, 8
        loop = al.ActiveLearningLoop(strategy, query_size=3, rounds=2, trainer_kwargs=trainer_kwargs, progress=False)
        history = loop.run(model, dm)
        results[name] = selections(history, dm)
    results["world_size"] = distributed.rank_and_world()[1]
    return results


if __name__ == "__main__":
    output_dir, devices = Path(sys.argv[1]), int(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "pytorch_lightning"
    results = run_tasks(devices) if mode == "tasks" else run_all(devices, mode)
    rank = distributed.rank_and_world()[0]
    (output_dir / f"rank{rank}.json").write_text(json.dumps(results))
    distributed.shutdown()
