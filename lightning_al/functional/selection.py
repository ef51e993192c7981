"""Turning scores into a query."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_al.functional._checks import as_count, check_scores


def topk_select(scores_N: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` highest scores, highest first; ties go to the lower position.

    The order is deterministic on every device: a stable descending sort keeps equal
    scores in their original order, so the same scores always give the same query.

    Args:
        scores_N: finite scores, shape ``(N,)``; higher = query first.
        k: how many to pick, ``1 <= k <= N``.

    Returns:
        ``LongTensor`` of shape ``(k,)`` with positions into ``scores_N``.

    Example:
        >>> topk_select(torch.tensor([0.1, 0.9, 0.5, 0.9]), 3)
        tensor([1, 3, 2])
    """
    check_scores("scores_N", scores_N)
    k = as_count("k", k)
    if not 1 <= k <= scores_N.shape[0]:
        raise ValueError(f"Expected `k` to be in [1, {scores_N.shape[0]}] (the number of scores), but got {k}.")
    order = torch.sort(scores_N, descending=True, stable=True).indices
    return order[:k]
