"""VAAL against the authors' code (github.com/sinhasam/vaal): defaults, loss forms, initialisation and the
batches each update reads; every departure the library used before stays reachable as an option."""

from __future__ import annotations

import inspect
import math

import pytest
import pytorch_lightning as pl
import torch
from conftest import QUIET_TRAINER, TinyClassifier, blobs
from torch import nn

import lightning_al as al
from lightning_al.callbacks import vaal as vaal_module
from lightning_al.callbacks.vaal import (
    VAE,
    Discriminator,
    VAALCallback,
    discriminator_loss,
    elbo_terms,
    kaiming_init_,
    vae_loss,
)
from lightning_al.strategies.vaal import VAAL

SMALL = dict(latent_dim=4, hidden=16, discriminator_hidden=16)
# The authors' settings: arguments.py (latent 32, beta 1, adversary_param 1, 2 VAE / 1 adversary steps),
# solver.py (Adam 5e-4 for both modules, MSE + beta * summed KL), model.py (512-wide discriminator, Kaiming init).
AUTHORS = dict(
    latent_dim=32,
    beta=1.0,
    adversary_weight=1.0,
    vae_steps=2,
    discriminator_steps=1,
    lr=5e-4,
    discriminator_hidden=512,
    loss_form="authors",
    fresh_labelled=True,
    weight_init="kaiming",
)


def reference_kld(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """The authors' KL, written out: -1/2 sum over batch and latent of (1 + logvar - mu^2 - exp(logvar))."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


# ----- defaults --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [VAALCallback, VAAL])
def test_defaults_are_the_authors(cls: type) -> None:
    parameters = inspect.signature(cls).parameters
    assert {name: parameters[name].default for name in AUTHORS} == AUTHORS
    callback = VAALCallback()
    callback.build((8,))
    assert [m.out_features for m in callback.discriminator.net if isinstance(m, nn.Linear)] == [512, 512, 1]
    assert callback.vae_optimizer.defaults["lr"] == callback.discriminator_optimizer.defaults["lr"] == 5e-4
    assert isinstance(callback.vae_optimizer, torch.optim.Adam)
    assert isinstance(callback.discriminator_optimizer, torch.optim.Adam)


def test_the_strategy_forwards_every_option() -> None:
    legacy = dict(
        vae_steps=1, loss_form="per_sample", fresh_labelled=False, discriminator_hidden=64, weight_init="default"
    )
    strategy = VAAL(**legacy)
    assert {name: getattr(strategy.callback, name) for name in legacy} == legacy
    assert "loss_form='per_sample'" in repr(strategy) and "vae_steps=1" in repr(strategy)


# ----- loss forms ------------------------------------------------------------------------------------------
def test_elbo_terms_by_hand() -> None:
    # B = 2, D = 2: squared errors (1, 0; 1, 1) -> sum 3; KL per sample: mu = 1 -> 1/2, mu = 0 -> 0
    x, recon = torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    mu, logvar = torch.tensor([[1.0], [0.0]]), torch.zeros(2, 1)
    rec, kl = elbo_terms(x, recon, mu, logvar, "authors")
    assert rec.item() == pytest.approx(3 / 4) and kl.item() == pytest.approx(0.5)  # element mean; batch sum
    rec, kl = elbo_terms(x, recon, mu, logvar, "per_sample")
    assert rec.item() == pytest.approx(3 / 2) and kl.item() == pytest.approx(0.25)  # per-sample sums, batch mean
    # second example with a variance: mu = (0, 0), var = (2, 1) -> KL = 1/2 (2 - 1 - ln 2)
    kl_one = 0.5 * (2 - 1 - math.log(2.0))
    _, kl = elbo_terms(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 2), torch.tensor([[math.log(2.0), 0.0]]))
    assert kl.item() == pytest.approx(kl_one, abs=1e-7)


def test_elbo_terms_match_the_authors_formulas_and_their_ratio() -> None:
    g = torch.Generator().manual_seed(0)
    B, D, L = 5, 7, 3
    x, recon = torch.randn(B, D, generator=g, dtype=torch.float64), torch.randn(B, D, generator=g, dtype=torch.float64)
    mu, logvar = (
        torch.randn(B, L, generator=g, dtype=torch.float64),
        torch.randn(B, L, generator=g, dtype=torch.float64),
    )
    rec_a, kl_a = elbo_terms(x, recon, mu, logvar, "authors")
    torch.testing.assert_close(rec_a, nn.MSELoss()(recon, x))
    torch.testing.assert_close(kl_a, reference_kld(mu, logvar))
    rec_p, kl_p = elbo_terms(x, recon, mu, logvar, "per_sample")
    torch.testing.assert_close(rec_p, ((recon - x) ** 2).sum() / B)
    torch.testing.assert_close(kl_p, reference_kld(mu, logvar) / B)
    # relative to the reconstruction, the authors' KL weighs B * D times more
    assert (kl_a / rec_a) / (kl_p / rec_p) == pytest.approx(B * D)


@pytest.mark.parametrize("loss_form", ["authors", "per_sample"])
def test_vae_loss_matches_an_independent_reference(loss_form: str) -> None:
    torch.manual_seed(0)
    vae, discriminator = VAE((2, 3), latent_dim=4, hidden=8), Discriminator(4, 8)
    lab, unl = torch.randn(5, 2, 3), torch.randn(7, 2, 3)
    beta, lam = 0.7, 1.3
    total, reconstruction = vae_loss(
        vae, discriminator, lab, unl, beta, lam, torch.Generator().manual_seed(3), loss_form=loss_form
    )
    noise = torch.Generator().manual_seed(3)  # the same noise, drawn in the same order
    expected_total, expected_rec, bce = 0.0, 0.0, nn.BCELoss()
    for x in (lab, unl):
        mu, logvar = vae.encode(x)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=noise)
        recon, flat = vae.decode(z), x.flatten(1)
        if loss_form == "authors":
            rec, kl = nn.MSELoss()(recon, flat), reference_kld(mu, logvar)
        else:
            rec, kl = ((recon - flat) ** 2).sum(1).mean(), reference_kld(mu, logvar) / x.shape[0]
        p_labelled = torch.sigmoid(discriminator(mu))  # the authors' discriminator ends in a sigmoid + BCELoss
        expected_total = expected_total + rec + beta * kl + lam * bce(p_labelled, torch.ones_like(p_labelled))
        expected_rec = expected_rec + rec
    torch.testing.assert_close(total, expected_total)
    torch.testing.assert_close(reconstruction, expected_rec)


def test_discriminator_loss_matches_the_authors_bce_on_detached_means() -> None:
    torch.manual_seed(1)
    vae, discriminator = VAE(3, latent_dim=2, hidden=8), Discriminator(2, 8)
    lab, unl = torch.randn(4, 3), torch.randn(6, 3)
    loss = discriminator_loss(vae, discriminator, lab, unl)
    p_lab, p_unl = torch.sigmoid(discriminator(vae.encode(lab)[0])), torch.sigmoid(discriminator(vae.encode(unl)[0]))
    expected = nn.BCELoss()(p_lab, torch.ones(4)) + nn.BCELoss()(p_unl, torch.zeros(6))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is None for p in vae.parameters())  # mu is detached: only the discriminator learns
    assert all(p.grad is not None for p in discriminator.parameters())


# ----- initialisation ----------------------------------------------------------------------------------------
def test_kaiming_init_draws_he_normal_weights_and_zero_biases() -> None:
    torch.manual_seed(0)
    big, kept = nn.Linear(400, 500), nn.Linear(3, 3)
    before = kept.weight.detach().clone()
    kaiming_init_(nn.Sequential(big, nn.ReLU(), kept), keep=(kept,))
    assert big.weight.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    assert abs(big.weight.mean().item()) < 0.003 and torch.count_nonzero(big.bias) == 0
    assert torch.equal(kept.weight, before) and torch.count_nonzero(kept.bias) > 0


def test_the_callback_initialises_as_the_authors_or_as_pytorch() -> None:
    callback = VAALCallback(**SMALL)
    callback.build((10,))
    head = callback.vae.encoder[-1]  # the mean / log-variance head keeps PyTorch's default, as in model.py
    others = [m for m in [*callback.vae.modules(), *callback.discriminator.modules()] if isinstance(m, nn.Linear)]
    others = [m for m in others if m is not head]
    assert len(others) == 8 and all(torch.count_nonzero(m.bias) == 0 for m in others)
    assert torch.count_nonzero(head.bias) > 0 and head.weight.abs().max() <= 1 / math.sqrt(16)
    default = VAALCallback(**SMALL, weight_init="default")
    default.build((10,))
    linears = [m for m in [*default.vae.modules(), *default.discriminator.modules()] if isinstance(m, nn.Linear)]
    assert all(torch.count_nonzero(m.bias) > 0 for m in linears)  # PyTorch's uniform biases
    # the head is PyTorch's draw in both: the same seed and the same draws before it
    assert torch.equal(head.weight, default.vae.encoder[-1].weight) and torch.equal(
        head.bias, default.vae.encoder[-1].bias
    )
    assert not torch.equal(callback.vae.encoder[0].weight, default.vae.encoder[0].weight)


# ----- batches each update reads --------------------------------------------------------------------------------
def recording_fit(monkeypatch, **kwargs) -> tuple[list[tuple[str, list[int], list[int]]], al.ActiveDataModule, list]:
    """Fit with the callback and record, per update, its kind and the dataset ids of its labelled / unlabelled rows."""
    data = blobs(60, seed=0)
    dm = al.ActiveDataModule(data, initial_labelled=20, batch_size=8, eval_batch_size=16, seed=0)
    id_of = {tuple(row.tolist()): i for i, row in enumerate(data.tensors[0])}
    calls: list[tuple[str, list[int], list[int]]] = []

    def ids(x: torch.Tensor) -> list[int]:
        return [id_of[tuple(row.tolist())] for row in x]

    def record(kind: str, original):
        def wrapped(vae, discriminator, labelled, unlabelled, *args, **kw):
            calls.append((kind, ids(labelled), ids(unlabelled)))
            return original(vae, discriminator, labelled, unlabelled, *args, **kw)

        return wrapped

    monkeypatch.setattr(vaal_module, "vae_loss", record("vae", vae_loss))
    monkeypatch.setattr(vaal_module, "discriminator_loss", record("disc", discriminator_loss))
    pl.seed_everything(0, verbose=False)
    model = TinyClassifier()
    pl.Trainer(max_epochs=1, accelerator="cpu", callbacks=[VAALCallback(**SMALL, **kwargs)], **QUIET_TRAINER).fit(
        model, datamodule=dm
    )
    return calls, dm, model.seen_ids


def test_each_vae_step_reads_fresh_batches_and_the_discriminator_the_last(monkeypatch) -> None:
    calls, dm, seen = recording_fit(monkeypatch, vae_steps=2, discriminator_steps=1)
    labelled, unlabelled = set(dm.labelled_ids.tolist()), set(dm.unlabelled_ids.tolist())
    assert [kind for kind, _, _ in calls] == ["vae", "vae", "disc"] * len(seen)
    for step, training_ids in enumerate(seen):
        (_, lab1, unl1), (_, lab2, unl2), (_, lab_d, unl_d) = calls[3 * step : 3 * step + 3]
        assert lab1 == training_ids.tolist()  # the first VAE step reads the task model's batch
        assert set(lab2) <= labelled and lab2 != lab1  # the second, a fresh labelled batch ...
        assert set(unl1) | set(unl2) <= unlabelled and unl1 != unl2  # ... and a fresh unlabelled one
        assert len(unl1) == len(unl2) == 8  # the first training batch's size ...
        assert len(lab1) in (8, 4) and len(lab2) in (8, 4)  # ... fewer at the end of a pass over the 20 labels
        assert (lab_d, unl_d) == (lab2, unl2)  # the discriminator reads the last VAE step's batches
    # the callback's own labelled shuffle goes through the whole labelled set once per pass
    fresh = [i for step in range(len(seen)) for i in calls[3 * step + 1][1]]
    assert sorted(fresh[:20]) == sorted(labelled)


def test_without_fresh_labelled_later_steps_reuse_the_training_batch(monkeypatch) -> None:
    calls, _, seen = recording_fit(monkeypatch, vae_steps=2, discriminator_steps=2, fresh_labelled=False)
    assert [kind for kind, _, _ in calls] == ["vae", "vae", "disc", "disc"] * len(seen)
    for step, training_ids in enumerate(seen):
        group = calls[4 * step : 4 * step + 4]
        assert all(lab == training_ids.tolist() for _, lab, _ in group)
        assert group[1][2] != group[0][2] and group[2][2] == group[1][2] and group[3][2] != group[2][2]


def test_one_vae_step_is_the_previous_library_schedule(monkeypatch) -> None:
    calls, _, seen = recording_fit(monkeypatch, vae_steps=1)
    assert [kind for kind, _, _ in calls] == ["vae", "disc"] * len(seen)
    assert all(calls[2 * s][1:] == calls[2 * s + 1][1:] for s in range(len(seen)))


# ----- state and arguments ---------------------------------------------------------------------------------------
def test_the_labelled_shuffle_is_saved_and_old_states_still_load() -> None:
    callback = VAALCallback(**SMALL)
    callback._labelled.generator.manual_seed(42)
    state = callback.state_dict()
    restored = VAALCallback(**SMALL)
    restored.load_state_dict(state)
    assert torch.equal(restored._labelled.generator.get_state(), torch.Generator().manual_seed(42).get_state())
    del state["labelled_shuffle"]  # saved before the labelled shuffle existed
    VAALCallback(**SMALL).load_state_dict(state)


def test_refuses_bad_options() -> None:
    with pytest.raises(ValueError, match=r"`loss_form`.*'sum'"):
        VAALCallback(loss_form="sum")
    with pytest.raises(ValueError, match=r"`weight_init`.*'xavier'"):
        VAAL(weight_init="xavier")
    with pytest.raises(TypeError, match="`fresh_labelled`"):
        VAALCallback(fresh_labelled=1)
    with pytest.raises(ValueError, match="`discriminator_hidden`"):
        VAALCallback(discriminator_hidden=0)
    with pytest.raises(ValueError, match="`loss_form`"):
        elbo_terms(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), "mean")
