"""Loss-prediction head and VAAL modules on resume: a state saved between fits restarts the next fit as
an uninterrupted run would; one saved during a fit (a Lightning checkpoint) carries on."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import QUIET_TRAINER, TinyClassifier, blobs
from pytorch_lightning.callbacks import ModelCheckpoint

import lightning_al as al
from lightning_al.callbacks.loss_prediction import LossPredictionCallback
from lightning_al.callbacks.vaal import VAALCallback

CALLBACKS = {
    "loss_prediction": (lambda: LossPredictionCallback(["net.0", "net.1"], hidden=8, lr=1e-2), lambda c: [c.head]),
    "loss_prediction_own": (
        lambda: LossPredictionCallback(["net.0", "net.1"], hidden=8, own_optimizer=True),
        lambda c: [c.head],
    ),
    "vaal": (lambda: VAALCallback(latent_dim=4, hidden=16), lambda c: [c.vae, c.discriminator]),
}


def datamodule() -> al.ActiveDataModule:
    return al.ActiveDataModule(blobs(60), initial_labelled=20, batch_size=8, min_steps_per_epoch=3, seed=0)


def fit(callbacks: list[pl.Callback], dm: al.ActiveDataModule, **kwargs) -> None:
    pl.seed_everything(0, verbose=False)
    kwargs = {**QUIET_TRAINER, **kwargs}
    pl.Trainer(max_epochs=2, accelerator="cpu", callbacks=callbacks, **kwargs).fit(TinyClassifier(), datamodule=dm)


def weights(modules: list[torch.nn.Module]) -> list[torch.Tensor]:
    return [p.detach().clone() for module in modules for p in module.parameters()]


class _AtTrainStart(pl.Callback):
    """The auxiliary modules' weights as the first training batch is about to run (None before they exist)."""

    def __init__(self, callback: pl.Callback, modules) -> None:
        self.callback, self.modules, self.seen = callback, modules, "unset"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        modules = self.modules(self.callback)
        self.seen = None if any(m is None for m in modules) else weights(modules)


@pytest.mark.parametrize("name", list(CALLBACKS))
def test_a_state_saved_between_fits_restarts_the_next_fit(name: str) -> None:
    make, modules = CALLBACKS[name]
    dm = datamodule()
    uninterrupted = make()
    fit([uninterrupted], dm)
    saved = uninterrupted.state_dict()  # what the loop saves after a round
    assert saved["in_fit"] is False
    fit([uninterrupted], dm)

    resumed = make()
    resumed.load_state_dict(saved)
    probe = _AtTrainStart(resumed, modules)
    fit([resumed, probe], dm)
    assert probe.seen is None  # reset at the fit start, rebuilt from the seed at the first batch
    for a, b in zip(weights(modules(resumed)), weights(modules(uninterrupted)), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(CALLBACKS))
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_a_checkpoint_saved_during_a_fit_carries_on(name: str, tmp_path) -> None:
    make, modules = CALLBACKS[name]
    dm = datamodule()
    first = make()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    fit([first, checkpoints], dm, enable_checkpointing=True)
    path = tmp_path / "epoch=0.ckpt"
    saved = torch.load(path, weights_only=False)["callbacks"][first.state_key]
    assert saved["in_fit"] is True

    resumed = make()  # reset_each_fit=True, yet the loaded state must survive the fit start
    probe = _AtTrainStart(resumed, modules)
    pl.seed_everything(0, verbose=False)
    pl.Trainer(max_epochs=2, accelerator="cpu", callbacks=[resumed, probe], **QUIET_TRAINER).fit(
        TinyClassifier(), datamodule=dm, ckpt_path=str(path)
    )
    restored = make()
    restored.load_state_dict(saved)
    assert probe.seen is not None
    for a, b in zip(probe.seen, weights(modules(restored)), strict=True):
        assert torch.equal(a, b)
