"""VAAL acquisition: query what the adversarial discriminator is surest is unlabelled.

Sinha, Ebrahimi & Darrell 2019, "Variational Adversarial Active Learning". The VAE and the
discriminator are trained by `lightning_al.callbacks.vaal.VAALCallback` during every
round's fit of the main model; scoring reads only them, never the task model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_al.callbacks.vaal import LossForm, VAALCallback, WeightInit
from lightning_al.estimators.base import Estimator
from lightning_al.outputs import PoolOutputs
from lightning_al.strategies.base import CallbackScoreStrategy

VAAL_SCORE = "vaal_unlabelled_score"  # (N,) 1 - p("labelled") of the VAAL discriminator


class VAALEstimator(Estimator):
    """``vaal_unlabelled_score = 1 - sigmoid(discriminator(mu(x)))``, shape ``(B,)``, for pool inputs ``x``.

    ``mu`` is the VAE encoder's mean of the flattened input. Higher = the discriminator is
    surer the sample is unlabelled = query first; the same order as the authors' code, which takes
    the lowest ``p(labelled)`` over the whole unlabelled pool (``sampler.py``). The model's forward
    is not used.

    Args:
        callback: the `VAALCallback` that trains the VAE and the discriminator.
    """

    provides = frozenset({VAAL_SCORE})

    def __init__(self, callback: VAALCallback) -> None:
        if not isinstance(callback, VAALCallback):
            raise TypeError(f"Expected `callback` to be a VAALCallback, but got {type(callback).__name__}.")
        self.callback = callback

    def modules(self) -> list[nn.Module]:
        """The VAE and the discriminator, once the callback has built them."""
        if self.callback.vae is None or self.callback.discriminator is None:
            return []
        return [self.callback.vae, self.callback.discriminator]

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        """``{"vaal_unlabelled_score": (B,)}`` for the batch ``inputs`` (a tensor); ``model`` is unused."""
        del model
        vae, discriminator = self.callback.vae, self.callback.discriminator
        if vae is None or discriminator is None:
            raise RuntimeError("Expected the VAALCallback to have trained during a fit before scoring, but it has not.")
        if not isinstance(inputs, Tensor):
            raise TypeError(f"Expected the pool inputs to be a Tensor, but got {type(inputs).__name__}.")
        vae.eval()
        discriminator.eval()
        device = next(vae.parameters()).device
        with torch.no_grad():
            mu_B_L, _ = vae.encode(inputs.to(device))
            score_B = torch.sigmoid(-discriminator(mu_B_L))  # 1 - sigmoid(l), without cancellation
        return {VAAL_SCORE: score_B.float()}


class VAAL(CallbackScoreStrategy):
    """Variational adversarial active learning (Sinha et al. 2019): top ``k`` of ``1 - p(labelled | mu(x))``.

    Owns the `VAALCallback` that trains the VAE and discriminator during each round's
    fit (`callbacks`); the arguments are forwarded to it, and their defaults are the authors' code's
    (two VAE steps per batch, element-mean reconstruction with the KL summed over batch and latent,
    a 512-wide discriminator, Kaiming-normal weights). Ties go to the lower dataset id.

    Args:
        latent_dim: VAE latent dimension.
        beta: weight β of the KL term (β-VAE).
        adversary_weight: weight λ of the VAE's adversarial term.
        vae_steps: VAE updates per training batch.
        discriminator_steps: discriminator updates per training batch.
        lr: Adam learning rate of both modules.
        seed: seeds module weights, the VAE's noise and the batch shuffles.
        reset_each_fit: rebuild the modules at the start of every fit.
        hidden: hidden width of the VAE's MLPs.
        discriminator_hidden: hidden width of the discriminator.
        loss_form: ``"authors"`` or ``"per_sample"`` (see `lightning_al.callbacks.vaal.elbo_terms`).
        fresh_labelled: VAE updates after the first draw a fresh labelled batch too.
        weight_init: ``"kaiming"`` (the authors') or ``"default"`` (PyTorch's).
    """

    requires = frozenset({VAAL_SCORE})

    def __init__(
        self,
        latent_dim: int = 32,
        beta: float = 1.0,
        adversary_weight: float = 1.0,
        vae_steps: int = 2,
        discriminator_steps: int = 1,
        lr: float = 5e-4,
        seed: int = 0,
        reset_each_fit: bool = True,
        hidden: int = 128,
        discriminator_hidden: int = 512,
        loss_form: LossForm = "authors",
        fresh_labelled: bool = True,
        weight_init: WeightInit = "kaiming",
    ) -> None:
        self.callback = VAALCallback(
            latent_dim=latent_dim,
            beta=beta,
            adversary_weight=adversary_weight,
            vae_steps=vae_steps,
            discriminator_steps=discriminator_steps,
            lr=lr,
            seed=seed,
            reset_each_fit=reset_each_fit,
            hidden=hidden,
            discriminator_hidden=discriminator_hidden,
            loss_form=loss_form,
            fresh_labelled=fresh_labelled,
            weight_init=weight_init,
        )
        self.estimator = VAALEstimator(self.callback)

    def score(self, outputs: PoolOutputs) -> Tensor:
        """``(N,)`` discriminator scores ``1 - p(labelled | mu(x))``."""
        return outputs[VAAL_SCORE]

    def __repr__(self) -> str:
        c = self.callback
        return (
            f"VAAL(latent_dim={c.latent_dim}, beta={c.beta}, adversary_weight={c.adversary_weight}, "
            f"vae_steps={c.vae_steps}, loss_form={c.loss_form!r}, seed={c.seed})"
        )
