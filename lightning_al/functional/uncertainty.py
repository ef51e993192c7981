"""Single-model uncertainty scores (Settles 2009, "Active Learning Literature Survey", §3.1).

Every score is *higher = query first*; entropies are in nats.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_al.functional._checks import check_probs


def least_confidence(probs_N_C: Tensor) -> Tensor:
    r"""Least-confidence score `1 - \max_c p(c \mid x)` (Lewis & Gale 1994, "A Sequential Algorithm for
    Training Text Classifiers").

    Args:
        probs_N_C: softmax outputs, shape ``(N, C)``.

    Returns:
        Scores of shape ``(N,)`` in ``[0, 1 - 1/C]``.

    Example:
        >>> least_confidence(torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]))
        tensor([0.3000, 0.5000])
    """
    check_probs("probs_N_C", probs_N_C, ndim=2)
    return 1 - probs_N_C.max(dim=-1).values


def margin(probs_N_C: Tensor) -> Tensor:
    r"""Margin score `1 - (p_{(1)} - p_{(2)})` from the two largest class probabilities.

    Small margins between the best and second-best class mean the model is torn between
    them, so they score high (Scheffer, Decomain & Wrobel 2001, "Active Hidden Markov Models for
    Information Extraction").

    Args:
        probs_N_C: softmax outputs, shape ``(N, C)`` with ``C >= 2``.

    Returns:
        Scores of shape ``(N,)`` in ``[0, 1]``.

    Example:
        >>> margin(torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]]))
        tensor([0.5000, 1.0000])
    """
    check_probs("probs_N_C", probs_N_C, ndim=2)
    if probs_N_C.shape[1] < 2:
        raise ValueError(f"Expected `probs_N_C` to have at least 2 classes, but got shape {tuple(probs_N_C.shape)}.")
    top2 = probs_N_C.topk(2, dim=-1).values
    return 1 - (top2[:, 0] - top2[:, 1])


def entropy(probs_N_C: Tensor) -> Tensor:
    r"""Predictive entropy `-\sum_c p_c \log p_c` in nats (Shannon 1948), with `0 \log 0 = 0`.

    Args:
        probs_N_C: softmax outputs, shape ``(N, C)``.

    Returns:
        Scores of shape ``(N,)`` in ``[0, \log C]``.

    Example:
        >>> entropy(torch.full((1, 4), 0.25))  # uniform over 4 classes: ln 4
        tensor([1.3863])
    """
    check_probs("probs_N_C", probs_N_C, ndim=2)
    return -torch.special.xlogy(probs_N_C, probs_N_C).sum(dim=-1)
