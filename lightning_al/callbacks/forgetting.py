"""Example forgetting (Toneva et al. 2019) counted during training, per dataset id."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_al.data.batches import batch_ids

_STATE_NAMES = ("last_correct", "ever_correct", "forgetting", "presentations")


class ForgettingCallback(pl.Callback):
    """Count forgetting events of every training sample (Toneva et al. 2019, "An Empirical
    Study of Example Forgetting during Deep Neural Network Learning").

    At every presentation of a sample, its correctness (``argmax`` of the logits equals the
    target) is compared with its correctness at its previous presentation; a correct →
    incorrect transition is a forgetting event (see
    :func:`lightning_al.functional.dynamics.forgetting_counts`).

    **Which prediction is recorded.** As in the paper, the prediction made *at presentation*:
    a forward hook on the LightningModule captures the logits of the training step's own
    ``self(x)`` call (training mode, before the optimiser step), so the statistic costs no
    extra forward. If the step produced no ``(B, C)`` output through ``forward`` (e.g. the
    ``training_step`` calls a submodule directly), the callback falls back to one extra
    forward of the batch under ``no_grad`` after the step, in the module's current mode.

    State, one entry per dataset id, on the module's device (``trainer.datamodule.pool.size``
    entries, allocated at the first fit and kept across fits unless ``reset_each_fit``):
    ``last_correct`` (bool), ``ever_correct`` (bool), ``forgetting`` (long) and
    ``presentations`` (long). Updates are O(batch) scatters without host synchronisation. A
    dataset id repeated within one batch counts as presented once per occurrence, with the
    occurrences compared against the state before the batch.

    Under DDP every rank counts its own batches; at the end of each training epoch the ranks
    exchange this epoch's increments (summed) and flags (logical or), so all ranks agree.

    Args:
        reset_each_fit: clear the statistics at the start of every fit (e.g. every active
            learning round) instead of accumulating them across fits.
    """

    def __init__(self, reset_each_fit: bool = False) -> None:
        if not isinstance(reset_each_fit, bool):
            raise TypeError(f"Expected `reset_each_fit` to be a bool, but got {type(reset_each_fit).__name__}.")
        self.reset_each_fit = reset_each_fit
        self.last_correct: Tensor | None = None
        self.ever_correct: Tensor | None = None
        self.forgetting: Tensor | None = None
        self.presentations: Tensor | None = None
        self._hook: Any = None
        self._capturing = False
        self._captured: Tensor | None = None
        self._epoch_start: dict[str, Tensor] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(reset_each_fit=self.reset_each_fit)

    # ----- allocation ----------------------------------------------------------------------
    def reset(self, size: int, device: torch.device | str = "cpu") -> None:
        """Allocate zeroed statistics for ``size`` dataset ids on ``device``."""
        self.last_correct = torch.zeros(size, dtype=torch.bool, device=device)
        self.ever_correct = torch.zeros(size, dtype=torch.bool, device=device)
        self.forgetting = torch.zeros(size, dtype=torch.long, device=device)
        self.presentations = torch.zeros(size, dtype=torch.long, device=device)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pool = getattr(trainer.datamodule, "pool", None)
        if pool is None:
            raise ValueError(
                "Expected the Trainer to fit with an ActiveDataModule (ForgettingCallback counts by dataset id), "
                f"but got datamodule {type(trainer.datamodule).__name__}."
            )
        if self.forgetting is None or self.reset_each_fit:
            self.reset(pool.size, pl_module.device)
        elif self.forgetting.numel() != pool.size:
            raise ValueError(
                f"Expected the pool to keep its size across fits ({self.forgetting.numel()} ids counted), "
                f"but got a pool of {pool.size}. Use `reset_each_fit=True` or a new ForgettingCallback."
            )
        else:
            for name in _STATE_NAMES:
                setattr(self, name, getattr(self, name).to(pl_module.device))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hook()
        self._hook = pl_module.register_forward_hook(self._capture)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hook()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hook()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._capturing, self._captured = False, None

    def _capture(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._capturing and isinstance(output, Tensor):
            self._captured = output.detach()

    # ----- counting ------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            self._epoch_start = {name: getattr(self, name).clone() for name in _STATE_NAMES}

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._capturing, self._captured = True, None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._capturing = False
        ids_B = batch_ids(batch)
        logits = self._captured
        self._captured = None
        if logits is None or logits.ndim != 2 or logits.shape[0] != ids_B.shape[0]:
            with torch.no_grad():
                logits = pl_module(trainer.datamodule.inputs(batch))
        targets_B = trainer.datamodule.targets(batch)
        self.update(ids_B, logits.argmax(dim=-1) == targets_B.to(logits.device))

    def update(self, ids_B: Tensor, correct_B: Tensor) -> None:
        """Record one presentation of the samples ``ids_B`` with correctness ``correct_B`` (bool)."""
        ids_B = ids_B.to(self.forgetting.device)
        correct_B = correct_B.to(self.forgetting.device, torch.bool)
        forgot_B = self.last_correct[ids_B] & ~correct_B
        self.forgetting.index_add_(0, ids_B, forgot_B.long())
        self.presentations.index_add_(0, ids_B, torch.ones_like(ids_B))
        self.last_correct[ids_B] = correct_B
        self.ever_correct[ids_B] |= correct_B

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            self._reduce_across_ranks(trainer)
        self._log(trainer, pl_module)

    def _reduce_across_ranks(self, trainer: pl.Trainer) -> None:
        def gather(t: Tensor) -> Tensor:  # (world, size); integer dtypes, which every backend gathers
            return trainer.strategy.all_gather(t)

        start = self._epoch_start
        merged = merge_rank_statistics(
            start,
            forgetting_delta_W_N=gather(self.forgetting - start["forgetting"]),
            presentations_delta_W_N=gather(self.presentations - start["presentations"]),
            last_correct_W_N=gather(self.last_correct.long()),
            ever_correct_W_N=gather(self.ever_correct.long()),
        )
        for name, value in merged.items():
            setattr(self, name, value)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        presented = self.presentations > 0
        counts = self.forgetting[presented]
        experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
        if trainer.is_global_zero and counts.numel() and hasattr(experiment, "add_histogram"):  # TensorBoard
            experiment.add_histogram("forgetting/counts", counts.cpu(), trainer.global_step)
        elif trainer.is_global_zero and counts.numel() and type(trainer.logger).__name__ == "WandbLogger":
            import wandb

            experiment.log({"forgetting/counts": wandb.Histogram(counts.cpu().numpy())})
        if counts.numel():
            pl_module.log("forgetting/mean", counts.double().mean().float(), on_epoch=True)
            pl_module.log("forgetting/max", counts.max().float(), on_epoch=True)

    # ----- results -------------------------------------------------------------------------
    def _check_counted(self) -> None:
        if self.forgetting is None:
            raise RuntimeError("Expected ForgettingCallback to have counted a fit, but it has not been fitted yet.")

    def forgetting_counts_by_id(self) -> tuple[Tensor, Tensor]:
        """``(ids, counts)`` on CPU for every dataset id presented at least once, ids ascending."""
        self._check_counted()
        ids = (self.presentations > 0).nonzero().flatten()
        return ids.cpu(), self.forgetting[ids].cpu()

    def never_learned_by_id(self) -> tuple[Tensor, Tensor]:
        """``(ids, never_learned)`` on CPU for presented ids: True where no presentation was correct."""
        self._check_counted()
        ids = (self.presentations > 0).nonzero().flatten()
        return ids.cpu(), (~self.ever_correct[ids]).cpu()

    def forgotten_or_unlearned_score(self, never_learned_value: float = math.inf) -> tuple[Tensor, Tensor]:
        """``(ids, scores)`` on CPU for presented ids: the forgetting count as float64, and
        ``never_learned_value`` (default ``inf``) for samples never learned, which Toneva et al.
        treat as forgotten infinitely often, so they rank first. Higher = more forgettable.

        Pass a finite ``never_learned_value`` (e.g. ``1e9``) to feed the scores to ``topk_select``.
        """
        ids, counts = self.forgetting_counts_by_id()
        _, never = self.never_learned_by_id()
        scores = counts.double()
        scores[never] = never_learned_value
        return ids, scores

    # ----- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {name: None if getattr(self, name) is None else getattr(self, name).cpu() for name in _STATE_NAMES}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name in _STATE_NAMES:
            value = state_dict[name]
            setattr(self, name, None if value is None else value.clone())


def merge_rank_statistics(
    start: dict[str, Tensor],
    forgetting_delta_W_N: Tensor,
    presentations_delta_W_N: Tensor,
    last_correct_W_N: Tensor,
    ever_correct_W_N: Tensor,
) -> dict[str, Tensor]:
    """Combine one epoch of per-rank statistics (rank axis first) into the state every rank keeps.

    Increments of counts are summed; ``ever_correct`` is or-ed; ``last_correct`` is taken from
    the ranks that presented the sample this epoch (or-ed if several did, e.g. the padding
    ``DistributedSampler`` adds), and kept from ``start`` for samples nobody presented.
    """
    presented_W_N = presentations_delta_W_N > 0
    presented_N = presented_W_N.any(dim=0)
    last_from_ranks_N = (last_correct_W_N.bool() & presented_W_N).any(dim=0)
    return {
        "forgetting": start["forgetting"] + forgetting_delta_W_N.sum(dim=0),
        "presentations": start["presentations"] + presentations_delta_W_N.sum(dim=0),
        "last_correct": torch.where(presented_N, last_from_ranks_N, start["last_correct"]),
        "ever_correct": ever_correct_W_N.bool().any(dim=0),
    }
