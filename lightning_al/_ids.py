"""Dataset ids: the one public identity of a sample, as a validated 1-D ``LongTensor``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

UNLABELLED = -1


def as_id_tensor(name: str, ids: Any) -> Tensor:
    """Convert ``ids`` (sequence or tensor of ints) to a 1-D ``LongTensor`` or raise a clear error."""
    tensor = ids if isinstance(ids, Tensor) else torch.as_tensor(list(ids) if not hasattr(ids, "__array__") else ids)
    if tensor.ndim != 1:
        raise ValueError(f"Expected `{name}` to be one-dimensional, but got shape {tuple(tensor.shape)}.")
    if tensor.numel() and (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool):
        raise TypeError(f"Expected `{name}` to hold integers, but got dtype {tensor.dtype}.")
    return tensor.to(device="cpu", dtype=torch.long)


def as_dataset_ids(name: str, ids: Any, size: int) -> Tensor:
    """``ids`` as a 1-D ``LongTensor`` of indices into a dataset of ``size`` samples, or a clear error."""
    ids = as_id_tensor(name, ids)
    unknown = ids[(ids < 0) | (ids >= size)]
    if unknown.numel():
        raise ValueError(
            f"Expected `{name}` to be dataset indices in [0, {size}), but got unknown ids {unknown[:10].tolist()}."
        )
    return ids
