"""Oracles answer label queries: simulated from ground truth, or a human through a file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import Tensor
from torch.utils.data import Dataset

from lightning_al.data.pool import as_id_tensor
from lightning_al.data.targets import Key, dataset_targets

if TYPE_CHECKING:
    from lightning_al.tasks import Task


@runtime_checkable
class Oracle(Protocol):
    """Anything that labels dataset ids.

    ``label(ids)`` receives a ``LongTensor[k]`` of dataset ids and returns one label per id, in the same
    order: a ``LongTensor[k]`` of class indices, or for other tasks a ``(k, L)`` 0/1 tensor (multi-label) or
    ``k`` masks (segmentation: a ``(k, H, W)`` tensor or a list of ``(H, W)`` tensors).
    """

    def label(self, ids: Tensor) -> Tensor | list[Tensor]:
        """One label per id of ``ids`` (``LongTensor[k]``), in the same order, in the task's form (see above)."""
        ...


@dataclass(frozen=True)
class Query:
    """One round's request for labels, with what the model thinks of each queried sample.

    Attributes:
        round: the round whose model made the query (its answers are recorded as round ``round + 1``).
        ids: ``LongTensor[k]`` dataset ids, in the order the strategy chose them.
        scores: ``DoubleTensor[k]`` the strategy's acquisition scores (higher = chosen first), or None.
        predicted: the model's predicted labels in the task's form (``LongTensor[k]`` classes: argmax of its
            softmax; ``(k, L)`` 0/1 for multi-label; ``(k, H, W)`` masks for segmentation), or None when
            no labelled data has trained a model yet, or when nobody reads it (the loop computes it for a
            `QueryOracle` or an experiment logger).
    """

    round: int
    ids: Tensor
    scores: Tensor | None = None
    predicted: Tensor | None = None


@dataclass(frozen=True)
class PartialLabels:
    """What an oracle returns when some queried samples got no label (e.g. an annotator skipped them).

    Attributes:
        ids: ``LongTensor[m]`` the labelled ids, a subset of the query's, in query order.
        labels: their labels, in the task's form as for `Oracle`.

    The loop records these labels; the query's other ids return to the unlabelled pool.
    """

    ids: Tensor
    labels: Tensor | list[Tensor]


Answer = Tensor | list[Tensor] | PartialLabels  # what a QueryOracle's ``answer`` returns


@runtime_checkable
class QueryOracle(Protocol):
    """An oracle that wants the whole `Query` (e.g. to show a human the model's suggestion).

    ``answer(query)`` returns one label per id in the order of ``query.ids`` (class indices, or the task's
    form as for `Oracle`), or `PartialLabels` when only some ids got a label, or
    raises `LabelsPending` when the answers are not available yet.
    """

    def answer(self, query: Query) -> Answer:
        """The labels of ``query.ids`` (or `PartialLabels`); raises `LabelsPending` while they are not ready."""
        ...


class LabelsPending(Exception):
    """Raised by an oracle whose answers are not ready (a human has to label first).

    The loop saves its state and returns; running it again with ``resume=True`` asks the oracle
    the same query again. The message tells the user what to do.
    """


class DatasetOracle:
    """Simulated annotator that reads the ground-truth target of each queried sample.

    Args:
        dataset: the dataset the ids index into (the raw training set).
        target_key: where the target sits in an item (tuple index or dict key).
        task: the form of the labels (class indices by default; 0/1 vectors, masks: see `lightning_al.tasks`).
    """

    def __init__(self, dataset: Dataset, target_key: int | str = 1, task: Task | None = None) -> None:
        self.dataset = dataset
        self.target_key: Key = target_key
        self.task = task

    def label(self, ids: Tensor) -> Tensor | list[Tensor]:
        """The dataset's targets at ``ids`` ``(k,)``: ``LongTensor[k]`` classes, or the task's form."""
        ids = as_id_tensor("ids", ids)
        return dataset_targets(self.dataset, ids, self.target_key, self.task)
