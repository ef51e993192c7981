"""Single-label classification: one class index per sample, softmax over ``C`` classes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from lightning_al._ids import UNLABELLED, as_id_tensor
from lightning_al.functional._checks import as_count
from lightning_al.tasks.base import Kernel, Task, _shape, check_num_classes


class MultiClass(Task):
    """One class index in ``[0, C)`` per sample; ``probs = softmax(logits)`` of shape ``(N, C)``.

    The default task. Each sample is one unit, so every score is the kernel's own value. Test metric:
    ``test_accuracy`` (micro accuracy, torchmetrics ``MulticlassAccuracy``).

    Args:
        num_classes: number of classes; None infers it from the logits and accepts any index ``>= 0``.
    """

    name = "multiclass"
    metric = "test_accuracy"

    def __init__(self, num_classes: int | None = None) -> None:
        check_num_classes("num_classes", num_classes, optional=True)
        self.num_classes = num_classes

    def probs(self, logits: Any) -> Tensor:
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise ValueError(
                f"Expected the model's forward to return logits of shape (B, C), but got {_shape(logits)}."
            )
        return torch.softmax(logits.float(), dim=-1)

    def units(self, probs: Tensor) -> Tensor:
        return probs.unsqueeze(1)

    def mc_units(self, mc_probs: Tensor) -> Tensor:
        return mc_probs.unsqueeze(1)

    def score(self, kernel: Kernel, probs: Tensor, valid: Tensor | None = None) -> Tensor:
        return kernel(probs)

    def mc_score(self, kernel: Kernel, mc_probs: Tensor, valid: Tensor | None = None) -> Tensor:
        return kernel(mc_probs)

    def predicted(self, probs: Tensor) -> Tensor:
        return probs.argmax(dim=1)

    def gradient_residuals(self, probs: Tensor) -> Tensor:
        return probs - torch.nn.functional.one_hot(probs.argmax(dim=1), probs.shape[1]).to(probs.dtype)

    # ----- labels -----------------------------------------------------------------------------
    def read_label(self, value: Any, where: str) -> Tensor:
        if isinstance(value, Tensor):
            if value.numel() != 1 or value.is_floating_point():
                raise ValueError(
                    f"Expected {where} to be a single class index, but got a tensor of shape "
                    f"{tuple(value.shape)} and dtype {value.dtype}."
                )
            return torch.tensor(int(value))
        if hasattr(value, "dtype") and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"Expected {where} to be a class index, but got {value!r}.")
        return torch.tensor(value)

    def as_labels(self, labels: Any, ids: Tensor) -> Tensor:
        labels = as_id_tensor("labels", labels)
        if labels.shape != ids.shape:
            raise ValueError(
                f"Expected `labels` to have one label per id, shape {tuple(ids.shape)}, "
                f"but got shape {tuple(labels.shape)}."
            )
        self.check_labels(labels, ids)
        return labels

    def check_labels(self, labels: Tensor, ids: Tensor) -> None:
        """Raise unless ``labels`` (LongTensor) are class indices; ``ids`` name the samples in the message."""
        bad = (labels < 0) if self.num_classes is None else (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            allowed = "non-negative" if self.num_classes is None else f"in [0, {self.num_classes})"
            raise ValueError(
                f"Expected `labels` to be class indices {allowed}, but got {labels[bad][:10].tolist()} "
                f"for ids {ids[bad][:10].tolist()}."
            )

    def empty_labels(self, size: int) -> Tensor:
        return torch.full((size,), UNLABELLED, dtype=torch.long)

    def training_target(self, label: Tensor) -> int:
        return int(label)

    def training_targets(self, labels_B: Tensor) -> Tensor:
        """The class ids ``(B,)`` as int64, as ``default_collate`` makes of `training_target`'s ints."""
        return labels_B.to(torch.long)

    def labels_from_state(self, state: Any, labelled_ids: Tensor) -> Tensor:
        labels = as_id_tensor("labels", state)
        unlabelled = torch.ones(labels.shape[0], dtype=torch.bool)
        unlabelled[labelled_ids] = False
        if (labels[unlabelled] != UNLABELLED).any():
            raise ValueError("Expected rounds >= 0 for labelled samples and -1 (with label -1) for unlabelled ones.")
        self.check_labels(labels[labelled_ids], labelled_ids)
        return labels.clone()

    # ----- test metric ------------------------------------------------------------------------
    def metrics(self, probs: Tensor) -> dict[str, Metric]:
        num_classes = self.num_classes or as_count("num_classes", probs.shape[1])
        return {self.metric: MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
