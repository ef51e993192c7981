"""The task interface: what a label is, how logits become probabilities, how scores reduce per sample.

A task is given once, to the `lightning_al.data.ActiveDataModule`; the loop hands it to the
estimator (logits → probabilities), to the strategies (through `PoolOutputs.task`: per-unit scores →
one per sample), to the pool (label form and checks) and to the test pass (torchmetrics metrics). The
loop itself never branches on it. Strategies declare the task names they support in ``tasks``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_al.functional.bayesian import per_unit
from lightning_al.functional.reduction import reduce_units

# Names of every task; a strategy or estimator whose ``tasks`` is this works for all of them.
ALL_TASKS = frozenset({"multiclass", "multilabel", "segmentation"})

# A categorical score kernel: (M, K) probabilities → (M,) scores, or (M, T, K) → (M,).
Kernel = Callable[[Tensor], Tensor]


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


class Task:
    """Base of the tasks; subclasses fill in every method.

    Shapes: ``probs`` is the task's natural layout (``(N, C)``, ``(N, L)``, ``(N, C, H, W)``), ``mc_probs`` the
    same with the ``T`` passes on axis 1. A *unit* is what one categorical distribution describes: the
    sample (multi-class), one label (multi-label, a Bernoulli seen as two classes) or one pixel.
    """

    name: ClassVar[str] = ""
    metric: ClassVar[str] = ""  # the history key of the main test metric (learning curves, progress line)
    head_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear,)  # layers whose input is the embedding
    # True: BADGE's gradient embedding is ``gradient_residuals(probs) ⊗ embedding``; False: the estimator
    # computes it whole (``gradient_embeddings``), e.g. summed over pixels.
    factorised_gradients: ClassVar[bool] = True
    num_classes: int | None = None

    # ----- probabilities and scores -----------------------------------------------------------
    def probs(self, logits: Any) -> Tensor:
        """Probabilities in the task's layout from the model's logits (validated)."""
        raise NotImplementedError

    def units(self, probs: Tensor) -> Tensor:
        """``(N, U, K)`` from ``probs``: one categorical distribution over ``K`` outcomes per unit."""
        raise NotImplementedError

    def mc_units(self, mc_probs: Tensor) -> Tensor:
        """``(N, U, T, K)`` from ``mc_probs``: the ``T`` passes of every unit."""
        raise NotImplementedError

    def mc_in_place(self, mc_probs: Tensor) -> Tensor:
        """``(N, T, K, *U)`` from ``mc_probs``: the ``K`` outcomes on axis 2, the units left where they lie."""
        raise NotImplementedError

    def reduce(self, scores_N_U: Tensor, valid_N_U: Tensor | None = None) -> Tensor:
        """``(N,)`` scores from the unit scores ``scores_N_U`` ``(N, U)``, counting only the units where
        ``valid_N_U`` ``(N, U)`` is True when given (see `lightning_al.functional.reduce_units`)."""
        return reduce_units(scores_N_U, "mean", valid_N_U)

    def score(self, kernel: Kernel, probs: Tensor, valid: Tensor | None = None) -> Tensor:
        """``kernel`` (an ``(M, K) → (M,)`` score) on every unit of ``probs``, reduced to ``(N,)`` over the ``valid``
        units (all when None)."""
        return self._reduced(kernel, self.units(probs), valid)

    def mc_score(self, kernel: Kernel, mc_probs: Tensor, valid: Tensor | None = None) -> Tensor:
        """``kernel`` (an ``(M, T, K) → (M,)`` score) on every unit's passes in ``mc_probs``, reduced to ``(N,)``
        over the ``valid`` units (all when None).

        The kernels of `lightning_al.functional.bayesian` run on the units where they lie
        (`lightning_al.functional.bayesian.per_unit`: no ``(N·U, T, K)`` copy); any other kernel gets
        the ``(N·U, T, K)`` form.
        """
        scores = per_unit(kernel, self.mc_in_place(mc_probs))
        if scores is None:
            return self._reduced(kernel, self.mc_units(mc_probs), valid)
        n = scores.shape[0]
        return self.reduce(scores.reshape(n, -1), None if valid is None else valid.reshape(n, -1))

    def _reduced(self, kernel: Kernel, units: Tensor, valid: Tensor | None) -> Tensor:
        n, u = units.shape[:2]
        scores_N_U = kernel(units.reshape(n * u, *units.shape[2:])).view(n, u)
        return self.reduce(scores_N_U, None if valid is None else valid.reshape(n, u))

    def predicted(self, probs: Tensor) -> Tensor:
        """The model's predicted labels for ``probs``, in the label form."""
        raise NotImplementedError

    # ----- features ---------------------------------------------------------------------------
    def embeddings(self, features: Tensor) -> Tensor:
        """``(B, D)`` sample embeddings from the features captured at the head's input."""
        return features.flatten(1)

    def gradient_residuals(self, probs: Tensor) -> Tensor:
        """``(N, R)`` from ``probs``: the last layer's loss gradient w.r.t. its output under the predicted labels.

        The gradient w.r.t. the weight is this residual ``⊗`` the embedding (BADGE: Ash et al. 2020, "Deep Batch
        Active Learning by Diverse, Uncertain Gradient Lower Bounds").
        """
        raise NotImplementedError

    def gradient_embeddings(self, probs: Tensor, features: Tensor) -> Tensor:
        """``(B, E)`` BADGE gradient embeddings from ``probs`` and the head's input ``features``."""
        raise NotImplementedError

    # ----- labels -----------------------------------------------------------------------------
    def read_label(self, value: Any, where: str) -> Tensor:
        """``value`` as one label as the task stores it; ``where`` names it in errors ("dataset item 3 at key 1")."""
        raise NotImplementedError

    def as_labels(self, labels: Any, ids: Tensor) -> Tensor | list[Tensor]:
        """``labels`` for ``ids``, one per id (a stacked tensor or a list), validated; nothing is stored."""
        raise NotImplementedError

    def empty_labels(self, size: int) -> Any:
        """The pool's label store for ``size`` samples (supports ``store[ids] = labels`` and ``store[i]``)."""
        raise NotImplementedError

    def training_target(self, label: Tensor) -> Any:
        """What a training item carries as its target for the stored ``label``."""
        return label

    def training_targets(self, labels_B: Tensor) -> Tensor:
        """The collated targets of a batch of stored labels ``(B, ...)``: `training_target` of each, stacked."""
        return torch.stack([torch.as_tensor(self.training_target(label)) for label in labels_B])

    def labels_state(self, store: Any) -> Any:
        """The store as tensors and containers only (for ``torch.load(weights_only=True)``)."""
        return store.clone()

    def labels_from_state(self, state: Any, labelled_ids: Tensor) -> Any:
        """A store from ``state``, the output of `labels_state`, validated for ``labelled_ids``."""
        raise NotImplementedError

    def check_fits(self, labels: Tensor | list[Tensor], ids: Tensor, item: Callable[[int], Any]) -> None:
        """Refuse ``labels`` of ``ids`` that do not fit their sample ``item(id)`` (a mask of another size); no-op by
        default."""
        del labels, ids, item

    def describe(self, labels: Tensor | list[Tensor]) -> list[Any]:
        """``labels`` as plain Python values for logs and tables, one per sample."""
        return labels.tolist() if isinstance(labels, Tensor) else [label.tolist() for label in labels]

    # ----- test metric ------------------------------------------------------------------------
    def metrics(self, probs: Tensor) -> dict[str, Metric]:
        """Fresh torchmetrics metrics (history keys → metric) sized from a first batch of ``probs``."""
        raise NotImplementedError

    def metric_targets(self, targets: Tensor) -> Tensor:
        """A batch's targets in the form the metrics take."""
        return targets.long()

    # ----- pool inputs ------------------------------------------------------------------------
    def valid_region(self, batch: Any) -> Tensor | None:
        """``BoolTensor`` of the units to score in a pool batch (False: ignored), or None for all."""
        del batch
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and repr(other) == repr(self)

    def __hash__(self) -> int:
        return hash(repr(self))


def check_num_classes(name: str, value: Any, optional: bool = False, minimum: int = 1) -> None:
    """Refuse (`ValueError`) a ``value`` of ``name`` other than an int ``>= minimum`` (or None if ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = f"an int >= {minimum}{' or None' if optional else ''}"
        raise ValueError(f"Expected `{name}` to be {expected}, but got {value!r}.")


def as_tensor_label(value: Any, where: str) -> Tensor:
    """``value`` (tensor, numpy array, PIL image, nested list) as a tensor, or a clear error naming it ``where``."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    try:
        import numpy as np

        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError):
        kind = type(value).__name__
        raise ValueError(f"Expected {where} to be a tensor, an array or a list, but got {kind}.") from None


def stack_or_list(labels: Sequence[Tensor]) -> Tensor | list[Tensor]:
    """``labels`` as one stacked tensor when every label has the same shape, else as a list."""
    if labels and all(label.shape == labels[0].shape for label in labels):
        return torch.stack(list(labels))
    return list(labels)
