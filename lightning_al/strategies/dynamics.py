"""Strategies that read training dynamics recorded by callbacks during the fit."""

from __future__ import annotations

from torch import Tensor

from lightning_al.callbacks.dispersion import LabelDispersionCallback
from lightning_al.outputs import PoolOutputs
from lightning_al.strategies.base import CallbackScoreStrategy


class LabelDispersion(CallbackScoreStrategy):
    """Query the pool samples whose predicted label changed most during training (Bengar et al. 2021,
    "When Deep Learners Change Their Mind: Learning Dynamics for Active Learning").

    Owns a `LabelDispersionCallback` that the loop adds to every round's fit; it
    predicts the pool every ``every_n_epochs`` epochs. The score is ``1 - (count of the modal
    predicted label) / T``; the top ``k`` are queried (ties → lower dataset id). Needs no
    estimator output, so the loop runs no scoring pass.

    Args:
        every_n_epochs: predict the pool at the end of every k-th training epoch.
    """

    requires = frozenset()

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.callback = LabelDispersionCallback(every_n_epochs=every_n_epochs)

    def score(self, outputs: PoolOutputs) -> Tensor:
        return self.callback.dispersion_by_id(outputs.ids)

    def __repr__(self) -> str:
        return f"LabelDispersion(every_n_epochs={self.callback.every_n_epochs})"
