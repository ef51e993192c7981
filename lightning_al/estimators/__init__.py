"""Estimators: how the model's predictive distribution over the pool is obtained."""

from lightning_al.estimators.base import Estimator, Softmax
from lightning_al.estimators.ensembles import Committee, DeepEnsemble, SnapshotEnsemble
from lightning_al.estimators.fixed_features import (
    FrozenEncoder,
    PrecomputedEmbeddings,
    dataset_fingerprint,
    module_fingerprint,
)
from lightning_al.estimators.mc_dropout import MCDropout
from lightning_al.estimators.weight_sampling import BayesByBackprop

__all__ = [
    "BayesByBackprop",
    "Committee",
    "DeepEnsemble",
    "Estimator",
    "FrozenEncoder",
    "MCDropout",
    "PrecomputedEmbeddings",
    "SnapshotEnsemble",
    "Softmax",
    "dataset_fingerprint",
    "module_fingerprint",
]
