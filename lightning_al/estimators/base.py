"""Estimators turn a model and a batch of inputs into the outputs strategies need."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_al.outputs import PROBS


class Estimator:
    """Computes named outputs for a batch of pool inputs.

    Subclasses set ``provides`` (the output names they can compute) and implement
    :meth:`predict`, which must compute only the outputs in ``needs``. Estimators with
    state implement ``state_dict``/``load_state_dict``.
    """

    provides: frozenset[str] = frozenset()

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class Softmax(Estimator):
    """One deterministic forward pass in eval mode: ``probs = softmax(model(x))``, shape ``(B, C)``.

    The model's ``forward`` must return logits of shape ``(B, C)``.
    """

    provides = frozenset({PROBS})

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        model.eval()
        logits = model(inputs)
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"Expected the model's forward to return logits of shape (B, C), but got {shape}.")
        return {PROBS: torch.softmax(logits.float(), dim=-1)}
