"""Oracles answer label queries: simulated from ground truth, or (later) a human."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor
from torch.utils.data import Dataset

from lightning_al.data.pool import as_id_tensor
from lightning_al.data.targets import Key, dataset_targets


@runtime_checkable
class Oracle(Protocol):
    """Anything that labels dataset ids.

    ``label(ids)`` receives a ``LongTensor[k]`` of dataset ids and returns a
    ``LongTensor[k]`` of class indices, one per id, in the same order.
    """

    def label(self, ids: Tensor) -> Tensor: ...


class DatasetOracle:
    """Simulated annotator that reads the ground-truth target of each queried sample.

    Args:
        dataset: the dataset the ids index into (the raw training set).
        target_key: where the target sits in an item (tuple index or dict key).
    """

    def __init__(self, dataset: Dataset, target_key: int | str = 1) -> None:
        self.dataset = dataset
        self.target_key: Key = target_key

    def label(self, ids: Tensor) -> Tensor:
        ids = as_id_tensor("ids", ids)
        return dataset_targets(self.dataset, ids, self.target_key)
