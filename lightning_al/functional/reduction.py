r"""From per-unit scores to one score per sample: the units are the labels of a multi-label sample or the
pixels of a segmented image.

A multi-label sample is ``L`` independent Bernoulli variables, so every categorical kernel applies to each
label's two-class distribution `(1 - p_l, p_l)` (`bernoulli_as_categorical`): the entropy
becomes the binary entropy `-p \log p - (1 - p) \log (1 - p)`, BALD the Bernoulli mutual
information. A segmented image is ``H × W`` categorical variables. `reduce_units` then combines the
``U`` unit scores of a sample into one (Kampffmeyer et al. 2016 and Yang et al. 2017 average per-pixel
uncertainty over the image).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_al.functional._checks import _describe, as_count

REDUCTIONS = ("sum", "mean", "max", "topk_mean")


def bernoulli_as_categorical(probs_N_L: Tensor) -> Tensor:
    r"""``probs_N_L_2``: each label's Bernoulli probability `p` as the distribution `(1 - p, p)`.

    Works on any shape: the two-class axis is appended last (``(N, T, L)`` → ``(N, T, L, 2)``).

    Args:
        probs_N_L: ``(N, L)`` (or any shape) Bernoulli probabilities.

    Example:
        >>> bernoulli_as_categorical(torch.tensor([[0.25, 1.0]]))
        tensor([[[0.7500, 0.2500],
                 [0.0000, 1.0000]]])
    """
    if not isinstance(probs_N_L, Tensor) or not probs_N_L.is_floating_point():
        raise TypeError(f"Expected `probs_N_L` to be a floating-point tensor, but got {_describe(probs_N_L)}.")
    return torch.stack([1 - probs_N_L, probs_N_L], dim=-1)


def reduce_units(
    scores_N_U: Tensor, reduction: str = "mean", valid_N_U: Tensor | None = None, top_k: int = 1
) -> Tensor:
    r"""One score per sample from the scores of its ``U`` units, over the valid units only.

    - ``"sum"``: `\sum_u s_u`; ``"mean"``: `\frac{1}{|V|}\sum_{u \in V} s_u`;
    - ``"max"``: `\max_{u \in V} s_u`;
    - ``"topk_mean"``: the mean of the ``min(top_k, |V|)`` largest valid scores.

    A sample without a valid unit scores 0 (it has nothing to learn from), so it is queried last among
    non-negative scores.

    Args:
        scores_N_U: per-unit scores, shape ``(N, U)``.
        reduction: one of ``"sum"``, ``"mean"``, ``"max"``, ``"topk_mean"``.
        valid_N_U: ``BoolTensor[N, U]``, False for units to ignore (e.g. an ``ignore_index`` region); None: all valid.
        top_k: units averaged by ``"topk_mean"``, ``>= 1``.

    Returns:
        Scores of shape ``(N,)`` in the dtype of ``scores_N_U``.

    Example:
        >>> scores = torch.tensor([[1.0, 2.0, 6.0], [4.0, 0.0, 0.0]])
        >>> valid = torch.tensor([[True, True, False], [True, True, True]])
        >>> reduce_units(scores, "mean", valid)
        tensor([1.5000, 1.3333])
        >>> reduce_units(scores, "topk_mean", top_k=2)
        tensor([4., 2.])
    """
    if not isinstance(scores_N_U, Tensor) or scores_N_U.ndim != 2 or not scores_N_U.is_floating_point():
        raise ValueError(
            f"Expected `scores_N_U` to be a floating tensor of shape (N, U), but got {_describe(scores_N_U)}."
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"Expected `reduction` to be one of {list(REDUCTIONS)}, but got {reduction!r}.")
    top_k = as_count("top_k", top_k)
    if top_k < 1:
        raise ValueError(f"Expected `top_k` to be at least 1, but got {top_k}.")
    if valid_N_U is not None:
        if not isinstance(valid_N_U, Tensor) or valid_N_U.dtype != torch.bool or valid_N_U.shape != scores_N_U.shape:
            raise ValueError(
                f"Expected `valid_N_U` to be a bool tensor of shape {tuple(scores_N_U.shape)}, "
                f"but got {_describe(valid_N_U)}."
            )
        valid_N_U = valid_N_U.to(scores_N_U.device)
    if valid_N_U is None:
        if reduction == "sum":
            return scores_N_U.sum(dim=1)
        if reduction == "mean":
            return scores_N_U.mean(dim=1)
        if reduction == "max":
            return scores_N_U.amax(dim=1)
        return scores_N_U.topk(min(top_k, scores_N_U.shape[1]), dim=1).values.mean(dim=1)
    count_N = valid_N_U.sum(dim=1)
    kept_N_U = scores_N_U.masked_fill(~valid_N_U, 0.0)
    if reduction == "sum":
        return kept_N_U.sum(dim=1)
    if reduction == "mean":
        return kept_N_U.sum(dim=1) / count_N.clamp(min=1)
    lowest = torch.finfo(scores_N_U.dtype).min
    if reduction == "max":
        return scores_N_U.masked_fill(~valid_N_U, lowest).amax(dim=1).masked_fill(count_N == 0, 0.0)
    k = min(top_k, scores_N_U.shape[1])
    top_N_K = scores_N_U.masked_fill(~valid_N_U, lowest).topk(k, dim=1).values
    taken_N_K = torch.arange(k, device=scores_N_U.device) < count_N[:, None]
    return top_N_K.masked_fill(~taken_N_K, 0.0).sum(dim=1) / count_N.clamp(min=1, max=k)
