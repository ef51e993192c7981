"""The KL term of Bayes-by-backprop, added to the user's training loss by a callback.

Blundell et al. 2015 ("Weight Uncertainty in Neural Networks", eq. 8) split the variational
free energy over the ``M`` minibatches of an epoch as

    F_i = pi_i KL(q || p) + NLL_i,        sum_i pi_i = 1,

where ``NLL_i = -sum_{n in batch i} log p(y_n | x_n, w)`` is *sum*-reduced, so that the ``F_i``
add up to the full-data free energy ``KL + NLL``. A LightningModule usually returns the *mean*
``NLL_i / B`` over its ``B`` samples; dividing ``F_i`` by ``B`` (which changes neither the optimum nor,
up to the learning rate, the gradient direction) gives the per-step loss

    loss_i = NLL_i / B + (pi_i / B) KL.

With ``N`` training samples in ``M = N / B`` batches and uniform weights ``pi_i = 1 / M``,
``pi_i / B = 1 / N``: **add KL / N to a mean-reduced loss.** For the paper's weights
``pi_i = 2^(M - i) / (2^M - 1)`` (``i = 1..M``, early batches of an epoch carry most of the KL)
the factor is ``pi_i M / N``, which reduces to ``1 / N`` when ``pi_i = 1 / M``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_al._validation import check_int
from lightning_al.bayes.convert import bayesian_layers
from lightning_al.bayes.layers import _BayesLayer
from lightning_al.callbacks.step_patch import RestoresTrainingStep, TrainingStepPatch

if TYPE_CHECKING:
    import pytorch_lightning as pl

KL_WEIGHTINGS = ("uniform", "blundell")
KL_LOG_NAME = "bayes_kl"  # KL(q || p) of the whole model, nats
KL_TERM_LOG_NAME = "bayes_kl_term"  # the scaled KL added to the step's loss


def kl_minibatch_weights(num_batches: int, kl_weighting: str = "uniform") -> Tensor:
    """The weights ``pi_i`` of the KL in minibatch ``i = 1..M`` of an epoch, float64 of shape ``(M,)``, summing to 1.

    ``"uniform"``: ``pi_i = 1 / M``. ``"blundell"``: ``pi_i = 2^(M - i) / (2^M - 1)``, evaluated as
    ``2^-i / (1 - 2^-M)`` so that large ``M`` does not overflow (Blundell et al. 2015, "Weight Uncertainty in
    Neural Networks", §3.4).

    Args:
        num_batches: ``M``, the minibatches of an epoch.
        kl_weighting: ``"uniform"`` or ``"blundell"``.
    """
    check_int("num_batches", num_batches, 1)
    if kl_weighting == "uniform":
        return torch.full((num_batches,), 1.0 / num_batches, dtype=torch.float64)
    if kl_weighting == "blundell":
        i = torch.arange(1, num_batches + 1, dtype=torch.float64)
        return torch.exp2(-i) / -math.expm1(-num_batches * math.log(2))
    raise ValueError(f"Expected `kl_weighting` to be one of {KL_WEIGHTINGS}, but got {kl_weighting!r}.")


def total_kl_divergence(model: nn.Module) -> Tensor:
    """Sum of ``kl_divergence()`` over the Bayes layers of ``model`` (scalar), e.g. for manual optimisation."""
    layers = bayesian_layers(model)
    if not layers:
        raise ValueError(f"Expected `model` to contain Bayes layers, but {type(model).__name__} has none.")
    return _sum_kl(layers)


def _sum_kl(layers: list[_BayesLayer]) -> Tensor:
    total = layers[0].kl_divergence()
    for layer in layers[1:]:
        total = total + layer.kl_divergence()
    return total


def _dataset_length(trainer: pl.Trainer) -> int | None:
    loader = trainer.train_dataloader
    if not isinstance(loader, DataLoader):
        return None
    try:
        return len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


class BayesKLCallback(RestoresTrainingStep):
    """Adds the Bayes-by-backprop KL term to the loss the user's ``training_step`` returns.

    The LightningModule stays unmodified: its ``training_step`` returns the data loss (a
    mean-reduced NLL such as ``F.cross_entropy``), as a tensor or in a dict's ``"loss"``. At
    ``on_fit_start`` this callback shadows the method with an instance attribute that calls the
    original and adds ``kl_scale * w_i * KL(q || p)`` to the returned loss, with ``w_i = 1 / N``
    (uniform) or ``w_i = pi_i M / N`` (``"blundell"``); see the module docstring for the derivation.
    The original is restored at ``on_fit_end`` (and on an exception). Because the KL joins the
    loss *inside* ``training_step``, everything Lightning does to that loss afterwards applies
    to it too: division by ``accumulate_grad_batches``, the mixed-precision grad scaler, the
    DDP/FSDP forward redirection (which looks ``training_step`` up on the module instance). The
    KL itself is computed with autocast off, in at least float32. A step whose ``training_step``
    returns None stays skipped.

    ``N`` is the number of training samples: ``num_train_samples`` if given, else the length of
    the train dataloader's dataset (under DDP the whole dataset, not one rank's shard: each rank's
    loss is averaged over ranks). ``M`` is ``trainer.num_training_batches``; both are read at the
    start of every epoch. With mixture priors the Monte Carlo KL uses the weights of the last
    forward pass inside ``training_step``.

    Logs ``"bayes_kl"`` (the model's KL, nats) and ``"bayes_kl_term"`` (what was added) per step.
    Needs automatic optimisation; with manual optimisation add
    ``total_kl_divergence(self) / N`` to your loss yourself.

    Args:
        kl_weighting: ``"uniform"`` (``pi_i = 1 / M``) or ``"blundell"`` (``pi_i = 2^(M-i) / (2^M - 1)``).
        num_train_samples: ``N``; None reads it from the train dataloader.
        kl_scale: extra factor on the KL term; 1 is the ELBO, smaller values temper the prior
            (a deviation from the paper, useful when a few labels meet many weights).

    Reference: Blundell, Cornebise, Kavukcuoglu & Wierstra 2015, "Weight Uncertainty in Neural Networks".
    """

    def __init__(
        self, kl_weighting: str = "uniform", num_train_samples: int | None = None, kl_scale: float = 1.0
    ) -> None:
        if kl_weighting not in KL_WEIGHTINGS:
            raise ValueError(f"Expected `kl_weighting` to be one of {KL_WEIGHTINGS}, but got {kl_weighting!r}.")
        if num_train_samples is not None and (
            isinstance(num_train_samples, bool) or not isinstance(num_train_samples, int) or num_train_samples < 1
        ):
            raise ValueError(f"Expected `num_train_samples` to be an int >= 1 or None, but got {num_train_samples!r}.")
        if isinstance(kl_scale, bool) or not isinstance(kl_scale, (int, float)) or not math.isfinite(kl_scale):
            raise ValueError(f"Expected `kl_scale` to be a finite float >= 0, but got {kl_scale!r}.")
        if kl_scale < 0:
            raise ValueError(f"Expected `kl_scale` to be a finite float >= 0, but got {kl_scale!r}.")
        self.kl_weighting = kl_weighting
        self.num_train_samples = num_train_samples
        self.kl_scale = float(kl_scale)
        self._layers: list[_BayesLayer] = []
        self._patch = TrainingStepPatch()
        self._step_weights: Tensor | None = None
        self._batch_idx = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            kl_weighting=self.kl_weighting, num_train_samples=self.num_train_samples, kl_scale=self.kl_scale
        )

    # ----- the wrapper ------------------------------------------------------------------
    def step_weight(self, batch_idx: int) -> float:
        """``w_i`` multiplying the KL at ``batch_idx`` (0-based) of the current epoch, before ``kl_scale``."""
        if self._step_weights is None:
            raise RuntimeError("Expected a training epoch to have started, but the KL weights are not set yet.")
        return float(self._step_weights[min(batch_idx, self._step_weights.numel() - 1)])

    def _add_kl(self, pl_module: pl.LightningModule, output: Any) -> Any:
        loss = output.get("loss") if isinstance(output, Mapping) else output
        if not isinstance(loss, Tensor):
            return output  # None skips the step; anything else Lightning refuses with its own message
        with torch.autocast(device_type=loss.device.type, enabled=False):
            kl = _sum_kl(self._layers)
            term = kl * (self.kl_scale * self.step_weight(self._batch_idx))
        pl_module.log(KL_LOG_NAME, kl.detach(), on_step=True, on_epoch=False, batch_size=1)
        pl_module.log(KL_TERM_LOG_NAME, term.detach(), on_step=True, on_epoch=False, batch_size=1)
        total = loss + term
        return {**output, "loss": total} if isinstance(output, Mapping) else total

    def _wrap(self, pl_module: pl.LightningModule) -> None:
        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def training_step_with_kl(*args: Any, **kwargs: Any) -> Any:
                return self._add_kl(pl_module, original(*args, **kwargs))

            return training_step_with_kl

        self._patch.install(pl_module, wrap)

    def _restore(self) -> None:
        self._patch.restore()
        self._layers = []

    # ----- hooks ------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise ValueError(
                "Expected automatic optimisation for BayesKLCallback, but "
                f"{type(pl_module).__name__}.automatic_optimization is False; add "
                "`total_kl_divergence(self) / N` to the loss in your training_step instead."
            )
        layers = bayesian_layers(pl_module)
        if not layers:
            raise ValueError(
                f"Expected the model to contain Bayes layers for BayesKLCallback, but {type(pl_module).__name__} "
                "has none; call `convert_to_bayesian(model)` (before building the optimiser) or use BayesLinear/"
                "BayesConv2d."
            )
        if self._patch.module is not None:
            raise RuntimeError("Expected one fit at a time per BayesKLCallback, but it is already attached.")
        self._layers = layers
        self._wrap(pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = self.num_train_samples if self.num_train_samples is not None else _dataset_length(trainer)
        if n is None or n < 1:
            raise ValueError(
                "Expected `num_train_samples` (the N in KL / N) for BayesKLCallback, but the train dataloader's "
                "dataset has no length; pass BayesKLCallback(num_train_samples=...)."
            )
        m = trainer.num_training_batches
        if self.kl_weighting == "uniform":
            self._step_weights = torch.full((1,), 1.0 / n, dtype=torch.float64)
            return
        if not isinstance(m, int) or m < 1:
            raise ValueError(
                "Expected a finite number of training batches per epoch for kl_weighting='blundell', "
                f"but got {m}; set `limit_train_batches` or use kl_weighting='uniform'."
            )
        self._step_weights = kl_minibatch_weights(m, "blundell") * (m / n)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx
