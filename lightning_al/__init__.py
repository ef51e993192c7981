"""lightning_al: deep active learning for PyTorch Lightning."""

from lightning_al import bayes, callbacks, estimators, functional, strategies
from lightning_al.data import ActiveDataModule, ActivePool, batch_ids
from lightning_al.estimators import BayesByBackprop, DeepEnsemble, Estimator, MCDropout, SnapshotEnsemble, Softmax
from lightning_al.loop import ActiveLearningLoop
from lightning_al.oracles import DatasetOracle, Oracle
from lightning_al.outputs import PoolOutputs
from lightning_al.strategies import Selection, Strategy

__version__ = "0.1.0"

__all__ = [
    "ActiveDataModule",
    "ActiveLearningLoop",
    "ActivePool",
    "BayesByBackprop",
    "DatasetOracle",
    "DeepEnsemble",
    "Estimator",
    "MCDropout",
    "Oracle",
    "PoolOutputs",
    "Selection",
    "SnapshotEnsemble",
    "Softmax",
    "Strategy",
    "batch_ids",
    "bayes",
    "callbacks",
    "estimators",
    "functional",
    "strategies",
]
