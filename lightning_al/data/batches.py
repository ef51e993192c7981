"""Batches that carry the dataset ids of their samples.

Every dataloader of `lightning_al.data.ActiveDataModule` yields the user's usual
batch (a tuple or a dict, so ``x, y = batch`` still works) with one extra attribute,
``batch.ids``: a ``LongTensor[B]`` of dataset indices. Callbacks use it to attribute
per-sample statistics; the ids follow the batch to the device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset, default_collate


class IndexedTuple(tuple):
    """A collated tuple batch with a ``.ids`` attribute."""

    ids: Tensor


class IndexedDict(dict):
    """A collated dict batch with a ``.ids`` attribute."""

    ids: Tensor


def with_ids(batch: Any, ids: Tensor) -> IndexedTuple | IndexedDict:
    """Return ``batch`` as an indexed batch whose ``ids`` attribute is ``ids``."""
    if isinstance(batch, Mapping):
        out: IndexedTuple | IndexedDict = IndexedDict(batch)
    elif isinstance(batch, Sequence) and not isinstance(batch, str):
        out = IndexedTuple(batch)
    else:
        out = IndexedTuple((batch,))
    out.ids = ids
    return out


def move_indexed_batch(batch: Any, device: torch.device) -> Any:
    """Move ``batch`` (and its ``ids``, if any) to ``device``."""
    moved = move_data_to_device(batch, device)
    ids = getattr(batch, "ids", None)
    return moved if ids is None else with_ids(moved, ids.to(device))


def keep_ids_through_input_conversion(trainer: Any) -> None:
    """Make ``trainer``'s precision plugin keep a batch's ``ids`` when it casts the batch's inputs.

    The ``"64-true"``, ``"16-true"`` and ``"bf16-true"`` precisions cast every floating tensor of a batch
    before any hook sees it, rebuilding its tuple or dict, which would drop the ids. Idempotent.
    """
    plugin = getattr(trainer, "precision_plugin", None)
    convert = getattr(plugin, "convert_input", None)
    if convert is None or getattr(convert, "keeps_ids", False):
        return

    def convert_keeping_ids(data: Any) -> Any:
        converted = convert(data)
        ids = getattr(data, "ids", None)
        return converted if ids is None or hasattr(converted, "ids") else with_ids(converted, ids)

    convert_keeping_ids.keeps_ids = True  # type: ignore[attr-defined]
    plugin.convert_input = convert_keeping_ids


def batch_ids(batch: Any) -> Tensor:
    """The dataset ids of ``batch``, or a clear error when the batch carries none."""
    ids = getattr(batch, "ids", None)
    if ids is None:
        raise ValueError(
            "Expected a batch from an ActiveDataModule dataloader carrying `ids`, but got a "
            f"{type(batch).__name__} without them. Pass the ActiveDataModule to the Trainer and do not "
            "rebuild the batch in `on_before_batch_transfer`."
        )
    return ids


def gathered_columns(dataset: Dataset, ids_B: Tensor) -> tuple[Tensor, ...] | None:
    """The items ``ids_B`` of ``dataset`` as columns ``(B, ...)``, one gather per field, or None if it cannot.

    A plain `torch.utils.data.TensorDataset` indexes each of its tensors; a dataset with a
    ``gather_columns(ids_B)`` method (e.g. the labelled set's relabelling view of one) answers itself.
    """
    if type(dataset).__getitem__ is TensorDataset.__getitem__:
        return tuple(tensor[ids_B] for tensor in dataset.tensors)  # type: ignore[attr-defined]
    gather = getattr(dataset, "gather_columns", None)
    return gather(ids_B) if gather is not None else None


class IdDataset(Dataset):
    """A view of ``dataset`` restricted to ``ids`` whose items are ``(item, dataset_id)``.

    The dataloader fetches a batch of positions at once through `__getitems__`: from a plain
    `torch.utils.data.TensorDataset` (or a view of one, see `gathered_columns`) it indexes every
    tensor with the batch's ids in one gather (the collated batch, without building ``B`` items);
    from a dataset with its own ``__getitems__`` it asks for all ids in one call.
    """

    def __init__(self, dataset: Dataset, ids: Tensor) -> None:
        self.dataset = dataset
        self.id_tensor = torch.as_tensor(ids, dtype=torch.long)
        self.ids = self.id_tensor.tolist()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, position: int) -> tuple[Any, int]:
        index = self.ids[position]
        return self.dataset[index], index

    def __getitems__(self, positions: list[int]) -> Sequence[tuple[Any, int]]:
        ids = [self.ids[position] for position in positions]
        ids_B = torch.tensor(ids, dtype=torch.long)
        columns = gathered_columns(self.dataset, ids_B)
        if columns is not None:
            return CollatedItems(columns, ids_B)
        fetch = getattr(self.dataset, "__getitems__", None)
        items = fetch(ids) if fetch is not None else [self.dataset[index] for index in ids]
        return list(zip(items, ids, strict=True))


class CollatedItems(Sequence):
    """A batch fetched already collated (``columns``: one tensor ``(B, ...)`` per field) that reads as ``(item, id)``
    pairs, so code expecting a list of items still works; `collate_with_ids` uses the columns as they are.

    ``ids`` is the ``LongTensor[B]`` of the batch's dataset ids.
    """

    def __init__(self, columns: tuple[Tensor, ...], ids: Tensor) -> None:
        self.columns, self.ids = columns, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, position: int) -> tuple[tuple[Tensor, ...], int]:  # type: ignore[override]
        return tuple(column[position] for column in self.columns), int(self.ids[position])


def collate_with_ids(
    items: Sequence[tuple[Any, int]], collate_fn: Callable[[list[Any]], Any] = default_collate
) -> IndexedTuple | IndexedDict:
    """Collate ``items``, ``(item, id)`` pairs, with ``collate_fn`` (the user's, or ``default_collate``) into a batch.

    The batch carries the ids as ``.ids``, a ``LongTensor[B]``. The batch ``collate_fn`` returns must be a
    tuple/list, a dict (e.g. a tokenizer's ``BatchEncoding``) or a single tensor, so that the ids can ride along.
    """
    if isinstance(items, CollatedItems) and collate_fn is default_collate:
        return with_ids(list(items.columns), items.ids)
    samples, ids = zip(*items, strict=True)
    batch = collate_fn(list(samples))
    if not isinstance(batch, Mapping | Sequence | Tensor) or isinstance(batch, str):
        raise TypeError(
            f"Expected `collate_fn` to return a tuple, list, dict or tensor batch, but got {type(batch).__name__}."
        )
    return with_ids(batch, torch.tensor(ids, dtype=torch.long))
