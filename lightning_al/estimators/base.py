"""Estimators turn a model and a batch of inputs into the outputs strategies need."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_al.outputs import PROBS

# ``train(module, seed)`` fits ``module`` on the current labelled set with the loop's Trainer arguments.
TrainFn = Callable[[pl.LightningModule, int], None]


class Estimator:
    """Computes named outputs for a batch of pool inputs.

    Subclasses set ``provides`` (the output names they can compute) and implement
    :meth:`predict`, which must compute only the outputs in ``needs``. Three optional
    hooks let an estimator take part in training without the loop knowing its type:
    :meth:`callbacks` join the main model's fit, :meth:`fit` runs after it (ensembles
    train their other members there), and :meth:`modules` lists extra modules that must
    move to the scoring device with the model. Estimators with state implement
    ``state_dict``/``load_state_dict``.
    """

    provides: frozenset[str] = frozenset()

    def callbacks(self) -> list[pl.Callback]:
        """Callbacks added to every round's fit of the main model."""
        return []

    def fit(self, model: pl.LightningModule, train: TrainFn) -> None:
        """Called every round after the main model's fit; ``train(module, seed)`` fits another module."""
        del model, train

    def modules(self) -> list[nn.Module]:
        """Modules besides the model that :meth:`predict` runs (moved to the scoring device with it)."""
        return []

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
