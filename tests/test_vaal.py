"""VAAL: the VAE/discriminator callback, its estimator and the strategy in the loop."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import FAST_TRAINER, QUIET_TRAINER, TinyClassifier, blobs

import lightning_al as al
from lightning_al.callbacks.vaal import VAE, Discriminator, VAALCallback, gaussian_kl
from lightning_al.strategies.vaal import VAAL, VAAL_SCORE, VAALEstimator

SMALL = dict(latent_dim=4, hidden=32)


def one_cluster_dm(n: int = 90, min_steps: int = 0) -> al.ActiveDataModule:
    """Blobs whose labelled set is 12 samples of class 0 only: labelled and unlabelled inputs differ visibly."""
    data = blobs(n, seed=0)
    dm = al.ActiveDataModule(data, batch_size=8, eval_batch_size=16, min_steps_per_epoch=min_steps, seed=0)
    ids = torch.arange(0, 36, 3)  # class = id % 3
    dm.label(ids, data.tensors[1][ids], round=0)
    return dm


def fit(callback: pl.Callback | None, dm: al.ActiveDataModule, epochs: int = 2, seed: int = 0) -> TinyClassifier:
    pl.seed_everything(seed, verbose=False)
    model = TinyClassifier()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=[callback] if callback is not None else [],
        **QUIET_TRAINER,
    )
    trainer.fit(model, datamodule=dm)
    return model


def scores(callback: VAALCallback, x: torch.Tensor) -> torch.Tensor:
    return VAALEstimator(callback).predict(torch.nn.Identity(), x, frozenset({VAAL_SCORE}))[VAAL_SCORE]


def test_gaussian_kl_matches_the_closed_form():
    # hand example: mu = (1, 0), var = (1, 2): 1/2 (1 + 1 - 1 - 0) + 1/2 (0 + 2 - 1 - ln 2)
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    assert gaussian_kl(mu, logvar).item() == pytest.approx(0.5 + 0.5 * (1 - math.log(2.0)), abs=1e-6)
    assert gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5)).tolist() == [0.0, 0.0, 0.0]
    # numpy reference: KL(N(mu, s^2) || N(0, 1)) = log(1/s) + (s^2 + mu^2)/2 - 1/2, summed over dims
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, 3, generator=g, dtype=torch.float64)
    logvar = torch.randn(6, 3, generator=g, dtype=torch.float64)
    s = np.exp(0.5 * logvar.numpy())
    ref = (np.log(1 / s) + (s**2 + mu.numpy() ** 2) / 2 - 0.5).sum(axis=1)
    np.testing.assert_allclose(gaussian_kl(mu, logvar).numpy(), ref, rtol=1e-12)


def test_vae_flattens_images_and_draws_noise_from_its_generator():
    vae = VAE((1, 2, 3), latent_dim=4, hidden=8)
    x = torch.randn(5, 1, 2, 3)
    recon1, mu, logvar = vae(x, torch.Generator().manual_seed(7))
    recon2, _, _ = vae(x, torch.Generator().manual_seed(7))
    recon3, _, _ = vae(x, torch.Generator().manual_seed(8))
    assert recon1.shape == (5, 6) and mu.shape == logvar.shape == (5, 4)
    assert torch.equal(recon1, recon2) and not torch.equal(recon1, recon3)
    assert Discriminator(4, 8)(mu).shape == (5,)
    with pytest.raises(ValueError, match="Expected inputs of shape"):
        vae.encode(torch.randn(5, 6))


# the authors' form weighs the KL B * D times more than the per-sample ELBO: its reconstruction falls less
@pytest.mark.parametrize(("loss_form", "reconstruction_drop"), [("authors", 0.7), ("per_sample", 0.5)])
def test_fit_trains_the_vae_and_the_discriminator(loss_form: str, reconstruction_drop: float):
    callback = VAALCallback(lr=3e-3, loss_form=loss_form, **SMALL)
    dm = one_cluster_dm(min_steps=40)
    fit(callback, dm, epochs=2)
    assert len(callback.vae_losses) == len(callback.discriminator_losses) == 80
    rec, disc = callback.reconstruction_losses, callback.discriminator_losses
    assert np.mean(rec[-10:]) < reconstruction_drop * np.mean(rec[:10])
    assert np.mean(disc[-10:]) < 0.9 * np.mean(disc[:10])
    # labelled (class 0) vs unlabelled (mostly classes 1, 2): unlabelled score higher
    x, y = dm.train_set.tensors
    s = scores(callback, x)
    assert s[dm.unlabelled_ids].mean() > s[dm.labelled_ids].mean() + 0.1
    assert s[dm.unlabelled_ids[y[dm.unlabelled_ids] != 0]].mean() > s[dm.labelled_ids].mean() + 0.1
    assert ((s > 0) & (s < 1)).all()


def test_the_task_model_and_global_rng_are_untouched():
    dm = one_cluster_dm()
    without = fit(None, dm, seed=3)
    after_without = torch.rand(3)
    with_vaal = fit(VAALCallback(**SMALL), dm, seed=3)
    after_with = torch.rand(3)
    for (name, a), (_, b) in zip(without.state_dict().items(), with_vaal.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(after_without, after_with)


def test_reset_each_fit_rebuilds_the_same_initial_weights():
    callback = VAALCallback(**SMALL)
    callback.build((4,))
    initial = {k: v.clone() for k, v in callback.vae.state_dict().items()}
    dm = one_cluster_dm()
    fit(callback, dm)
    first = {k: v.clone() for k, v in callback.vae.state_dict().items()}
    assert any(not torch.equal(initial[k], first[k]) for k in initial)  # it trained
    callback.build((4,))
    assert all(torch.equal(initial[k], v) for k, v in callback.vae.state_dict().items())
    fit(callback, dm)  # rebuilt with the same seed, same data: the same weights again
    assert all(torch.equal(first[k], v) for k, v in callback.vae.state_dict().items())
    kept = VAALCallback(reset_each_fit=False, **SMALL)
    fit(kept, dm)
    fit(kept, dm)  # continues from the first fit's modules
    assert any(not torch.equal(first[k], v) for k, v in kept.vae.state_dict().items())


def test_state_round_trip_gives_identical_scores():
    callback = VAALCallback(**SMALL)
    dm = one_cluster_dm()
    fit(callback, dm)
    buffer = io.BytesIO()
    torch.save(callback.state_dict(), buffer)
    buffer.seek(0)
    restored = VAALCallback(**SMALL)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    x = dm.train_set.tensors[0]
    assert torch.equal(scores(callback, x), scores(restored, x))
    assert restored.discriminator_losses == callback.discriminator_losses
    assert restored.state_key == callback.state_key
    for a, b in zip(
        restored.vae_optimizer.state_dict()["state"].values(),
        callback.vae_optimizer.state_dict()["state"].values(),
        strict=True,
    ):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_strategy_end_to_end_in_the_loop(tiny_data):
    train, test = tiny_data
    dm = al.ActiveDataModule(train, test_set=test, initial_labelled=10, batch_size=8, seed=0)
    initial = set(dm.labelled_ids.tolist())
    strategy = VAAL(**SMALL)
    assert strategy.callbacks() == [strategy.callback] and strategy.estimator.callback is strategy.callback
    torch.manual_seed(0)
    history = al.ActiveLearningLoop(strategy, query_size=5, rounds=2, trainer_kwargs=FAST_TRAINER).run(
        TinyClassifier(), dm
    )
    picks = [row["selected_ids"] for row in history[:2]]
    flat = [i for ids in picks for i in ids]
    assert all(len(ids) == 5 for ids in picks) and len(set(flat)) == 10 and not set(flat) & initial
    assert all(0 < s < 1 for row in history[:2] for s in row["selected_scores"])
    assert history[0]["selected_scores"] == sorted(history[0]["selected_scores"], reverse=True)
    assert "vaal_vae_loss" in history[0] and "vaal_discriminator_loss" in history[0]
    assert len(strategy.estimator.modules()) == 2


def test_refuses_bad_arguments_and_scoring_before_fit():
    with pytest.raises(ValueError, match="`latent_dim`"):
        VAALCallback(latent_dim=0)
    with pytest.raises(ValueError, match="`beta`"):
        VAALCallback(beta=-1.0)
    with pytest.raises(ValueError, match="`lr`"):
        VAAL(lr=0)
    with pytest.raises(TypeError, match="`callback`"):
        VAALEstimator(object())
    with pytest.raises(RuntimeError, match="trained"):
        scores(VAALCallback(), torch.randn(2, 4))
