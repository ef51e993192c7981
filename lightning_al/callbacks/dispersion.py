"""Label dispersion (Bengar et al. 2021): how often the model changes its mind about each pool sample."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_al._validation import check_int
from lightning_al.data.batches import batch_ids, move_indexed_batch


class LabelDispersionCallback(pl.Callback):
    """Predict the unlabelled pool every ``every_n_epochs`` training epochs and count the labels.

    Label dispersion of a sample is ``1 - (count of its modal predicted label) / T`` over the
    ``T`` predictions made during one fit (Bengar et al. 2021, "When Deep Learners Change Their
    Mind: Learning Dynamics for Active Learning"); see
    :func:`lightning_al.functional.dynamics.label_dispersion`. The counts live in a
    ``(pool size, C)`` long tensor on the module's device, allocated when ``C`` is first seen
    in the logits and cleared at the start of every fit (the statistic is per round).

    The pool is read with ``trainer.datamodule.pool_dataloader()`` (evaluation transform),
    the model in eval mode under ``no_grad``; its training mode is restored afterwards.

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
        was_training = pl_module.training
        pl_module.eval()
        try:
            for batch in dm.pool_dataloader():
                batch = move_indexed_batch(batch, pl_module.device)
                logits = pl_module(dm.inputs(batch))
                self.accumulate(batch_ids(batch), logits.argmax(dim=-1), num_classes=logits.shape[-1])
        finally:
            pl_module.train(was_training)
        self.num_predictions += 1

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
