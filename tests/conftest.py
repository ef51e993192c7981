"""Tiny models and pools shared by the tests: a few hundred samples, a few epochs."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import TensorDataset

# Tiny models gain nothing from intra-op threads; one thread keeps the suite fast on a busy machine.
torch.set_num_threads(1)


# Both Lightning packages: tests of the loop, the callbacks, resume, the CLI and DDP run in each.
NAMESPACES = ["pytorch_lightning", "lightning.pytorch"]


class TinyClassifierMixin:
    """Linear → ReLU → Dropout → Linear classifier returning logits, for a LightningModule of any namespace."""

    def __init__(self, in_features: int = 4, num_classes: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, num_classes)
        )
        self.seen_ids: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen_ids.append(batch.ids.detach().cpu())
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class TinyClassifier(TinyClassifierMixin, pl.LightningModule):
    """:class:`TinyClassifierMixin` as a ``pytorch_lightning`` module."""


def lightning_module(namespace: str) -> type:
    """``LightningModule`` of ``namespace`` (``"pytorch_lightning"`` or ``"lightning.pytorch"``)."""
    return importlib.import_module(namespace).LightningModule


def tiny_classifier_class(namespace: str) -> type:
    """:class:`TinyClassifierMixin` on the ``LightningModule`` of ``namespace``."""
    if namespace == "pytorch_lightning":
        return TinyClassifier
    return type("TinyClassifier", (TinyClassifierMixin, lightning_module(namespace)), {})


def blobs(n: int = 120, num_classes: int = 3, in_features: int = 4, seed: int = 0) -> TensorDataset:
    """Gaussian blobs around fixed class centres (``seed`` draws the noise), easy for a tiny model."""
    centres = torch.randn(num_classes, in_features, generator=torch.Generator().manual_seed(1234)) * 3
    y = torch.arange(n) % num_classes
    x = centres[y] + torch.randn(n, in_features, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(x, y)


@pytest.fixture
def tiny_data() -> tuple[TensorDataset, TensorDataset]:
    return blobs(120, seed=0), blobs(60, seed=1)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: a second intra-op thread only contends with other processes on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FAST_TRAINER = dict(max_epochs=3, accelerator="cpu")
# Trainer arguments for fits run directly in tests: no logs, checkpoints, bars or summaries.
QUIET_TRAINER = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def run_ranks(script: str, out_dir: Path, devices: int = 2, *args: str) -> list[dict]:
    """Run ``tests/scripts/<script> OUT_DIR DEVICES [ARGS]`` in a subprocess (Lightning starts the ranks)."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "scripts" / script), str(out_dir), str(devices), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(devices)]
