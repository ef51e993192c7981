"""The active pool and its datamodule."""

from lightning_al.data.batches import batch_ids
from lightning_al.data.datamodule import ActiveDataModule
from lightning_al.data.pool import ActivePool
from lightning_al.data.targets import dataset_targets

__all__ = ["ActiveDataModule", "ActivePool", "batch_ids", "dataset_targets"]
