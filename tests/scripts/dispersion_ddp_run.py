"""Label dispersion counted during a 2-process CPU DDP fit (gloo), compared by tests/test_dispersion_ddp.py.

    python dispersion_ddp_run.py OUTPUT_DIR DEVICES

Lightning's ``ddp`` strategy starts this script again for rank 1. Every rank writes
``OUTPUT_DIR/rank{r}.json``: its label counts, number of pool predictions and the number of
pool samples it predicted itself.

The model trains with a learning rate of 0, so its weights stay the initial ones on every rank
and in one process; a logit bias that follows the epoch makes some predicted labels change from
one epoch to the next, so the counts are not all in one column.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import QUIET_TRAINER, TinyClassifier, blobs

import lightning_al as al
from lightning_al import distributed
from lightning_al.callbacks.dispersion import LabelDispersionCallback

torch.set_num_threads(1)

EPOCHS = 2
EPOCH_BIAS = 1.5  # added to the logit of class ``epoch % C``


class EpochBiasedClassifier(TinyClassifier):
    """TinyClassifier at learning rate 0 whose logits favour class ``epoch % C``; counts its eval rows."""

    def __init__(self) -> None:
        super().__init__()
        self.eval_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.eval_rows += x.shape[0]
        return biased_logits(self.net(x), self.current_epoch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def biased_logits(logits_N_C: torch.Tensor, epoch: int) -> torch.Tensor:
    bias_C = torch.zeros(logits_N_C.shape[-1], dtype=logits_N_C.dtype, device=logits_N_C.device)
    bias_C[epoch % logits_N_C.shape[-1]] = EPOCH_BIAS
    return logits_N_C + bias_C


def make_model() -> EpochBiasedClassifier:
    torch.manual_seed(0)
    return EpochBiasedClassifier()


def make_datamodule() -> al.ActiveDataModule:
    """61 samples, 10 labelled: 51 unlabelled ids, an odd number, so the two shards differ in size."""
    return al.ActiveDataModule(blobs(61), initial_labelled=10, batch_size=8, eval_batch_size=16, seed=0)


def run(devices: int) -> dict[str, Any]:
    """Fit for ``EPOCHS`` epochs with the callback; this rank's counts and prediction statistics."""
    trainer_kwargs: dict[str, Any] = dict(max_epochs=EPOCHS, accelerator="cpu", devices=devices, **QUIET_TRAINER)
    if devices > 1:
        trainer_kwargs["strategy"] = "ddp"
    model, dm, callback = make_model(), make_datamodule(), LabelDispersionCallback()
    pl.Trainer(callbacks=[callback], **trainer_kwargs).fit(model, datamodule=dm)
    return {
        "world_size": distributed.rank_and_world()[1],
        "label_counts": callback.label_counts.tolist(),
        "num_predictions": callback.num_predictions,
        "eval_rows": model.eval_rows,
        "unlabelled_ids": dm.unlabelled_ids.tolist(),
    }


if __name__ == "__main__":
    output_dir, devices = Path(sys.argv[1]), int(sys.argv[2])
    results = run(devices)
    (output_dir / f"rank{distributed.rank_and_world()[0]}.json").write_text(json.dumps(results))
    distributed.shutdown()
