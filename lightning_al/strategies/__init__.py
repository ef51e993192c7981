"""Acquisition strategies: thin classes over :mod:`lightning_al.functional`."""

from lightning_al.strategies.base import ScoreStrategy, Selection, Strategy
from lightning_al.strategies.batchbald import BatchBALD
from lightning_al.strategies.bayesian import BALD, QBC, MaxEntropy, MeanSTD, VariationRatios
from lightning_al.strategies.random_sampling import Random
from lightning_al.strategies.uncertainty import Entropy, LeastConfidence, Margin

__all__ = [
    "BALD",
    "QBC",
    "BatchBALD",
    "Entropy",
    "LeastConfidence",
    "Margin",
    "MaxEntropy",
    "MeanSTD",
    "Random",
    "ScoreStrategy",
    "Selection",
    "Strategy",
    "VariationRatios",
]
