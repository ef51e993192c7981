"""Acquisition strategies: thin classes over `lightning_al.functional`."""

from lightning_al.strategies.base import ScoreStrategy, Selection, Strategy
from lightning_al.strategies.batchbald import BatchBALD
from lightning_al.strategies.bayesian import BALD, QBC, MaxEntropy, MeanSTD, VariationRatios
from lightning_al.strategies.ceal import CEAL
from lightning_al.strategies.cold_start import BudgetAware, ProbCover, TypiClust
from lightning_al.strategies.diversity import BADGE, CAL, EGL, CoreSet, DiverseMiniBatch
from lightning_al.strategies.dynamics import LabelDispersion
from lightning_al.strategies.hybrid import SelectionViaProxy, SuggestiveAnnotation, TwoStage, WeightedMix
from lightning_al.strategies.loss_prediction import LossPrediction
from lightning_al.strategies.mal import MAL, MALEstimator
from lightning_al.strategies.random_sampling import Random
from lightning_al.strategies.uncertainty import Entropy, LeastConfidence, Margin
from lightning_al.strategies.vaal import VAAL

__all__ = [
    "BADGE",
    "BALD",
    "CAL",
    "CEAL",
    "EGL",
    "MAL",
    "QBC",
    "VAAL",
    "BatchBALD",
    "BudgetAware",
    "CoreSet",
    "DiverseMiniBatch",
    "Entropy",
    "LabelDispersion",
    "LeastConfidence",
    "LossPrediction",
    "MALEstimator",
    "Margin",
    "MaxEntropy",
    "MeanSTD",
    "ProbCover",
    "Random",
    "ScoreStrategy",
    "Selection",
    "SelectionViaProxy",
    "Strategy",
    "SuggestiveAnnotation",
    "TwoStage",
    "TypiClust",
    "VariationRatios",
    "WeightedMix",
]
