r"""Kernels of minimax active learning (MAL): the cosine classifier and the acquisition score.

Ebrahimi, Gan, Chen, Biamby, Salahi, Laielli, Zhu & Darrell 2021, "Minimax Active Learning"
(arXiv:2012.10467). A feature encoder `F` feeds an `\ell_2`-normalised feature to
a cosine classifier `C` with temperature `T`; the samples queried are "the highest
entropy samples from the classifier that the discriminator predicts as unlabeled".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_al.functional._checks import _describe, check_embeddings, check_probs, check_scores
from lightning_al.functional.uncertainty import entropy

# Norms below this count as zero when normalising (a zero feature gives zero logits, not NaN).
_NORM_EPS = 1e-12


def cosine_logits(features_B_D: Tensor, weight_C_D: Tensor, temperature: float) -> Tensor:
    r"""Logits of a cosine classifier: `\frac{1}{T}\,\frac{w_c^\top f}{\|w_c\|\,\|f\|}`.

    Each logit is the cosine similarity between the feature and a class prototype (a row of
    the weight), divided by the temperature `T`, so every logit lies in
    `[-1/T, 1/T]` (Saito et al. 2019, "Semi-supervised Domain Adaptation via Minimax
    Entropy", eq. 1; MAL's classifier `C`).

    Args:
        features_B_D: features `f`, shape ``(B, D)``.
        weight_C_D: class prototypes `w_c`, shape ``(C, D)``.
        temperature: `T > 0`.

    Returns:
        Logits of shape ``(B, C)``.

    Example:
        >>> f = torch.tensor([[3.0, 4.0]])
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> cosine_logits(f, w, temperature=0.5)  # cosines 3/5 and 4/5, divided by 0.5
        tensor([[1.2000, 1.6000]])
    """
    check_embeddings("features_B_D", features_B_D, finite=False)
    check_embeddings("weight_C_D", weight_C_D, finite=False)
    if weight_C_D.shape[1] != features_B_D.shape[1]:
        raise ValueError(
            f"Expected `weight_C_D` to have {features_B_D.shape[1]} columns (the feature size), "
            f"but got {_describe(weight_C_D)}."
        )
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
        raise ValueError(f"Expected `temperature` to be a float > 0, but got {temperature!r}.")
    unit_f = F.normalize(features_B_D, dim=1, eps=_NORM_EPS)
    unit_w = F.normalize(weight_C_D, dim=1, eps=_NORM_EPS)
    return unit_f @ unit_w.T / temperature


def mal_score(probs_N_C: Tensor, unlabelled_prob_N: Tensor, threshold: float = 0.5) -> Tensor:
    r"""MAL acquisition score: entropy, for the samples the discriminator calls unlabelled first.

    With `H(x) = -\sum_c p_c \log p_c` the classifier's entropy and `u(x)` the
    discriminator's probability that `x` is unlabelled,

        s(x) = H(x) - \mathbb{1}[u(x) < \tau]\,(\log C + 1).

    Since `0 \le H \le \log C`, every sample with `u \ge \tau` (the discriminator
    predicts "unlabelled": it is unlike the labelled set, the diversity criterion) ranks above
    every sample with `u < \tau`, and within each group the higher entropy (the
    uncertainty criterion) ranks first. The top ``k`` are thus the highest-entropy samples the
    discriminator predicts as unlabelled (the rule the paper's abstract states), topped up, when
    fewer than ``k`` are, by the highest-entropy rest. A candidate's score is its entropy in
    nats. ``threshold = 0`` reduces MAL's selection to entropy sampling.

    Args:
        probs_N_C: the classifier's softmax outputs, shape ``(N, C)``.
        unlabelled_prob_N: `u = 1 - D(F(x))`, shape ``(N,)``, in ``[0, 1]``.
        threshold: `\tau \in [0, 1]`; the paper's "predicts as unlabelled" is `\tau = 0.5`.

    Returns:
        Scores of shape ``(N,)`` (float64), higher = query first.

    Example:
        >>> probs = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.5, 0.5]])
        >>> mal_score(probs, torch.tensor([0.9, 0.8, 0.2]))  # the third is called labelled
        tensor([ 0.6931,  0.3251, -1.0000], dtype=torch.float64)
    """
    check_probs("probs_N_C", probs_N_C, ndim=2)
    check_scores("unlabelled_prob_N", unlabelled_prob_N)
    if unlabelled_prob_N.shape[0] != probs_N_C.shape[0]:
        raise ValueError(
            f"Expected `unlabelled_prob_N` to have {probs_N_C.shape[0]} rows (as `probs_N_C`), "
            f"but got {_describe(unlabelled_prob_N)}."
        )
    if unlabelled_prob_N.numel() and not ((unlabelled_prob_N >= 0).all() and (unlabelled_prob_N <= 1).all()):
        raise ValueError(
            "Expected `unlabelled_prob_N` to hold probabilities in [0, 1], but got values in "
            f"[{unlabelled_prob_N.min().item():.4g}, {unlabelled_prob_N.max().item():.4g}]."
        )
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise ValueError(f"Expected `threshold` to be a float in [0, 1], but got {threshold!r}.")
    entropy_N = entropy(probs_N_C.double())
    called_labelled_N = unlabelled_prob_N.to(entropy_N.device) < threshold
    return torch.where(called_labelled_N, entropy_N - (math.log(probs_N_C.shape[1]) + 1.0), entropy_N)
