"""Predictive samples from weight draws of a Bayes-by-backprop network (Blundell et al. 2015)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_al._validation import check_int
from lightning_al.bayes.convert import bayesian_layers
from lightning_al.estimators.base import Estimator
from lightning_al.model_call import call_model
from lightning_al.outputs import MC_PROBS, PROBS
from lightning_al.tasks import ALL_TASKS


class BayesByBackprop(Estimator):
    """``T`` forward passes, each with a fresh draw of the weights from the variational posterior.

    ``mc_probs[b, t] = task.probs(f(x_b; w_t))`` (softmax by default) with ``w_t ~ q(w)``, shape ``(B, T, C)``;
    ``probs`` is the mean over ``t``, shape ``(B, C)``, the Monte Carlo posterior predictive. All samples of a
    pass share one weight draw (as in training). The model is put in eval mode (batch norm uses
    running statistics, dropout is off) and its Bayes layers sample even if they were switched
    to their means (``sample=False``); that switch is restored afterwards. The noise comes
    from the global RNG (or the layers' ``generator``), which the loop seeds every round.

    Args:
        mc_samples: number of weight draws ``T``.

    Reference: Blundell, Cornebise, Kavukcuoglu & Wierstra 2015, "Weight Uncertainty in Neural Networks".
    """

    provides = frozenset({MC_PROBS, PROBS})
    tasks = ALL_TASKS

    def __init__(self, mc_samples: int = 20) -> None:
        check_int("mc_samples", mc_samples, 1)
        self.mc_samples = mc_samples

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        """``mc_probs`` ``(B, T, C)`` of ``T`` weight draws and their mean ``probs`` ``(B, C)``."""
        layers = bayesian_layers(model)
        if not layers:
            raise ValueError(
                f"Expected the model to contain Bayes layers (BayesLinear/BayesConv2d) for BayesByBackprop, but "
                f"{type(model).__name__} has none: every pass would be identical. Call "
                "`lightning_al.bayes.convert_to_bayesian(model)` before training."
            )
        model.eval()
        sampling = [layer.sample for layer in layers]
        for layer in layers:
            layer.sample = True
        try:
            passes = []
            for _ in range(self.mc_samples):
                passes.append(self.task.probs(call_model(model, inputs)))
        finally:
            for layer, sample in zip(layers, sampling, strict=True):
                layer.sample = sample
        probs_B_T_C = torch.stack(passes, dim=1)
        return {MC_PROBS: probs_B_T_C, PROBS: probs_B_T_C.mean(dim=1)}
