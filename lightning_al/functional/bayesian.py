r"""Scores over ``T`` stochastic passes or committee members: the BALD family and query by committee.

Every kernel takes ``probs_N_T_C``: softmax outputs of ``N`` samples under ``T`` draws
of the model (MC dropout passes, ensemble or committee members, posterior samples),
over ``C`` classes. Every score is *higher = query first*, entropies are in nats, and
`0 \log 0 = 0`.

The sums are taken in float64 (float32 on MPS, which has no float64), a bounded number
of rows at a time so the upcast copy stays small on big pools; the scores come back in
the input's dtype, shape ``(N,)``.

Where a member's top probability is shared by several classes, its vote goes to the
lowest class index (``torch.argmax`` returns the first maximum), in every kernel that
counts votes.

References: Houlsby et al. 2011, "Bayesian Active Learning for Classification and
Preference Learning"; Gal, Islam & Ghahramani 2017, "Deep Bayesian Active Learning with
Image Data"; Freeman 1965, "Elementary Applied Statistics"; Kampffmeyer, Salberg &
Jenssen 2016, "Semantic Segmentation of Small Objects and Modeling of Uncertainty in
Urban Remote Sensing Images Using Deep Convolutional Neural Networks"; Dagan & Engelson
1995, "Committee-Based Sampling for Training Probabilistic Classifiers"; McCallum &
Nigam 1998, "Employing EM and Pool-Based Active Learning for Text Classification".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_al.functional._checks import check_probs

# Elements of one float64 working chunk (32 MiB); rows are processed this many at a time.
_CHUNK_ELEMENTS = 1 << 22


def _checked(probs_N_T_C: Tensor, name: str = "probs_N_T_C", units: bool = False) -> None:
    check_probs(name, probs_N_T_C, ndim=3, class_dim=2, extra_dims=units)
    if probs_N_T_C.shape[1] < 1:
        raise ValueError(
            f"Expected `{name}` to hold at least one pass or member (T >= 1), "
            f"but got a tensor of shape {tuple(probs_N_T_C.shape)}."
        )


def _rowwise(
    probs_N_T_C: Tensor, kernel: Callable[[Tensor], Tensor], name: str = "probs_N_T_C", units: bool = False
) -> Tensor:
    """Validate, then apply ``kernel`` to upcast chunks of rows; scores in the input's dtype, shape ``(N, *U)``.

    The private kernels below read the passes on axis 1 and the classes on axis 2, and keep any trailing
    unit axes ``U`` (pixels, labels) untouched; with ``units=False`` the input must be exactly ``(N, T, C)``.
    """
    _checked(probs_N_T_C, name, units)
    n = probs_N_T_C.shape[0]
    if n == 0:
        return probs_N_T_C.new_zeros((0, *probs_N_T_C.shape[3:]))
    wide = torch.float32 if probs_N_T_C.device.type == "mps" else torch.float64
    rows = max(1, _CHUNK_ELEMENTS // max(1, probs_N_T_C[0].numel()))
    scores = [kernel(chunk.to(wide)) for chunk in probs_N_T_C.split(rows)]
    return torch.cat(scores).to(probs_N_T_C.dtype)


def _entropy(probs: Tensor, dim: int) -> Tensor:
    """Entropy over the class axis ``dim``, ``0 log 0 = 0``."""
    return torch.special.entr(probs).sum(dim=dim)


def _vote_counts(probs_N_T_C: Tensor) -> Tensor:
    """``(N, C, *U)`` number of members whose argmax (first maximum on ties) is each class."""
    votes_N_T = probs_N_T_C.argmax(dim=2)
    shape = (probs_N_T_C.shape[0], probs_N_T_C.shape[2], *probs_N_T_C.shape[3:])
    counts_N_C = probs_N_T_C.new_zeros(shape)
    return counts_N_C.scatter_add_(1, votes_N_T, torch.ones_like(votes_N_T, dtype=counts_N_C.dtype))


def _bald(probs_N_T_C: Tensor) -> Tensor:
    mutual_information = _entropy(probs_N_T_C.mean(dim=1), 1) - _entropy(probs_N_T_C, 2).mean(dim=1)
    return mutual_information.clamp_min(0)


def _variation_ratio(probs_N_T_C: Tensor) -> Tensor:
    return 1 - _vote_counts(probs_N_T_C).amax(dim=1) / probs_N_T_C.shape[1]


def _mean_std(probs_N_T_C: Tensor) -> Tensor:
    # E_t[(p - E_t p)^2] equals E_t[p^2] - (E_t p)^2 but does not cancel catastrophically when members agree
    variance_N_C = (probs_N_T_C - probs_N_T_C.mean(dim=1, keepdim=True)).square().mean(dim=1)
    return variance_N_C.sqrt().mean(dim=1)


def _vote_entropy(probs_N_T_C: Tensor) -> Tensor:
    return _entropy(_vote_counts(probs_N_T_C) / probs_N_T_C.shape[1], 1)


def _kl_to_consensus(probs_N_T_C: Tensor) -> Tensor:
    consensus_N_1_C = probs_N_T_C.mean(dim=1, keepdim=True)
    # where p > 0 the consensus is >= p / T > 0, so every logarithm taken is finite
    kl_N_T = (torch.special.xlogy(probs_N_T_C, probs_N_T_C) - torch.special.xlogy(probs_N_T_C, consensus_N_1_C)).sum(2)
    return kl_N_T.mean(dim=1).clamp_min(0)


def _predictive_entropy(probs_N_T_C: Tensor) -> Tensor:
    return _entropy(probs_N_T_C.mean(dim=1), 1)


def _expected_entropy(probs_N_T_C: Tensor) -> Tensor:
    return _entropy(probs_N_T_C, 2).mean(dim=1)


def predictive_entropy(probs_N_T_C: Tensor) -> Tensor:
    r"""Entropy of the mean prediction `H[\bar p]`, `\bar p = \frac{1}{T}\sum_t p_t` ("Max Entropy").

    The ``(N, T, C)`` form of `lightning_al.functional.uncertainty.entropy`: high
    when the averaged prediction is uncertain, whatever the reason (Shannon 1948; Gal et
    al. 2017, "Deep Bayesian Active Learning with Image Data").

    Args:
        probs_N_T_C: softmax outputs, shape ``(N, T, C)``.

    Returns:
        Scores of shape ``(N,)`` in ``[0, \log C]``.

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]], [[1.0, 0.0], [1.0, 0.0]]])
        >>> predictive_entropy(probs)  # the first two average to uniform: ln 2
        tensor([0.6931, 0.6931, 0.0000])
    """
    return _rowwise(probs_N_T_C, _predictive_entropy)


def expected_entropy(probs_N_T_C: Tensor) -> Tensor:
    r"""Mean entropy of the members `\frac{1}{T}\sum_t H[p_t]` (the aleatoric part of `predictive_entropy`).

    Args:
        probs_N_T_C: softmax outputs, shape ``(N, T, C)``.

    Returns:
        Scores of shape ``(N,)`` in ``[0, \log C]``.

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]]])
        >>> expected_entropy(probs)  # confident members: 0; uniform members: ln 2
        tensor([0.0000, 0.6931])
    """
    return _rowwise(probs_N_T_C, _expected_entropy)


def bald(probs_N_T_C: Tensor) -> Tensor:
    r"""BALD: the mutual information between the label and the model, `H[\bar p] - \frac{1}{T}\sum_t H[p_t]`.

    High when the members are individually confident but disagree with each other
    (epistemic uncertainty). Equal to `kl_to_consensus`; round-off below 0 is clamped
    to 0 (Houlsby et al. 2011, "Bayesian Active Learning for Classification and Preference
    Learning"; Gal et al. 2017, "Deep Bayesian Active Learning with Image Data").

    Args:
        probs_N_T_C: softmax outputs, shape ``(N, T, C)``.

    Returns:
        Scores of shape ``(N,)`` in ``[0, \log \min(T, C)]``.

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]]])
        >>> bald(probs)  # confident disagreement: ln 2; agreeing (if unsure) members: 0
        tensor([0.6931, 0.0000])
    """
    return _rowwise(probs_N_T_C, _bald)


def variation_ratio(probs_N_T_C: Tensor) -> Tensor:
    r"""Variation ratio `1 - f_m / T`, where `f_m` counts the votes for the modal argmax class.

    Each member votes for its argmax class (the lowest index among tied maxima). Freeman
    1965, "Elementary Applied Statistics"; Gal et al. 2017, "Deep Bayesian Active Learning
    with Image Data".

    Args:
        probs_N_T_C: softmax outputs, shape ``(N, T, C)``.

    Returns:
        Scores of shape ``(N,)`` in ``[0, 1 - 1/\min(T, C)]``.

    Example:
        >>> probs = torch.tensor([[[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]])
        >>> variation_ratio(probs)  # 3 of 4 votes for class 0
        tensor([0.2500])
    """
    return _rowwise(probs_N_T_C, _variation_ratio)


def mean_std(probs_N_T_C: Tensor) -> Tensor:
    r"""Mean over classes of the spread across members, `\frac{1}{C}\sum_c \sqrt{E_t[p_c^2] - E_t[p_c]^2}`.

    The spread is the (population) standard deviation of each class probability over the
    ``T`` members. Its variance is computed as `E_t[(p_c - E_t p_c)^2]`: the same
    value, but never negative and free of the cancellation that leaves ~1e-8 of noise in
    the square root when members agree. Kampffmeyer, Salberg & Jenssen 2016, "Semantic
    Segmentation of Small Objects and Modeling of Uncertainty in Urban Remote Sensing
    Images Using Deep Convolutional Neural Networks".

    Args:
        probs_N_T_C: softmax outputs, shape ``(N, T, C)``.

    Returns:
        Scores of shape ``(N,)`` in ``[0, 1/2]``.

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.7, 0.3], [0.7, 0.3]]])
        >>> mean_std(probs)  # each class is 0 or 1 with equal odds: std 0.5
        tensor([0.5000, 0.0000])
    """
    return _rowwise(probs_N_T_C, _mean_std)


def vote_entropy(probs_N_T_C: Tensor) -> Tensor:
    r"""Entropy of the members' votes `-\sum_c \frac{V_c}{T} \log \frac{V_c}{T}`, `V_c` = votes for class c.

    Each member votes for its argmax class (the lowest index among tied maxima). Dagan &
    Engelson 1995, "Committee-Based Sampling for Training Probabilistic Classifiers".

    Args:
        probs_N_T_C: softmax outputs, shape ``(N, T, C)``.

    Returns:
        Scores of shape ``(N,)`` in ``[0, \log \min(T, C)]``.

    Example:
        >>> probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.9, 0.1], [0.6, 0.4]]])
        >>> vote_entropy(probs)  # a split vote: ln 2; a unanimous one: 0
        tensor([0.6931, 0.0000])
    """
    return _rowwise(probs_N_T_C, _vote_entropy)


def kl_to_consensus(probs_N_T_C: Tensor) -> Tensor:
    r"""Mean KL divergence of each member from the consensus, `\frac{1}{T}\sum_t KL(p_t \| \bar p)`.

    Mathematically equal to `bald`; round-off below 0 is clamped to 0. McCallum &
    Nigam 1998, "Employing EM and Pool-Based Active Learning for Text Classification".

    Args:
        probs_N_T_C: softmax outputs, shape ``(N, T, C)``.

    Returns:
        Scores of shape ``(N,)`` in ``[0, \log \min(T, C)]``.

    Example:
        >>> probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.7, 0.3], [0.7, 0.3]]])
        >>> kl_to_consensus(probs)
        tensor([0.6931, 0.0000])
    """
    return _rowwise(probs_N_T_C, _kl_to_consensus)


_UNIT_FORMS: dict[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] = {
    predictive_entropy: _predictive_entropy,
    expected_entropy: _expected_entropy,
    bald: _bald,
    variation_ratio: _variation_ratio,
    mean_std: _mean_std,
    vote_entropy: _vote_entropy,
    kl_to_consensus: _kl_to_consensus,
}


def per_unit(kernel: Callable[[Tensor], Tensor], probs_N_T_C_U: Tensor) -> Tensor | None:
    r"""A kernel of this module on every unit of ``probs_N_T_C_U``, shape ``(N, T, C, *U)`` → ``(N, *U)``.

    The units are trailing axes (the ``H × W`` pixels of a segmentation, the ``L`` labels of a multi-label
    sample as two-class Bernoullis), scored where they lie: no ``(N·U, T, C)`` copy is made, and each chunk
    of samples is upcast and reduced as in the ``(N, T, C)`` form, whose values it equals unit by unit.

    Returns:
        The scores, or None when ``kernel`` is not one of this module's (score it in the ``(N, T, C)`` form).

    Example:
        >>> p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[None, :, :, None].expand(1, 2, 2, 3)  # (N, T, C, U)
        >>> per_unit(bald, p)
        tensor([[0.6931, 0.6931, 0.6931]])
    """
    unit_form = _UNIT_FORMS.get(kernel)
    if unit_form is None:
        return None
    return _rowwise(probs_N_T_C_U, unit_form, "probs_N_T_C_U", units=True)
