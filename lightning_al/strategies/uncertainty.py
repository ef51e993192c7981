"""Uncertainty sampling with a single deterministic model (Settles 2009, §3.1)."""

from __future__ import annotations

from torch import Tensor

from lightning_al import functional as F
from lightning_al.estimators import Softmax
from lightning_al.outputs import PROBS, PoolOutputs
from lightning_al.strategies.base import ScoreStrategy
from lightning_al.tasks import ALL_TASKS


class _ProbsStrategy(ScoreStrategy):
    """Scores ``probs`` with one kernel per unit (the sample; each label; each pixel), reduced by the task."""

    requires = frozenset({PROBS})
    tasks = ALL_TASKS

    def __init__(self) -> None:
        self.estimator = Softmax()


class LeastConfidence(_ProbsStrategy):
    """Query the samples whose most likely class is least likely: ``1 - max_c p``.

    Lewis & Gale 1994, "A Sequential Algorithm for Training Text Classifiers" (SIGIR).
    """

    def score(self, outputs: PoolOutputs) -> Tensor:
        return outputs.score(F.least_confidence)


class Margin(_ProbsStrategy):
    """Query the smallest gaps between the top two classes: ``1 - (p_(1) - p_(2))``.

    Scheffer, Decomain & Wrobel 2001, "Active Hidden Markov Models for Information Extraction" (IDA).
    """

    def score(self, outputs: PoolOutputs) -> Tensor:
        return outputs.score(F.margin)


class Entropy(_ProbsStrategy):
    """Query the highest predictive entropy ``-sum_c p log p`` of ``probs`` ``(N, C)``.

    Multi-label: the sum (or mean) of the labels' binary entropies; segmentation: the pixels' entropies
    reduced per image (see `lightning_al.tasks`).

    Shannon 1948, "A Mathematical Theory of Communication"; Settles 2009, "Active Learning Literature Survey".
    """

    def score(self, outputs: PoolOutputs) -> Tensor:
        return outputs.score(F.entropy)
