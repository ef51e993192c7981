"""Monte Carlo dropout (Gal & Ghahramani 2016): dropout stays on at inference."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_al.estimators.base import Estimator
from lightning_al.outputs import MC_PROBS, PROBS

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The dropout modules of ``model`` with ``p > 0``."""
    return [m for m in model.modules() if isinstance(m, _DROPOUT_TYPES) and m.p > 0]


class MCDropout(Estimator):
    """``T`` stochastic forward passes with dropout active: ``mc_probs`` of shape ``(B, T, C)``.

    The model is in eval mode (batch norm uses running statistics) except its dropout
    layers, which sample a fresh mask on every pass. ``probs`` is the mean over the passes.

    Args:
        mc_samples: number of stochastic passes ``T``.

    Reference: Gal & Ghahramani 2016, "Dropout as a Bayesian Approximation"; Gal et al. 2017,
    "Deep Bayesian Active Learning with Image Data".
    """

    provides = frozenset({MC_PROBS, PROBS})

    def __init__(self, mc_samples: int = 20) -> None:
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"Expected `mc_samples` to be an int >= 1, but got {mc_samples!r}.")
        self.mc_samples = mc_samples

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        layers = dropout_layers(model)
        if not layers:
            raise ValueError(
                f"Expected the model to contain dropout layers with p > 0 for MCDropout, but "
                f"{type(model).__name__} has none: every pass would be identical and BALD would be 0."
            )
        model.eval()
        for layer in layers:
            layer.train()
        try:
            probs = torch.stack([torch.softmax(model(inputs).float(), dim=-1) for _ in range(self.mc_samples)], dim=1)
        finally:
            for layer in layers:
                layer.eval()
        return {MC_PROBS: probs, PROBS: probs.mean(dim=1)}
