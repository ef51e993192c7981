"""Label dispersion (Bengar et al. 2021): how often the model changes its mind about each pool sample."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_al._validation import check_int
from lightning_al.data.batches import batch_ids, move_indexed_batch
from lightning_al.distributed import rank_and_world, shard
from lightning_al.model_call import call_model
from lightning_al.namespace import Callback

if TYPE_CHECKING:
    import pytorch_lightning as pl


class LabelDispersionCallback(Callback):
    """Predict the unlabelled pool every ``every_n_epochs`` training epochs and count the labels.

    Label dispersion of a sample is ``1 - (count of its modal predicted label) / T`` over the
    ``T`` predictions made during one fit (Bengar et al. 2021, "When Deep Learners Change Their
    Mind: Learning Dynamics for Active Learning"); see
    `lightning_al.functional.dynamics.label_dispersion`. The counts live in a
    ``(pool size, C)`` long tensor on the module's device, allocated when ``C`` is first seen
    in the logits and cleared at the start of every fit (the statistic is per round).

    The pool is read with ``trainer.datamodule.pool_dataloader()`` (evaluation transform),
    the model in eval mode under ``no_grad``; its training mode is restored afterwards.

    Under DDP (an initialised ``torch.distributed`` group of ``W > 1`` ranks) each rank predicts
    only its share of the unlabelled ids, every ``W``-th one (`lightning_al.distributed.shard`:
    disjoint, no padding, so no id is counted twice), and the ranks sum that pass's ``(pool size, C)``
    counts with an all-reduce: every rank then holds the counts one process would make, and
    ``num_predictions`` counts passes, not ranks.

    Args:
        every_n_epochs: predict the pool at the end of every k-th training epoch.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        check_int("every_n_epochs", every_n_epochs, 1)
        self.every_n_epochs = every_n_epochs
        self.size: int | None = None
        self.label_counts: Tensor | None = None  # (size, C) long
        self.num_predictions = 0  # pool predictions made during the current fit

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_epochs=self.every_n_epochs)

    def reset(self, size: int) -> None:
        """Forget all predictions; the next ones count ``size`` dataset ids."""
        check_int("size", size, 0)
        self.size, self.label_counts, self.num_predictions = size, None, 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pool = getattr(trainer.datamodule, "pool", None)
        if pool is None:
            raise ValueError(
                "Expected the Trainer to fit with an ActiveDataModule (LabelDispersionCallback predicts its pool), "
                f"but got datamodule {type(trainer.datamodule).__name__}."
            )
        self.reset(pool.size)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.predict_pool(trainer, pl_module)

    @torch.no_grad()
    def predict_pool(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Predict every unlabelled sample once and add the predicted labels to the counts."""
        dm = trainer.datamodule
        if dm.pool.num_unlabelled == 0:
            return
        if rank_and_world()[1] == 1:
            _predict_labels(pl_module, dm, dm.pool_dataloader(), self.accumulate)
        else:
            self._predict_shard_and_reduce(pl_module, dm)
        self.num_predictions += 1

    def _predict_shard_and_reduce(self, pl_module: pl.LightningModule, dm: Any) -> None:
        """Predict this rank's share of the unlabelled ids, then add every rank's counts of this pass."""
        if self.size is None:
            raise RuntimeError("Expected `reset(size)` or a fit before accumulating predictions.")
        ids_parts: list[Tensor] = []
        preds_parts: list[Tensor] = []
        seen_classes: set[int] = set()

        def keep(ids_B: Tensor, preds_B: Tensor, num_classes: int) -> None:
            ids_parts.append(ids_B)
            preds_parts.append(preds_B)
            seen_classes.add(num_classes)

        _predict_labels(pl_module, dm, dm.pool_dataloader(shard(dm.pool.unlabelled_ids)), keep)
        device = pl_module.device if self.label_counts is None else self.label_counts.device
        num_classes = _agreed_num_classes(seen_classes, device)
        if self.label_counts is not None and self.label_counts.shape[1] != num_classes:
            raise ValueError(
                f"Expected {self.label_counts.shape[1]} classes as in earlier predictions, but got {num_classes}."
            )
        pass_counts = torch.zeros(self.size, num_classes, dtype=torch.long, device=device)
        if ids_parts:
            ids_B, preds_B = torch.cat(ids_parts).to(device), torch.cat(preds_parts).to(device)
            pass_counts.index_put_((ids_B, preds_B), torch.ones_like(ids_B), accumulate=True)
        dist.all_reduce(pass_counts, op=dist.ReduceOp.SUM)
        self.label_counts = pass_counts if self.label_counts is None else self.label_counts + pass_counts

    def accumulate(self, ids_B: Tensor, preds_B: Tensor, num_classes: int) -> None:
        """Add one prediction ``preds_B`` (labels in ``[0, num_classes)``) for each of ``ids_B``."""
        if self.size is None:
            raise RuntimeError("Expected `reset(size)` or a fit before accumulating predictions.")
        if self.label_counts is None:
            self.label_counts = torch.zeros(self.size, num_classes, dtype=torch.long, device=preds_B.device)
        elif self.label_counts.shape[1] != num_classes:
            raise ValueError(
                f"Expected {self.label_counts.shape[1]} classes as in earlier predictions, but got {num_classes}."
            )
        device = self.label_counts.device
        ids_B, preds_B = ids_B.to(device), preds_B.to(device)
        self.label_counts.index_put_((ids_B, preds_B), torch.ones_like(ids_B), accumulate=True)

    def dispersion_by_id(self, ids: Tensor) -> Tensor:
        """``1 - max_c count / T`` for dataset ``ids`` (on CPU, default float dtype), ``T`` their predictions."""
        if self.label_counts is None:
            raise RuntimeError(
                "Expected LabelDispersionCallback to have predicted the pool, but it has no predictions yet: "
                "was it among the Trainer's callbacks, and did the fit run at least `every_n_epochs` epochs?"
            )
        counts = self.label_counts[ids.to(self.label_counts.device)]
        total = counts.sum(dim=1)
        if (total == 0).any():
            missing = ids[(total == 0).cpu()][:10].tolist()
            raise RuntimeError(f"Expected predictions for every id, but ids {missing} were never predicted.")
        modal = counts.amax(dim=1)
        return (1 - modal.to(torch.get_default_dtype()) / total).cpu()

    def state_dict(self) -> dict[str, Any]:
        counts = None if self.label_counts is None else self.label_counts.cpu()
        return {"size": self.size, "label_counts": counts, "num_predictions": self.num_predictions}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.size = state_dict["size"]
        counts = state_dict["label_counts"]
        self.label_counts = None if counts is None else counts.clone()
        self.num_predictions = int(state_dict["num_predictions"])


def _predict_labels(
    pl_module: pl.LightningModule, dm: Any, loader: Iterable[Any], count: Callable[[Tensor, Tensor, int], None]
) -> None:
    """``count(ids_B, argmax labels_B, C)`` for every batch of ``loader``, the module in eval mode."""
    was_training = pl_module.training
    pl_module.eval()
    try:
        for batch in loader:
            batch = move_indexed_batch(batch, pl_module.device)
            logits = call_model(pl_module, dm.inputs(batch))
            count(batch_ids(batch), logits.argmax(dim=-1), logits.shape[-1])
    finally:
        pl_module.train(was_training)


def _agreed_num_classes(seen_classes: set[int], device: torch.device) -> int:
    """The number of classes every rank saw in its logits (a rank with an empty share saw none).

    Raises the same error on every rank when they disagree, so no rank waits alone in a collective.
    """
    low, high = min(seen_classes, default=torch.iinfo(torch.long).max), max(seen_classes, default=0)
    # one MAX all-reduce gives both extremes: max(high) and -min(low)
    extremes = torch.tensor([high, -low], dtype=torch.long, device=device)
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    high, low = int(extremes[0]), -int(extremes[1])
    if high != low or high < 1:
        raise ValueError(f"Expected every rank's logits to have one number of classes, but got {low} to {high}.")
    return high
