"""lightning_al: deep active learning for PyTorch Lightning."""

from lightning_al import (
    bayes,
    callbacks,
    estimators,
    functional,
    model_call,
    namespace,
    plotting,
    self_supervised,
    strategies,
    tasks,
)
from lightning_al.data import ActiveDataModule, ActivePool, batch_ids
from lightning_al.estimators import BayesByBackprop, DeepEnsemble, Estimator, MCDropout, SnapshotEnsemble, Softmax
from lightning_al.file_oracle import FileOracle
from lightning_al.loop import ActiveLearningLoop
from lightning_al.oracles import DatasetOracle, LabelsPending, Oracle, Query, QueryOracle
from lightning_al.outputs import PoolOutputs
from lightning_al.plotting import plot_learning_curves
from lightning_al.round_logging import RoundLogger
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
    "FileOracle",
    "LabelsPending",
    "MCDropout",
    "Oracle",
    "PoolOutputs",
    "Query",
    "QueryOracle",
    "RoundLogger",
    "Selection",
    "SnapshotEnsemble",
    "Softmax",
    "Strategy",
    "batch_ids",
    "bayes",
    "callbacks",
    "estimators",
    "functional",
    "model_call",
    "namespace",
    "plot_learning_curves",
    "plotting",
    "self_supervised",
    "strategies",
    "tasks",
]
