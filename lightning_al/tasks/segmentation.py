"""Semantic segmentation: an ``H × W`` mask of class indices per image, softmax over classes per pixel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from lightning_al.functional.reduction import reduce_units
from lightning_al.tasks.base import Task, _shape, as_tensor_label, check_num_classes, stack_or_list

_REDUCTIONS = ("mean", "max", "topk_mean")


class MaskLabels:
    """The masks of the labelled images, by dataset id (only labelled images take memory).

    Args:
        masks: initial ``(H, W)`` masks by dataset id (copied).
    """

    def __init__(self, masks: dict[int, Tensor] | None = None) -> None:
        self.masks: dict[int, Tensor] = dict(masks or {})

    def __setitem__(self, ids: Tensor, labels: Tensor | list[Tensor]) -> None:
        for i, mask in zip(ids.tolist(), labels, strict=True):
            self.masks[i] = mask

    def __getitem__(self, index: int) -> Tensor:
        return self.masks[int(index)]

    def __len__(self) -> int:
        return len(self.masks)

    def clone(self) -> MaskLabels:
        """A new store holding the same masks (the dict is copied, the mask tensors are shared)."""
        return MaskLabels(self.masks)


class Segmentation(Task):
    """A mask of class indices per image; ``probs = softmax(logits, dim=1)`` of shape ``(N, C, H, W)``.

    Every pixel is a unit: a score kernel runs on each pixel's distribution and the image's score is the
    ``"mean"`` (default), ``"max"`` or ``"topk_mean"`` (mean of the ``top_k`` largest) over its pixels. Pixels
    outside a pool batch's valid region (the boolean field ``valid_key`` of the batch, e.g. a field of view or
    padding, when given) are left out. Mask pixels equal to ``ignore_index`` are not learned from and not
    measured. The model's embedding for core-set and the like is the head input (by default the input of the
    last ``nn.Conv2d``) averaged over pixels; BADGE uses the exact gradient of the mean pixel loss w.r.t. that
    layer's weight. Test metrics: ``test_miou`` (macro Jaccard index) and ``test_pixel_accuracy``.

    Args:
        num_classes: ``C``.
        ignore_index: mask value of unlabelled pixels (e.g. boundaries), or None.
        reduction: ``"mean"``, ``"max"`` or ``"topk_mean"`` over pixels.
        top_k: pixels averaged by ``"topk_mean"``.
        valid_key: field of pool batches holding a ``(B, H, W)`` bool mask of the pixels to score, or None.

    Reference: Yang et al. 2017, "Suggestive Annotation: A Deep Active Learning Framework for Biomedical
    Image Segmentation"; Kampffmeyer et al. 2016 (per-pixel uncertainty averaged over the image).
    """

    name = "segmentation"
    metric = "test_miou"
    head_types = (nn.Conv2d, nn.Linear)
    factorised_gradients = False

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        reduction: str = "mean",
        top_k: int = 100,
        valid_key: str | int | None = None,
    ) -> None:
        check_num_classes("num_classes", num_classes, minimum=2)
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ValueError(f"Expected `ignore_index` to be an int or None, but got {ignore_index!r}.")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(
                f"Expected `ignore_index` to lie outside the class ids [0, {num_classes}), but got {ignore_index}."
            )
        if reduction not in _REDUCTIONS:
            raise ValueError(f"Expected `reduction` to be one of {list(_REDUCTIONS)}, but got {reduction!r}.")
        check_num_classes("top_k", top_k)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reduction, self.top_k, self.valid_key = reduction, top_k, valid_key
        fits_uint8 = num_classes <= 256 and (ignore_index is None or 0 <= ignore_index <= 255)
        self._dtype = torch.uint8 if fits_uint8 else torch.int32

    def probs(self, logits: Any) -> Tensor:
        if not isinstance(logits, Tensor) or logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"Expected the model's forward to return logits of shape (B, {self.num_classes}, H, W) for "
                f"{self!r}, but got {_shape(logits)}."
            )
        return torch.softmax(logits.float(), dim=1)

    def units(self, probs: Tensor) -> Tensor:
        return probs.flatten(2).transpose(1, 2)  # (N, H*W, C)

    def mc_units(self, mc_probs: Tensor) -> Tensor:
        return mc_probs.flatten(3).permute(0, 3, 1, 2)  # (N, H*W, T, C)

    def mc_in_place(self, mc_probs: Tensor) -> Tensor:
        return mc_probs  # (N, T, C, H, W)

    def reduce(self, scores_N_U: Tensor, valid_N_U: Tensor | None = None) -> Tensor:
        return reduce_units(scores_N_U, self.reduction, valid_N_U, self.top_k)

    def predicted(self, probs: Tensor) -> Tensor:
        return probs.argmax(dim=1).to(self._dtype)

    def embeddings(self, features: Tensor) -> Tensor:
        return features.flatten(2).mean(dim=2) if features.ndim > 2 else features

    def gradient_embeddings(self, probs: Tensor, features: Tensor) -> Tensor:
        r"""``(B, C * D)``: `\frac{1}{HW}\sum_{hw} (p_{hw} - e_{\hat y_{hw}}) \otimes h_{hw}`, the gradient of the
        mean pixel cross-entropy under the predicted mask w.r.t. a 1×1 head's weight (BADGE, Ash et al. 2020)."""
        if features.ndim != 4 or features.shape[2:] != probs.shape[2:]:
            raise ValueError(
                f"Expected the head's input to be (B, D, H, W) features at the logits' resolution "
                f"{tuple(probs.shape[2:])} for BADGE on {self!r}, but got {_shape(features)}. Set `embedding_layer` "
                "to the layer before a 1x1 head."
            )
        onehot = nn.functional.one_hot(probs.argmax(dim=1), self.num_classes).permute(0, 3, 1, 2).to(probs.dtype)
        residual = (probs - onehot).flatten(2)
        grads_B_C_D = torch.einsum("bcu,bdu->bcd", residual, features.flatten(2).to(probs.dtype)) / residual.shape[2]
        return grads_B_C_D.flatten(1)

    # ----- labels -----------------------------------------------------------------------------
    def read_label(self, value: Any, where: str) -> Tensor:
        mask = as_tensor_label(value, where)
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        return self._checked(mask, where)

    def _checked(self, mask: Tensor, where: str) -> Tensor:
        if mask.ndim != 2 or mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
            raise ValueError(
                f"Expected {where} to be an (H, W) mask of integer class ids, but got shape {tuple(mask.shape)} "
                f"and dtype {mask.dtype}."
            )
        mask = mask.long()
        bad = (mask < 0) | (mask >= self.num_classes)
        if self.ignore_index is not None:
            bad &= mask != self.ignore_index
        if bad.any():
            ignore = f" or the ignore_index {self.ignore_index}" if self.ignore_index is not None else ""
            raise ValueError(
                f"Expected {where} to hold class ids in [0, {self.num_classes}){ignore}, but got values "
                f"{mask[bad].unique()[:10].tolist()}."
            )
        return mask.to(self._dtype)

    def as_labels(self, labels: Any, ids: Tensor) -> Tensor | list[Tensor]:
        if isinstance(labels, Tensor) and labels.ndim == 2 and ids.numel() == 1:
            labels = labels.unsqueeze(0)
        if len(labels) != ids.numel():
            raise ValueError(f"Expected `labels` to hold one mask per id ({ids.numel()}), but got {len(labels)}.")
        masks = [
            self._checked(as_tensor_label(mask, f"the mask of id {i}"), f"the mask of id {i}")
            for i, mask in zip(ids.tolist(), labels, strict=True)
        ]
        return stack_or_list(masks)

    def check_fits(self, labels: Tensor | list[Tensor], ids: Tensor, item: Callable[[int], Any]) -> None:
        """Each mask must have its image's height and width (the last two axes of the item's input)."""
        for i, mask in zip(ids.tolist(), labels, strict=True):
            image = item(i)
            image = image[0] if isinstance(image, tuple | list) and image else image
            image = image.get("image", image) if isinstance(image, dict) else image
            size = tuple(getattr(image, "shape", ())[-2:])
            if len(size) == 2 and tuple(mask.shape) != size:
                raise ValueError(
                    f"Expected the mask of id {i} to have its image's size {size}, but got {tuple(mask.shape)}."
                )

    def empty_labels(self, size: int) -> MaskLabels:
        return MaskLabels()

    def training_target(self, label: Tensor) -> Tensor:
        return label.long()

    def labels_state(self, store: MaskLabels) -> dict[str, Any]:
        ids = sorted(store.masks)
        return {"ids": torch.tensor(ids, dtype=torch.long), "masks": [store.masks[i] for i in ids]}

    def labels_from_state(self, state: Any, labelled_ids: Tensor) -> MaskLabels:
        if not isinstance(state, dict) or set(state) != {"ids", "masks"}:
            raise ValueError(f"Expected saved masks as {{'ids', 'masks'}}, but got {type(state).__name__}.")
        ids = state["ids"]
        if not torch.equal(ids, labelled_ids):
            raise ValueError("Expected one saved mask per labelled id, but the saved masks name other ids.")
        masks = [
            self._checked(mask, f"the saved mask of id {i}")
            for i, mask in zip(ids.tolist(), state["masks"], strict=True)
        ]
        return MaskLabels(dict(zip(ids.tolist(), masks, strict=True)))

    def describe(self, labels: Tensor | list[Tensor]) -> list[Any]:
        """The class ids present in each mask."""
        return [[c for c in mask.unique().tolist() if c != self.ignore_index] for mask in labels]

    # ----- test metric ------------------------------------------------------------------------
    def metrics(self, probs: Tensor) -> dict[str, Metric]:
        return {
            "test_miou": MulticlassJaccardIndex(self.num_classes, ignore_index=self.ignore_index, average="macro"),
            "test_pixel_accuracy": MulticlassAccuracy(
                self.num_classes, ignore_index=self.ignore_index, average="micro", multidim_average="global"
            ),
        }

    def valid_region(self, batch: Any) -> Tensor | None:
        if self.valid_key is None:
            return None
        try:
            valid = batch[self.valid_key]
        except (KeyError, IndexError, TypeError):
            raise ValueError(
                f"Expected pool batches to hold the valid region at `valid_key` {self.valid_key!r}, but got a "
                f"{type(batch).__name__} without it."
            ) from None
        if not isinstance(valid, Tensor) or valid.dtype != torch.bool or valid.ndim != 3:
            raise ValueError(
                f"Expected the batch field {self.valid_key!r} to be a (B, H, W) bool mask, but got {_shape(valid)}."
            )
        return valid

    def __repr__(self) -> str:
        return (
            f"Segmentation(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}, top_k={self.top_k}, valid_key={self.valid_key!r})"
        )
