"""Bayes-by-backprop: layers, KL terms, model conversion, the KL callback, the estimator, the loop."""

from __future__ import annotations

import copy
import math
import re
from fractions import Fraction

import pytest
import pytorch_lightning as pl
import torch
from conftest import QUIET_TRAINER, TinyClassifier, blobs
from torch import distributions as D
from torch import nn

import lightning_al as al
from lightning_al.bayes import (
    BayesConv2d,
    BayesKLCallback,
    BayesLinear,
    bayesian_layers,
    convert_to_bayesian,
    kl_minibatch_weights,
    set_sampling,
    total_kl_divergence,
)
from lightning_al.estimators.weight_sampling import BayesByBackprop
from lightning_al.outputs import MC_PROBS, PROBS
from lightning_al.strategies.base import ScoreStrategy


def randomise(layer, seed: int = 0, rho_range: tuple[float, float] = (-3.0, 1.0)):
    """Give a Bayes layer random means and rhos (so no test relies on the special initial values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mu, rho in [(layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)]:
            if mu is not None:
                mu.copy_(torch.randn(mu.shape, generator=g))
                rho.copy_(torch.empty(rho.shape).uniform_(*rho_range, generator=g))
    return layer


def reference_kl(layers, prior_sigma: float = 1.0) -> torch.Tensor:
    """KL(q || N(0, s^2)) summed over the layers, with torch.distributions in float64."""
    total = torch.zeros((), dtype=torch.float64)
    for layer in layers:
        for mu, rho in [(layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)]:
            if mu is None:
                continue
            q = D.Normal(mu.detach().double(), nn.functional.softplus(rho.detach().double()))
            p = D.Normal(torch.zeros_like(q.loc), torch.full_like(q.loc, prior_sigma))
            total += D.kl_divergence(q, p).sum()
    return total


def sampled_weight(layer: BayesLinear) -> torch.Tensor:
    """The weight drawn by one forward of a bias-free BayesLinear: its outputs on the identity matrix."""
    return layer(torch.eye(layer.in_features)).T


# ----- layers ------------------------------------------------------------------------------
def test_initialisation_follows_nn_linear_and_starts_nearly_deterministic():
    layer = BayesLinear(10, 5)
    bound = 1 / math.sqrt(10)
    assert layer.weight_mu.abs().max() <= bound and layer.bias_mu.abs().max() <= bound
    assert layer.weight_mu.std() > bound / 4  # not all zero
    assert torch.all(layer.weight_rho == -5) and torch.all(layer.bias_rho == -5)
    assert torch.allclose(layer.weight_sigma, torch.full((5, 10), math.log1p(math.exp(-5))))


@pytest.mark.parametrize("prior_sigma", [1.0, 0.3])
def test_closed_form_kl_matches_torch_distributions(prior_sigma):
    linear = randomise(BayesLinear(6, 4, prior_sigma=prior_sigma), seed=1)
    conv = randomise(BayesConv2d(2, 3, 3, prior_sigma=prior_sigma), seed=2)
    for layer in (linear, conv):
        expected = reference_kl([layer], prior_sigma)
        assert torch.allclose(layer.kl_divergence().double(), expected, rtol=1e-5)


def test_closed_form_kl_by_hand():
    layer = BayesLinear(1, 1, bias=False, prior_sigma=2.0)
    with torch.no_grad():
        layer.weight_mu.fill_(0.5)
        layer.weight_rho.fill_(math.log(math.e - 1))  # softplus = 1
    # log(2 / 1) + (1 + 0.25) / (2 * 4) - 1/2
    assert layer.kl_divergence().item() == pytest.approx(math.log(2) + 1.25 / 8 - 0.5, rel=1e-6)
    with torch.no_grad():
        layer.weight_mu.fill_(0.0)
        layer.weight_rho.fill_(math.log(math.exp(2.0) - 1))  # q = p
    assert layer.kl_divergence().item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("prior", ["gaussian", "mixture"])
def test_monte_carlo_kl_of_one_draw_matches_reference(prior):
    layer = randomise(BayesLinear(5, 3, bias=False, prior=prior, prior_sigma=0.8, prior_pi=0.3), seed=3)
    w = sampled_weight(layer).detach().double()
    mu, sigma = layer.weight_mu.detach().double(), layer.weight_sigma.detach().double()
    log_q = D.Normal(mu, sigma).log_prob(w).sum()
    if prior == "gaussian":
        log_p = D.Normal(0.0, 0.8).log_prob(w).sum()
    else:
        mixture = D.MixtureSameFamily(
            D.Categorical(torch.tensor([0.3, 0.7], dtype=torch.float64)),
            D.Normal(torch.zeros(2, dtype=torch.float64), torch.tensor([0.8, math.exp(-6)], dtype=torch.float64)),
        )
        log_p = mixture.log_prob(w).sum()
    assert torch.allclose(layer.mc_kl_divergence().double(), log_q - log_p, rtol=1e-4)
    if prior == "mixture":  # the mixture's kl_divergence is this estimate
        assert torch.equal(layer.kl_divergence(), layer.mc_kl_divergence())


def test_monte_carlo_kl_converges_to_the_closed_form():
    torch.manual_seed(0)
    layer = randomise(BayesLinear(4, 3, prior_sigma=0.7), seed=4, rho_range=(-1.0, 0.5))
    x = torch.zeros(1, 4)
    with torch.no_grad():
        draws = []
        for _ in range(1000):
            layer(x)
            draws.append(layer.mc_kl_divergence().double())
    draws = torch.stack(draws)
    closed = reference_kl([layer], 0.7)
    standard_error = draws.std() / math.sqrt(draws.numel())
    assert (draws.mean() - closed).abs() < 4 * standard_error
    assert standard_error < 0.05 * closed  # the check above is not vacuous


def test_monte_carlo_kl_needs_a_sampled_forward():
    layer = BayesLinear(3, 2, prior="mixture")
    with pytest.raises(RuntimeError, match=re.escape("forward pass of this BayesLinear with sampling on")):
        layer.kl_divergence()


def test_forwards_sample_fresh_weights_and_deterministic_mode_uses_the_means():
    layer = BayesLinear(4, 3).eval()  # sampling is on in eval mode too
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(layer(x), layer(x))
    set_sampling(layer, False)
    assert torch.equal(layer(x), layer(x))
    assert torch.allclose(layer(x), nn.functional.linear(x, layer.weight_mu, layer.bias_mu))
    conv = BayesConv2d(2, 3, 3, padding=1, sample=False)
    images = torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(conv(images), conv(images))
    conv.sample = True
    assert not torch.allclose(conv(images), conv(images))


def test_the_layer_generator_makes_draws_reproducible():
    layer = BayesLinear(4, 3)
    x = torch.randn(2, 4)
    layer.generator = torch.Generator().manual_seed(7)
    first = layer(x)
    layer.generator = torch.Generator().manual_seed(7)
    assert torch.equal(layer(x), first)


def test_gradients_reach_mu_and_rho_through_the_sampled_weights():
    layer = randomise(BayesLinear(3, 2, bias=False), seed=5)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    out = layer(x)
    out.sum().backward()
    # d/dw_ij sum(x w^T) = sum_b x_bj; dw/dmu = 1, dw/drho = eps * sigmoid(rho)
    eps = layer._weight_eps
    expected_mu = x.sum(0).expand(2, 3)
    assert torch.allclose(layer.weight_mu.grad, expected_mu, atol=1e-6)
    assert torch.allclose(layer.weight_rho.grad, expected_mu * eps * torch.sigmoid(layer.weight_rho), atol=1e-6)
    for prior in ("gaussian", "mixture"):
        layer = BayesLinear(3, 2, prior=prior)
        layer(x)
        layer.kl_divergence().backward()
        for p in (layer.weight_mu, layer.weight_rho, layer.bias_mu, layer.bias_rho):
            assert p.grad is not None and p.grad.abs().sum() > 0


def test_bad_layer_arguments_are_refused():
    with pytest.raises(ValueError, match=re.escape("`prior` to be one of ('gaussian', 'mixture'), but got 'laplace'")):
        BayesLinear(2, 2, prior="laplace")
    with pytest.raises(ValueError, match=re.escape("`prior_sigma` to be a positive finite float, but got 0")):
        BayesLinear(2, 2, prior_sigma=0)
    with pytest.raises(ValueError, match=re.escape("`prior_pi` to be in (0, 1.0), but got 1.5")):
        BayesLinear(2, 2, prior_pi=1.5)
    with pytest.raises(ValueError, match=re.escape("`padding_mode` to be one of")):
        BayesConv2d(2, 2, 3, padding_mode="mirror")


# ----- conversion --------------------------------------------------------------------------
class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, stride=2, padding=1, padding_mode="reflect", bias=False),
            nn.Conv2d(4, 4, 3, padding="same", dilation=2, groups=2, padding_mode="circular"),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_convert_keeps_the_weights_as_means_and_the_outputs():
    torch.manual_seed(0)
    model = ConvNet()
    original = copy.deepcopy(model)
    x = torch.randn(2, 1, 8, 8)
    relu, flatten = model.features[1], model.features[4]
    assert convert_to_bayesian(model, prior_sigma=0.5, rho_init=-4.0) is model
    assert [type(m) for m in bayesian_layers(model)] == [BayesConv2d, BayesConv2d, BayesConv2d, BayesLinear]
    assert model.features[1] is relu and model.features[4] is flatten
    pairs = [(model.features[i], original.features[i]) for i in (0, 2, 3)] + [(model.head, original.head)]
    for new, old in pairs:
        assert torch.equal(new.weight_mu, old.weight) and new.prior_sigma == 0.5
        assert torch.all(new.weight_rho == -4.0)
        assert (new.bias_mu is None) == (old.bias is None)
        if old.bias is not None:
            assert torch.equal(new.bias_mu, old.bias)
    assert model(x).shape == (2, 3)
    set_sampling(model, False)
    assert torch.allclose(model(x), original(x), atol=1e-6)  # means = the deterministic network


def test_convert_tiny_classifier_and_shared_layers():
    model = TinyClassifier()
    weight = model.net[0].weight.detach().clone()
    convert_to_bayesian(model)
    assert torch.equal(model.net[0].weight_mu, weight)
    assert model(torch.randn(7, 4)).shape == (7, 3)
    shared = nn.Linear(3, 3)
    tied = convert_to_bayesian(nn.Sequential(shared, nn.Tanh(), shared))
    assert tied[0] is tied[2] and len(bayesian_layers(tied)) == 1


def test_convert_refuses_models_without_linear_or_conv():
    with pytest.raises(
        ValueError, match=re.escape("`model` to contain an nn.Linear or nn.Conv2d to convert, but Sequential")
    ):
        convert_to_bayesian(nn.Sequential(nn.ReLU(), nn.Dropout()))
    converted = convert_to_bayesian(TinyClassifier())
    with pytest.raises(ValueError, match=re.escape("already holds 2 Bayes layers")):
        convert_to_bayesian(converted)
    with pytest.raises(TypeError, match=re.escape("`model` to be a torch.nn.Module, but got str")):
        convert_to_bayesian("model")


# ----- the KL callback ---------------------------------------------------------------------
class RecordingClassifier(TinyClassifier):
    """TinyClassifier that remembers the data loss its (unmodified) training_step returned."""

    def __init__(self) -> None:
        super().__init__()
        self.data_losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.data_losses.append(loss.item())
        return loss


class BackwardSpy(pl.Callback):
    """Records the loss Lightning backpropagates, the reference KL at that moment, and rho's gradient."""

    def __init__(self) -> None:
        self.losses, self.kls, self.batch_idx, self.rho_grads = [], [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch_idx.append(batch_idx)

    def on_before_backward(self, trainer, pl_module, loss):
        self.losses.append(loss.item())
        self.kls.append(reference_kl(bayesian_layers(pl_module)).item())

    def on_after_backward(self, trainer, pl_module):
        self.rho_grads.append(pl_module.net[0].weight_rho.grad.detach().clone())


def fit(model, callbacks, labelled: int = 30, **kwargs) -> pl.Trainer:
    dm = al.ActiveDataModule(blobs(120), initial_labelled=labelled, batch_size=8, seed=0)
    trainer = pl.Trainer(accelerator="cpu", callbacks=callbacks, **QUIET_TRAINER, **kwargs)
    trainer.fit(model, datamodule=dm)
    return trainer


def test_callback_adds_kl_over_n_to_the_backward_loss_and_restores_training_step():
    torch.manual_seed(0)
    model = convert_to_bayesian(RecordingClassifier())
    spy = BackwardSpy()
    trainer = fit(model, [BayesKLCallback(), spy], labelled=30, max_epochs=2)
    assert len(spy.losses) == 8 == len(model.data_losses)  # 2 epochs of ceil(30 / 8) steps
    added = torch.tensor(spy.losses, dtype=torch.float64) - torch.tensor(model.data_losses, dtype=torch.float64)
    expected = torch.tensor(spy.kls, dtype=torch.float64) / 30
    assert torch.allclose(added, expected, rtol=1e-4)
    assert expected.min() > 1.0  # the KL term is not negligible, so the check is meaningful
    assert trainer.callback_metrics["bayes_kl"].item() == pytest.approx(spy.kls[-1], rel=1e-4)
    assert trainer.callback_metrics["bayes_kl_term"].item() == pytest.approx(spy.kls[-1] / 30, rel=1e-4)
    assert "training_step" not in model.__dict__  # the class method is back
    assert model.training_step.__func__ is RecordingClassifier.training_step


def test_callback_under_bf16_mixed_precision_adds_a_float32_kl_term():
    torch.manual_seed(2)
    model = convert_to_bayesian(RecordingClassifier())
    spy = BackwardSpy()
    dtypes = []

    class LossDtype(pl.Callback):
        def on_before_backward(self, trainer, pl_module, loss):
            dtypes.append(loss.dtype)

    fit(model, [BayesKLCallback(), spy, LossDtype()], labelled=30, max_epochs=1, precision="bf16-mixed")
    added = torch.tensor(spy.losses, dtype=torch.float64) - torch.tensor(model.data_losses, dtype=torch.float64)
    assert torch.allclose(added, torch.tensor(spy.kls, dtype=torch.float64) / 30, rtol=1e-4)  # not bf16-rounded
    assert dtypes == [torch.float32] * 4


def test_the_callback_changes_rho_gradient_by_exactly_the_kl_gradient():
    model = convert_to_bayesian(TinyClassifier())
    initial = copy.deepcopy(model.state_dict())
    grads = []
    for callbacks in ([], [BayesKLCallback()]):
        model.load_state_dict(initial)
        spy = BackwardSpy()
        pl.seed_everything(3, verbose=False)  # same weight noise and dropout masks in both fits
        fit(model, [*callbacks, spy], labelled=30, max_steps=1)
        grads.append(spy.rho_grads[0])
    model.load_state_dict(initial)
    layer = model.net[0]
    sigma = layer.weight_sigma.detach()
    # d/drho [log(1/sigma) + (sigma^2 + mu^2) / 2 - 1/2] / N with dsigma/drho = sigmoid(rho)
    expected = (-1 / sigma + sigma) * torch.sigmoid(layer.weight_rho.detach()) / 30
    assert torch.allclose(grads[1] - grads[0], expected, rtol=1e-3, atol=1e-5)


def test_blundell_weights_sum_to_one_and_halve():
    for m in (1, 4, 10, 3000):
        pi = kl_minibatch_weights(m, "blundell")
        assert pi.shape == (m,) and pi.sum().item() == pytest.approx(1.0, abs=1e-12)
    pi = kl_minibatch_weights(10, "blundell")
    exact = [Fraction(2 ** (10 - i), 2**10 - 1) for i in range(1, 11)]
    assert torch.allclose(pi, torch.tensor([float(f) for f in exact], dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(kl_minibatch_weights(5), torch.full((5,), 0.2, dtype=torch.float64))
    with pytest.raises(ValueError, match=re.escape("`kl_weighting` to be one of")):
        kl_minibatch_weights(3, "exponential")


def test_callback_with_blundell_weighting_scales_each_step_by_pi_i_m_over_n():
    torch.manual_seed(1)
    model = convert_to_bayesian(RecordingClassifier())
    spy = BackwardSpy()
    fit(model, [BayesKLCallback(kl_weighting="blundell"), spy], labelled=30, max_epochs=1)
    m, n = 4, 30
    factors = (torch.tensor(spy.losses) - torch.tensor(model.data_losses)).double() / torch.tensor(spy.kls).double()
    pis = [2 ** (m - i) / (2**m - 1) for i in range(1, m + 1)]
    assert spy.batch_idx == [0, 1, 2, 3]
    assert torch.allclose(factors, torch.tensor(pis, dtype=torch.float64) * m / n, rtol=1e-3)
    assert (factors * n / m).sum().item() == pytest.approx(1.0, rel=1e-3)


def test_callback_restores_training_step_after_an_exception_and_keeps_instance_overrides():
    model = convert_to_bayesian(TinyClassifier())
    calls = []

    def patched(batch, batch_idx):  # a user's own instance-level override must survive the fit
        calls.append(batch_idx)
        if batch_idx == 1:
            raise RuntimeError("boom")
        return TinyClassifier.training_step(model, batch, batch_idx)

    model.training_step = patched
    with pytest.raises(RuntimeError, match=re.escape("boom")):
        fit(model, [BayesKLCallback()], labelled=30, max_epochs=1)
    assert calls == [0, 1] and model.__dict__["training_step"] is patched


def test_callback_refusals():
    with pytest.raises(
        ValueError, match=re.escape("`kl_weighting` to be one of ('uniform', 'blundell'), but got 'linear'")
    ):
        BayesKLCallback(kl_weighting="linear")
    with pytest.raises(ValueError, match=re.escape("`num_train_samples` to be an int >= 1 or None, but got 0")):
        BayesKLCallback(num_train_samples=0)
    with pytest.raises(ValueError, match=re.escape("`kl_scale` to be a finite float >= 0, but got -1")):
        BayesKLCallback(kl_scale=-1)
    plain = TinyClassifier()
    with pytest.raises(ValueError, match=re.escape("Bayes layers for BayesKLCallback, but TinyClassifier has none")):
        fit(plain, [BayesKLCallback()], max_steps=1)
    assert "training_step" not in plain.__dict__
    with pytest.raises(ValueError, match=re.escape("contain Bayes layers, but TinyClassifier has none")):
        total_kl_divergence(plain)
    assert BayesKLCallback().state_key != BayesKLCallback(kl_weighting="blundell").state_key


# ----- the estimator -----------------------------------------------------------------------
def test_estimator_draws_differ_and_probabilities_are_distributions():
    torch.manual_seed(0)
    model = convert_to_bayesian(TinyClassifier(), rho_init=-1.0, sample=False)  # switched off: still samples
    out = BayesByBackprop(mc_samples=6).predict(model, torch.randn(5, 4), frozenset({MC_PROBS, PROBS}))
    mc = out[MC_PROBS]
    assert mc.shape == (5, 6, 3) and out[PROBS].shape == (5, 3)
    assert torch.allclose(mc.sum(-1), torch.ones(5, 6)) and torch.allclose(out[PROBS].sum(-1), torch.ones(5))
    assert torch.allclose(out[PROBS], mc.mean(1))
    assert all(not torch.allclose(mc[:, t], mc[:, t + 1]) for t in range(5))
    assert not model.training and all(layer.sample is False for layer in bayesian_layers(model))


def test_estimator_refuses_a_model_without_bayes_layers():
    with pytest.raises(
        ValueError,
        match=re.escape("Bayes layers (BayesLinear/BayesConv2d) for BayesByBackprop, but TinyClassifier has none"),
    ):
        BayesByBackprop(3).predict(TinyClassifier(), torch.randn(2, 4), frozenset({MC_PROBS}))
    with pytest.raises(ValueError, match=re.escape("`mc_samples` to be an int >= 1, but got 0")):
        BayesByBackprop(0)


# ----- end to end ----------------------------------------------------------------------------
class LocalBALD(ScoreStrategy):
    """BALD written out here: H[mean_t p_t] - mean_t H[p_t]."""

    requires = frozenset({MC_PROBS})

    def __init__(self) -> None:
        self.estimator = BayesByBackprop(5)

    def score(self, outputs):
        probs_N_T_C = outputs[MC_PROBS].double()

        def entropy(p):
            return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)

        return entropy(probs_N_T_C.mean(1)) - entropy(probs_N_T_C).mean(1)


def test_active_learning_round_with_bayes_by_backprop_and_bald():
    train, test = blobs(120, seed=0), blobs(60, seed=1)
    dm = al.ActiveDataModule(train, test_set=test, initial_labelled=10, batch_size=8, seed=0)
    initial = set(dm.labelled_ids.tolist())
    torch.manual_seed(0)
    model = convert_to_bayesian(TinyClassifier())
    loop = al.ActiveLearningLoop(
        strategy=LocalBALD(),
        query_size=5,
        rounds=1,
        trainer_kwargs={"max_epochs": 2, "accelerator": "cpu", "callbacks": [BayesKLCallback()]},
    )
    history = loop.run(model, dm)
    selected = history[0]["selected_ids"]
    assert len(selected) == 5 == len(set(selected)) and not set(selected) & initial
    assert all(0 <= i < 120 for i in selected) and dm.num_labelled == 15
    scores = history[0]["selected_scores"]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0  # mutual information is >= 0
    assert max(scores) > 0  # weight draws disagree
    assert history[0]["bayes_kl"] > 0 and "training_step" not in model.__dict__
