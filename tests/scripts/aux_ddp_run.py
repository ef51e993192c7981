"""Modules trained beside the model (loss-prediction head, VAAL, MAL) in a 2-process CPU DDP fit (gloo).

    python aux_ddp_run.py OUTPUT_DIR DEVICES

Lightning's ``ddp`` strategy starts this script again for rank 1. Every rank writes
``OUTPUT_DIR/rank{r}.json``: per callback, the trained module's parameters, the number of
training steps it logged, and the model's parameters, for tests/test_aux_ddp.py to compare
across ranks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import QUIET_TRAINER, TinyClassifier, blobs

import lightning_al as al
from lightning_al import distributed
from lightning_al.callbacks.loss_prediction import LossPredictionCallback
from lightning_al.callbacks.mal import CosineClassifier, MALCallback
from lightning_al.callbacks.vaal import VAALCallback

torch.set_num_threads(1)


class CosineTiny(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.net[3] = CosineClassifier(16, 3, temperature=0.1)


def flat(module: nn.Module) -> list[float]:
    return torch.cat([p.detach().flatten().double().cpu() for p in module.parameters()]).tolist()


def trained(callback: pl.Callback) -> tuple[list[nn.Module], list[float]]:
    """The modules ``callback`` trains beside the model, and the losses it recorded while training them."""
    if isinstance(callback, LossPredictionCallback):
        return [callback.head], callback.epoch_losses
    if isinstance(callback, VAALCallback):
        return [callback.vae, callback.discriminator], callback.discriminator_losses
    return [callback.discriminator], callback.discriminator_losses


def run(devices: int) -> dict[str, Any]:
    trainer_kwargs: dict[str, Any] = dict(max_epochs=2, accelerator="cpu", devices=devices, **QUIET_TRAINER)
    if devices > 1:
        trainer_kwargs["strategy"] = "ddp"
    results: dict[str, Any] = {}
    layers = ["net.0", "net.1"]
    cases = (
        ("loss_prediction", TinyClassifier, lambda: LossPredictionCallback(layers, hidden=8, lr=1e-2)),
        ("loss_prediction_own", TinyClassifier, lambda: LossPredictionCallback(layers, hidden=8, own_optimizer=True)),
        ("vaal", TinyClassifier, lambda: VAALCallback(latent_dim=4, hidden=16, lr=1e-2)),
        ("mal", CosineTiny, lambda: MALCallback("net.1", lr=1e-2)),
    )
    for name, model_class, make_callback in cases:
        torch.manual_seed(0)
        model, callback = model_class(), make_callback()
        dm = al.ActiveDataModule(blobs(80), initial_labelled=40, batch_size=8, eval_batch_size=16, seed=0)
        pl.Trainer(callbacks=[callback], **trainer_kwargs).fit(model, datamodule=dm)
        modules, losses = trained(callback)
        results[name] = {"aux": [flat(m) for m in modules], "model": flat(model), "steps": len(losses)}
    results["world_size"] = distributed.rank_and_world()[1]
    results["averaged"] = averaged_by_hand()
    return results


def averaged_by_hand() -> dict[str, Any]:
    """Gradients set per rank: ``a`` is ``rank + 1`` everywhere, ``b`` only rank 1 has, ``c`` none has."""
    rank = distributed.rank_and_world()[0]
    a, b, c = (nn.Parameter(torch.zeros(2)) for _ in range(3))
    a.grad = torch.full((2,), rank + 1.0)
    b.grad = torch.ones(2) if rank == 1 else None
    distributed.average_gradients([a, b, c])
    return {name: None if p.grad is None else p.grad.tolist() for name, p in zip("abc", (a, b, c), strict=True)}


if __name__ == "__main__":
    output_dir, devices = Path(sys.argv[1]), int(sys.argv[2])
    results = run(devices)
    (output_dir / f"rank{distributed.rank_and_world()[0]}.json").write_text(json.dumps(results))
    distributed.shutdown()
