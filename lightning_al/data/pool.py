"""Bookkeeping of which samples are labelled, when, and with which label."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lightning_al.tasks import Task

from lightning_al._ids import UNLABELLED, as_dataset_ids, as_id_tensor


class ActivePool:
    """Per-sample labelling state of a dataset of ``size`` samples, keyed by dataset index.

    For each sample the pool stores the round at which it was labelled (``-1`` while
    unlabelled) and the label it received, so the labelling history is never lost
    (a design borrowed from baal's ``ActiveLearningDataset``). The task decides what a label is
    (a class index, a 0/1 vector, a mask) and how it is stored: ``labels`` is a ``LongTensor[size]``
    for single-label classification (``-1`` while unlabelled).

    Args:
        size: number of samples in the dataset.
        num_classes: if given, labels must lie in ``[0, num_classes)`` (single-label classification).
        task: the task (`lightning_al.tasks`); default ``MultiClass(num_classes)``.
    """

    def __init__(self, size: int, num_classes: int | None = None, task: Task | None = None) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"Expected `size` to be a non-negative int, but got {size!r}.")
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(f"Expected `num_classes` to be a positive int or None, but got {num_classes!r}.")
        self.task = resolve_task(task, num_classes)
        self.size = size
        self.num_classes = self.task.num_classes
        self.labelled_round = torch.full((size,), UNLABELLED, dtype=torch.long)
        self.labels = self.task.empty_labels(size)

    @property
    def labelled_mask(self) -> Tensor:
        """``BoolTensor[size]``, True where labelled."""
        return self.labelled_round != UNLABELLED

    @property
    def labelled_ids(self) -> Tensor:
        """Dataset ids of the labelled samples, ascending."""
        return self.labelled_mask.nonzero().flatten()

    @property
    def unlabelled_ids(self) -> Tensor:
        """Dataset ids of the unlabelled samples, ascending."""
        return (~self.labelled_mask).nonzero().flatten()

    @property
    def num_labelled(self) -> int:
        """Number of labelled samples."""
        return int(self.labelled_mask.sum())

    @property
    def num_unlabelled(self) -> int:
        """Number of unlabelled samples."""
        return self.size - self.num_labelled

    def check_known(self, ids: Any, name: str = "ids") -> Tensor:
        """Return ``ids`` as a LongTensor after checking they index this pool's dataset (errors call them ``name``)."""
        return as_dataset_ids(name, ids, self.size)

    def check_unlabelled(self, ids: Any, name: str = "ids") -> Tensor:
        """Return ``ids`` as a LongTensor after checking they are known, unique and unlabelled (errors: ``name``)."""
        ids = self.check_known(ids, name)
        if ids.numel() == 0:
            return ids
        unique, counts = ids.unique(return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"Expected `{name}` to be unique, but ids {unique[counts > 1][:10].tolist()} repeat.")
        already = ids[self.labelled_mask[ids]]
        if already.numel():
            raise ValueError(
                f"Expected `{name}` to be unlabelled, but ids {already[:10].tolist()} are already labelled "
                f"(in rounds {self.labelled_round[already[:10]].tolist()})."
            )
        return ids

    def check_labels(self, labels: Any, ids: Tensor) -> Tensor | list[Tensor]:
        """``labels`` for ``ids`` in the task's form, validated (a ValueError naming the ids otherwise)."""
        return self.task.as_labels(labels, ids)

    def label(self, ids: Any, labels: Any, round: int) -> None:
        """Record ``labels`` for the unlabelled samples ``ids`` at ``round``.

        Everything is validated before anything changes: on any error the pool is untouched.
        """
        ids = self.check_unlabelled(ids)
        self.record(ids, self.check_labels(labels, ids), round)

    def record(self, ids: Tensor, labels: Tensor | list[Tensor], round: int) -> None:
        """Store ``labels`` of ``ids`` that `check_unlabelled` and `check_labels` already passed, at ``round``."""
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ValueError(f"Expected `round` to be a non-negative int, but got {round!r}.")
        self.labels[ids] = labels
        self.labelled_round[ids] = round

    def label_of(self, index: int) -> Tensor:
        """The stored label of dataset id ``index`` (labelled)."""
        return self.labels[index]

    def state_dict(self) -> dict[str, Any]:
        """``size``, ``num_classes``, the task's repr, ``labelled_round`` ``(size,)`` and the labels in the task's
        state form."""
        return {
            "size": self.size,
            "num_classes": self.num_classes,
            "task": repr(self.task),
            "labelled_round": self.labelled_round.clone(),
            "labels": self.task.labels_state(self.labels),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` of a pool of the same size, classes and task; a `ValueError` otherwise."""
        missing = {"size", "labelled_round", "labels"} - set(state)
        if missing:
            raise ValueError(
                f"Expected a pool state with keys size, labelled_round, labels; missing {sorted(missing)}."
            )
        if state["size"] != self.size:
            raise ValueError(
                f"Expected a pool state for a dataset of {self.size} samples, but got one for {state['size']}."
            )
        labelled_round = as_id_tensor("labelled_round", state["labelled_round"])
        if labelled_round.shape != (self.size,):
            raise ValueError(f"Expected pool tensors of shape ({self.size},) in the state.")
        if state.get("num_classes", self.num_classes) != self.num_classes:
            raise ValueError(
                f"Expected a pool state for {self.num_classes} classes, but got one for {state['num_classes']}."
            )
        if state.get("task", repr(self.task)) != repr(self.task):
            raise ValueError(f"Expected a pool state for the task {self.task!r}, but got one for {state['task']}.")
        if (labelled_round < UNLABELLED).any():
            raise ValueError("Expected rounds >= 0 for labelled samples and -1 (with label -1) for unlabelled ones.")
        labelled_ids = (labelled_round != UNLABELLED).nonzero().flatten()
        labels = state["labels"]
        if isinstance(labels, Tensor) and labels.shape[:1] != (self.size,):
            raise ValueError(f"Expected pool tensors of shape ({self.size},) in the state.")
        self.labels = self.task.labels_from_state(labels, labelled_ids)
        self.labelled_round = labelled_round.clone()


def resolve_task(task: Task | None, num_classes: int | None) -> Task:
    """``task``, or ``MultiClass(num_classes)`` when None; refuses a ``num_classes`` the task contradicts."""
    from lightning_al.tasks import MultiClass, Task

    if task is None:
        return MultiClass(num_classes)
    if not isinstance(task, Task):
        raise TypeError(f"Expected `task` to be a lightning_al.tasks task, but got {type(task).__name__}.")
    if num_classes is not None and num_classes != task.num_classes:
        raise ValueError(f"Expected `num_classes` to match the task {task!r}, but got {num_classes}.")
    return task
