"""Snapshot ensembles: a cyclic learning rate and one snapshot of the weights per cycle."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_al._validation import check_int
from lightning_al.namespace import Callback

if TYPE_CHECKING:
    import pytorch_lightning as pl


def cyclic_cosine_factor(step: int, total_steps: int, cycles: int) -> float:
    r"""Learning-rate multiplier of the cyclic cosine schedule at ``step`` (0-based).

    `\tfrac12\bigl(\cos(\pi \cdot (t \bmod L) / L) + 1\bigr)` with cycle length
    `L = \lceil \text{total\_steps} / \text{cycles} \rceil` (Huang et al. 2017,
    "Snapshot Ensembles: Train 1, Get M for Free", eq. 2): 1 at the start of every cycle,
    annealed towards 0 at its end, where a snapshot is taken.

    Args:
        step: the optimiser step ``t``.
        total_steps: the steps of the whole fit.
        cycles: the number of cycles (and snapshots).
    """
    length = math.ceil(total_steps / cycles)
    return 0.5 * (math.cos(math.pi * (step % length) / length) + 1)


class SnapshotCallback(Callback):
    """Drive a cyclic cosine learning rate and keep a CPU copy of the weights at the end of each cycle.

    The base learning rate of every optimiser parameter group is multiplied by
    `cyclic_cosine_factor` before each step, so no other learning-rate scheduler
    should run alongside. After the fit, ``snapshots`` holds ``cycles`` state dicts
    (fewer if the fit stopped early), the last one taken at the final step (Huang et al. 2017,
    "Snapshot Ensembles: Train 1, Get M for Free").

    Args:
        cycles: number of cycles, hence of snapshots, per fit.
    """

    def __init__(self, cycles: int = 5) -> None:
        check_int("cycles", cycles, 1)
        self.cycles = cycles
        self.snapshots: list[dict[str, Tensor]] = []
        self._base_lrs: list[list[float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.snapshots = []
        self._base_lrs = [[group["lr"] for group in opt.param_groups] for opt in trainer.optimizers]

    def _total_steps(self, trainer: pl.Trainer) -> int:
        return max(1, int(trainer.estimated_stepping_batches))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        factor = cyclic_cosine_factor(trainer.global_step, self._total_steps(trainer), self.cycles)
        for opt, base_lrs in zip(trainer.optimizers, self._base_lrs, strict=True):
            for group, base in zip(opt.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        total = self._total_steps(trainer)
        length = math.ceil(total / self.cycles)
        step = trainer.global_step  # optimiser steps taken so far, this batch included
        cycle_ended = step % length == 0 or step >= total
        if cycle_ended and len(self.snapshots) < self.cycles:
            self.snapshots.append(_cpu_state(pl_module))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.snapshots:  # the fit stopped before the first cycle ended
            self.snapshots.append(_cpu_state(pl_module))


def _cpu_state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {name: value.detach().to("cpu", copy=True) for name, value in module.state_dict().items()}
