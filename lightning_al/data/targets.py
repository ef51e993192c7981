"""Reading and replacing the target inside a dataset item.

An item is a tuple/list (the target at an integer ``target_key``, 1 by default), a dict
(the target under a string key) or a bare input with no target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from lightning_al._ids import as_dataset_ids
from lightning_al.tasks.base import stack_or_list

if TYPE_CHECKING:
    from lightning_al.tasks import Task

Key = int | str


def read_target(item: Any, key: Key, index: int, task: Task | None = None) -> Tensor:
    """The label stored under ``key`` in ``item`` (the dataset item at ``index``), in the task's form."""
    try:
        if isinstance(item, Mapping) or (isinstance(item, Sequence) and not isinstance(item, str)):
            value = item[key]
        else:
            raise KeyError(key)
    except (KeyError, IndexError, TypeError):
        raise ValueError(
            f"Expected dataset item {index} to carry a target at key {key!r} for the simulated oracle, "
            f"but got a {type(item).__name__} without one. Set `target_key`, or label with another oracle."
        ) from None
    return _task(task).read_label(value, f"the target of dataset item {index} at key {key!r}")


def _task(task: Task | None) -> Task:
    from lightning_al.tasks import MultiClass

    return MultiClass() if task is None else task


def replace_target(item: Any, key: Key, label: Any) -> Any:
    """``item`` with its target under ``key`` set to ``label``.

    A tuple without a target at ``key`` gets it appended; a bare input becomes ``(input, label)``.
    """
    if isinstance(item, Mapping):
        return {**item, key: label}
    if not (isinstance(item, Sequence) and not isinstance(item, str)):
        item = (item,)
    if not isinstance(key, int) or not -len(item) <= key <= len(item):
        raise ValueError(
            f"Expected `target_key` to be an int index in [0, {len(item)}] for tuple items, but got {key!r}."
        )
    out = list(item)
    if key == len(out):
        out.append(label)
    else:
        out[key] = label
    return tuple(out)


def dataset_targets(dataset: Dataset, ids: Any, key: Key = 1, task: Task | None = None) -> Tensor | list[Tensor]:
    """The targets of ``dataset`` at ``ids`` in the task's form (fast path for a ``TensorDataset``).

    Args:
        dataset: a map-style dataset whose items carry their target.
        ids: ``k`` dataset indices.
        key: where the target sits in an item (tuple index or dict key).
        task: the task that reads the labels; default ``MultiClass()``.

    Returns:
        Single-label: ``LongTensor[k]``; multi-label: ``(k, L)``; segmentation: ``(k, H, W)`` masks (a list when
        sizes differ).
    """
    ids = as_dataset_ids("ids", ids, len(dataset))
    task = _task(task)
    if (
        isinstance(dataset, TensorDataset)
        and isinstance(key, int)
        and -len(dataset.tensors) <= key < len(dataset.tensors)
    ):
        targets = dataset.tensors[key]
        if task.name == "multiclass" and targets.ndim == 1 and not targets.is_floating_point():
            return targets[ids].to(torch.long).cpu()
        if task.name != "multiclass":
            return task.as_labels(targets[ids].cpu(), ids)
    labels = [read_target(dataset[i], key, i, task) for i in ids.tolist()]
    return stack_or_list(labels) if labels else task.as_labels([], ids)


def input_of(batch: Any, key: Key = 0, what: str = "model input", argument: str = "input_key") -> Any:
    """The field under ``key`` in a collated ``batch``: the model input, or with ``what="target"`` the target.

    ``what`` and ``argument`` (the `ActiveDataModule` argument that sets ``key``) only word the error raised
    when the field is missing.
    """
    try:
        return batch[key]
    except (KeyError, IndexError, TypeError):
        fields = (
            list(batch.keys())
            if isinstance(batch, Mapping)
            else f"{len(batch)} fields"
            if isinstance(batch, Sequence)
            else ""
        )
        raise ValueError(
            f"Expected the batch to hold the {what} at key {key!r}, but got a {type(batch).__name__} without it "
            f"({fields}). Set `{argument}` on the ActiveDataModule, or make `collate_fn` keep that field."
        ) from None
