"""Reading and replacing the target inside a dataset item.

An item is a tuple/list (the target at an integer ``target_key``, 1 by default), a dict
(the target under a string key) or a bare input with no target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from lightning_al.data.pool import as_dataset_ids

Key = int | str


def _as_class_index(value: Any, index: int, key: Key) -> int:
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_floating_point():
            raise ValueError(
                f"Expected the target of dataset item {index} at key {key!r} to be a single class index, "
                f"but got a tensor of shape {tuple(value.shape)} and dtype {value.dtype}."
            )
        return int(value)
    if hasattr(value, "dtype") and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"Expected the target of dataset item {index} at key {key!r} to be a class index, but got {value!r}."
        )
    return value


def read_target(item: Any, key: Key, index: int) -> int:
    """The class index stored under ``key`` in ``item`` (the dataset item at ``index``)."""
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
    return _as_class_index(value, index, key)


def replace_target(item: Any, key: Key, label: int) -> Any:
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


def dataset_targets(dataset: Dataset, ids: Any, key: Key = 1) -> Tensor:
    """``LongTensor`` of the targets of ``dataset`` at ``ids`` (fast path for ``TensorDataset``)."""
    ids = as_dataset_ids("ids", ids, len(dataset))
    if (
        isinstance(dataset, TensorDataset)
        and isinstance(key, int)
        and -len(dataset.tensors) <= key < len(dataset.tensors)
    ):
        targets = dataset.tensors[key]
        if targets.ndim == 1 and not targets.is_floating_point():
            return targets[ids].to(torch.long).cpu()
    return torch.tensor([read_target(dataset[i], key, i) for i in ids.tolist()], dtype=torch.long)


def input_of(batch: Any, key: Key = 0, what: str = "model input", argument: str = "input_key") -> Any:
    """The field under ``key`` in a collated ``batch``: the model input, or with ``what="target"`` the target."""
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
