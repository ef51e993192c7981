"""Uncertainty sampling with a single deterministic model (Settles 2009, §3.1)."""

from __future__ import annotations

from torch import Tensor

from lightning_al import functional as F
from lightning_al.estimators import Softmax
from lightning_al.outputs import PROBS, PoolOutputs
from lightning_al.strategies.base import ScoreStrategy


class _ProbsStrategy(ScoreStrategy):
    requires = frozenset({PROBS})

    def __init__(self) -> None:
        self.estimator = Softmax()


class LeastConfidence(_ProbsStrategy):
    """Query the samples whose most likely class is least likely: ``1 - max_c p`` (Lewis & Gale 1994)."""

    def score(self, outputs: PoolOutputs) -> Tensor:
        return F.least_confidence(outputs[PROBS])


class Margin(_ProbsStrategy):
    """Query the smallest gaps between the top two classes: ``1 - (p_(1) - p_(2))`` (Scheffer et al. 2001)."""

    def score(self, outputs: PoolOutputs) -> Tensor:
        return F.margin(outputs[PROBS])


class Entropy(_ProbsStrategy):
    """Query the highest predictive entropy ``-sum_c p log p`` (Shannon 1948; Settles 2009)."""

    def score(self, outputs: PoolOutputs) -> Tensor:
        return F.entropy(outputs[PROBS])
