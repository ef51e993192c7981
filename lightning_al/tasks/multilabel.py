"""Multi-label classification: ``L`` independent yes/no labels per sample, one sigmoid each."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score

from lightning_al.functional.reduction import bernoulli_as_categorical, reduce_units
from lightning_al.tasks.base import Task, _shape, as_tensor_label, check_num_classes

_REDUCTIONS = ("sum", "mean")


class MultiLabel(Task):
    """A 0/1 vector of ``L`` labels per sample; ``probs = sigmoid(logits)`` of shape ``(N, L)``.

    Each label is a Bernoulli unit seen as the two-class distribution ``(1 - p_l, p_l)``, so the entropy is
    the binary entropy, BALD the Bernoulli mutual information, and a sample's score is their ``"sum"`` over
    labels (the default: the entropy of the joint of independent labels, and an upper bound of the joint
    mutual information) or ``"mean"``. Labels are stored as ``uint8`` and reach training as float32 vectors
    (what ``binary_cross_entropy_with_logits`` takes). Test metrics: ``test_map`` (macro average
    precision) and ``test_f1`` (macro F1 at ``threshold``), torchmetrics' multilabel classes.

    Args:
        num_labels: ``L``.
        reduction: ``"sum"`` or ``"mean"`` over labels.
        threshold: probability above which a label counts as predicted (F1, suggestions, BADGE's labels).
    """

    name = "multilabel"
    metric = "test_map"

    def __init__(self, num_labels: int, reduction: str = "sum", threshold: float = 0.5) -> None:
        check_num_classes("num_labels", num_labels)
        if reduction not in _REDUCTIONS:
            raise ValueError(f"Expected `reduction` to be one of {list(_REDUCTIONS)}, but got {reduction!r}.")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold < 1:
            raise ValueError(f"Expected `threshold` to be a number in (0, 1), but got {threshold!r}.")
        self.num_classes = num_labels
        self.reduction, self.threshold = reduction, float(threshold)

    @property
    def num_labels(self) -> int:
        """``L``, the number of labels."""
        return int(self.num_classes)  # type: ignore[arg-type]

    def probs(self, logits: Any) -> Tensor:
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[1] != self.num_labels:
            raise ValueError(
                f"Expected the model's forward to return logits of shape (B, {self.num_labels}) for "
                f"{self!r}, but got {_shape(logits)}."
            )
        return torch.sigmoid(logits.float())

    def units(self, probs: Tensor) -> Tensor:
        return bernoulli_as_categorical(probs)

    def mc_units(self, mc_probs: Tensor) -> Tensor:
        return bernoulli_as_categorical(mc_probs).transpose(1, 2)

    def mc_in_place(self, mc_probs: Tensor) -> Tensor:
        return bernoulli_as_categorical(mc_probs).transpose(2, 3)  # (N, T, 2, L)

    def reduce(self, scores_N_U: Tensor, valid_N_U: Tensor | None = None) -> Tensor:
        return reduce_units(scores_N_U, self.reduction, valid_N_U)

    def predicted(self, probs: Tensor) -> Tensor:
        return (probs >= self.threshold).to(torch.uint8)

    def gradient_residuals(self, probs: Tensor) -> Tensor:
        """``sigmoid(z) - ŷ`` with ``ŷ = [p >= threshold]``: the BCE gradient w.r.t. the logits."""
        return probs - (probs >= self.threshold).to(probs.dtype)

    # ----- labels -----------------------------------------------------------------------------
    def read_label(self, value: Any, where: str) -> Tensor:
        label = as_tensor_label(value, where)
        return self._checked(label.unsqueeze(0), where)[0]

    def _checked(self, labels: Tensor, where: str) -> Tensor:
        if labels.ndim != 2 or labels.shape[1] != self.num_labels:
            raise ValueError(
                f"Expected {where} to be 0/1 vectors of {self.num_labels} labels, but got shape {tuple(labels.shape)}."
            )
        if labels.dtype == torch.bool:
            return labels.to(torch.uint8)
        bad = ~((labels == 0) | (labels == 1)).all(dim=1)
        if bad.any():
            row = int(bad.nonzero()[0])
            raise ValueError(f"Expected {where} to hold only 0 and 1, but row {row} is {labels[row].tolist()}.")
        return labels.to(torch.uint8)

    def as_labels(self, labels: Any, ids: Tensor) -> Tensor:
        if not isinstance(labels, Tensor):
            labels = (
                torch.stack([as_tensor_label(label, "`labels`") for label in labels])
                if len(labels)
                else (torch.zeros(0, self.num_labels, dtype=torch.uint8))
            )
        if labels.shape[:1] != ids.shape:
            raise ValueError(
                f"Expected `labels` to have one label vector per id ({ids.numel()}), "
                f"but got shape {tuple(labels.shape)}."
            )
        try:
            return self._checked(labels, "`labels`")
        except ValueError as error:
            raise ValueError(f"{error} (ids {ids[:10].tolist()})") from None

    def empty_labels(self, size: int) -> Tensor:
        return torch.zeros((size, self.num_labels), dtype=torch.uint8)  # unlabelled rows stay 0

    def training_target(self, label: Tensor) -> Tensor:
        return label.to(torch.float32)

    def training_targets(self, labels_B: Tensor) -> Tensor:
        """The 0/1 targets ``(B, num_labels)`` as float32."""
        return labels_B.to(torch.float32)

    def labels_from_state(self, state: Any, labelled_ids: Tensor) -> Tensor:
        if not isinstance(state, Tensor) or state.ndim != 2:
            raise ValueError(
                f"Expected saved multi-label labels of shape (N, {self.num_labels}), but got {_shape(state)}."
            )
        self._checked(state[labelled_ids], "the saved labels")
        return state.clone()

    def describe(self, labels: Tensor | list[Tensor]) -> list[Any]:
        """The indices of the positive labels of each sample."""
        return [row.nonzero().flatten().tolist() for row in labels]

    # ----- test metric ------------------------------------------------------------------------
    def metrics(self, probs: Tensor) -> dict[str, Metric]:
        return {
            "test_map": MultilabelAveragePrecision(self.num_labels, average="macro"),
            "test_f1": MultilabelF1Score(self.num_labels, threshold=self.threshold, average="macro"),
        }

    def __repr__(self) -> str:
        return f"MultiLabel(num_labels={self.num_labels}, reduction={self.reduction!r}, threshold={self.threshold})"
