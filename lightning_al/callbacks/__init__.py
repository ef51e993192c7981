"""Callbacks that attach to a user's Trainer."""

from lightning_al.callbacks.dispersion import LabelDispersionCallback
from lightning_al.callbacks.forgetting import ForgettingCallback
from lightning_al.callbacks.loss_prediction import LossPredictionCallback, LossPredictionHead
from lightning_al.callbacks.mal import CosineClassifier, MALCallback
from lightning_al.callbacks.snapshots import SnapshotCallback, cyclic_cosine_factor
from lightning_al.callbacks.vaal import VAALCallback

__all__ = [
    "CosineClassifier",
    "ForgettingCallback",
    "LabelDispersionCallback",
    "LossPredictionCallback",
    "LossPredictionHead",
    "MALCallback",
    "SnapshotCallback",
    "VAALCallback",
    "cyclic_cosine_factor",
]
