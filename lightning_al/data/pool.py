"""Bookkeeping of which samples are labelled, when, and with which label."""

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


class ActivePool:
    """Per-sample labelling state of a dataset of ``size`` samples, keyed by dataset index.

    For each sample the pool stores the round at which it was labelled (``-1`` while
    unlabelled) and the label it received, so the labelling history is never lost
    (a design borrowed from baal's ``ActiveLearningDataset``).

    Args:
        size: number of samples in the dataset.
        num_classes: if given, labels must lie in ``[0, num_classes)``.
    """

    def __init__(self, size: int, num_classes: int | None = None) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"Expected `size` to be a non-negative int, but got {size!r}.")
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(f"Expected `num_classes` to be a positive int or None, but got {num_classes!r}.")
        self.size = size
        self.num_classes = num_classes
        self.labelled_round = torch.full((size,), UNLABELLED, dtype=torch.long)
        self.labels = torch.full((size,), UNLABELLED, dtype=torch.long)

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
        return int(self.labelled_mask.sum())

    @property
    def num_unlabelled(self) -> int:
        return self.size - self.num_labelled

    def check_known(self, ids: Any, name: str = "ids") -> Tensor:
        """Return ``ids`` as a LongTensor after checking they index this pool's dataset."""
        return as_dataset_ids(name, ids, self.size)

    def check_unlabelled(self, ids: Any, name: str = "ids") -> Tensor:
        """Return ``ids`` as a LongTensor after checking they are known, unique and unlabelled."""
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

    def check_labels(self, labels: Tensor, ids: Tensor) -> None:
        """Raise unless ``labels`` (LongTensor) are class indices; ``ids`` name the samples in the message."""
        bad = (labels < 0) if self.num_classes is None else (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            allowed = "non-negative" if self.num_classes is None else f"in [0, {self.num_classes})"
            raise ValueError(
                f"Expected `labels` to be class indices {allowed}, but got {labels[bad][:10].tolist()} "
                f"for ids {ids[bad][:10].tolist()}."
            )

    def label(self, ids: Any, labels: Any, round: int) -> None:
        """Record ``labels`` for the unlabelled samples ``ids`` at ``round``.

        Everything is validated before anything changes: on any error the pool is untouched.
        """
        ids = self.check_unlabelled(ids)
        labels = as_id_tensor("labels", labels)
        if labels.shape != ids.shape:
            raise ValueError(
                f"Expected `labels` to have one label per id, shape {tuple(ids.shape)}, "
                f"but got shape {tuple(labels.shape)}."
            )
        self.check_labels(labels, ids)
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ValueError(f"Expected `round` to be a non-negative int, but got {round!r}.")
        self.labels[ids] = labels
        self.labelled_round[ids] = round

    def state_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "num_classes": self.num_classes,
            "labelled_round": self.labelled_round.clone(),
            "labels": self.labels.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
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
        labels = as_id_tensor("labels", state["labels"])
        if labelled_round.shape != (self.size,) or labels.shape != (self.size,):
            raise ValueError(f"Expected pool tensors of shape ({self.size},) in the state.")
        if state.get("num_classes", self.num_classes) != self.num_classes:
            raise ValueError(
                f"Expected a pool state for {self.num_classes} classes, but got one for {state['num_classes']}."
            )
        labelled = labelled_round != UNLABELLED
        if (labelled_round < UNLABELLED).any() or (labels[~labelled] != UNLABELLED).any():
            raise ValueError("Expected rounds >= 0 for labelled samples and -1 (with label -1) for unlabelled ones.")
        self.check_labels(labels[labelled], labelled.nonzero().flatten())
        self.labelled_round = labelled_round.clone()
        self.labels = labels.clone()
