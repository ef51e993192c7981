r"""Hybrid kernels that mix a model's predictions with the geometry of its embeddings.

- `cal_scores`: contrastive examples (Margatina et al. 2021); `cal_neighbour_count`: its
  budget-adaptive neighbour count.
- `max_cover_greedy`: representativeness by greedy max-cover (Yang et al. 2017).

Distances are accumulated in float64 and every ``N x M`` computation runs in row chunks,
so memory stays bounded on large pools.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_al.functional._checks import _describe, as_count, check_embeddings, check_probs
from lightning_al.functional.clustering import _squared_distances

# Float64 entries of one chunk of a pairwise table (8 MiB).
_CHUNK_ELEMENTS = 2**20
# Inside logarithms, probabilities are clamped to at least this, so a zero never gives inf.
_LOG_EPS = 1e-12
# Norms are clamped to at least this before dividing, so an all-zero embedding stays zero.
_NORM_EPS = 1e-12


def _check_positions(name: str, positions: Tensor, size: int) -> Tensor:
    """A 1-D integer tensor of distinct positions in ``[0, size)``, returned as int64."""
    if not isinstance(positions, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor of positions, but got {_describe(positions)}.")
    if positions.ndim != 1 or positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
        raise TypeError(f"Expected `{name}` to be a 1-D integer tensor, but got {_describe(positions)}.")
    positions = positions.long()
    if positions.numel() and (positions.min() < 0 or positions.max() >= size):
        raise ValueError(
            f"Expected `{name}` to hold positions in [0, {size}), but got values in "
            f"[{int(positions.min())}, {int(positions.max())}]."
        )
    if positions.unique().numel() != positions.numel():
        raise ValueError(f"Expected `{name}` to hold distinct positions, but got duplicates.")
    return positions


# ----- CAL ---------------------------------------------------------------------------------


def _k_nearest(sq_n_M: Tensor, k: int) -> Tensor:
    """Per row, the positions of the ``k`` smallest entries, shape ``(n, k)`` (order within a row unspecified).

    ``torch.topk`` finds the k-th smallest value; every entry below it is taken, and entries
    equal to it fill the remaining slots from the lowest position up, so ties never depend on
    the backend's topk order.
    """
    num_columns = sq_n_M.shape[1]
    if k == num_columns:
        return torch.arange(k, device=sq_n_M.device).expand(sq_n_M.shape[0], k)
    # One extra value shows whether the k-th smallest is tied with an entry left out.
    values_n_k1, positions_n_k1 = torch.topk(sq_n_M, k + 1, dim=1, largest=False, sorted=True)
    positions_n_k = positions_n_k1[:, :k]
    kth_n_1 = values_n_k1[:, k - 1 : k]
    tied = (values_n_k1[:, k] == values_n_k1[:, k - 1]).nonzero().flatten()
    if tied.numel():
        sq_t_M, kth_t_1 = sq_n_M[tied], kth_n_1[tied]
        below, at = sq_t_M < kth_t_1, sq_t_M == kth_t_1
        slots_t_1 = k - below.sum(dim=1, keepdim=True)
        chosen = below | (at & (at.cumsum(dim=1) <= slots_t_1))
        positions_n_k = positions_n_k.clone()
        positions_n_k[tied] = chosen.nonzero()[:, 1].view(-1, k)
    return positions_n_k


# The authors' neighbour count (``num_nei`` in their code), the cap of the budget-adaptive count.
CAL_NEIGHBOURS = 10
# Labels per class for each neighbour of the budget-adaptive count: 1 neighbour below 20 labels per
# class, the authors' 10 from 100 on.
_LABELS_PER_CLASS_PER_NEIGHBOUR = 10


def cal_neighbour_count(num_labelled: int, num_classes: int, max_neighbours: int = CAL_NEIGHBOURS) -> int:
    r"""Budget-adaptive CAL neighbour count: one neighbour per 10 labels per class, from 1 to ``max_neighbours``.

    ``k = min(max_neighbours, max(1, num_labelled // (10 · num_classes)))``: 1 below 20 labels
    per class, the authors' 10 (Margatina et al. 2021) from 100 labels per class on. With few
    labels per class, most of ``k`` fixed neighbours belong to other classes; their mixed
    predictions then make KL(neighbours ‖ candidate) largest for *confident* candidates
    (measured on digits at 20 labels: Spearman(score, max probability) +0.84 with 10
    neighbours, -0.99 with 1), and CAL queries the samples the model is surest of.

    Args:
        num_labelled: labelled samples ``M``, at least 1.
        num_classes: classes ``C``, at least 1.
        max_neighbours: the cap, at least 1.

    Returns:
        The neighbour count, an int in ``[1, max_neighbours]``.

    Example:
        >>> cal_neighbour_count(20, 10), cal_neighbour_count(450, 10), cal_neighbour_count(5000, 2)
        (1, 4, 10)
    """
    num_labelled = as_count("num_labelled", num_labelled)
    num_classes = as_count("num_classes", num_classes)
    max_neighbours = as_count("max_neighbours", max_neighbours)
    for name, value in (
        ("num_labelled", num_labelled),
        ("num_classes", num_classes),
        ("max_neighbours", max_neighbours),
    ):
        if value < 1:
            raise ValueError(f"Expected `{name}` to be at least 1, but got {value}.")
    return min(max_neighbours, max(1, num_labelled // (_LABELS_PER_CLASS_PER_NEIGHBOUR * num_classes)))


def _unit_rows(rows_n_D: Tensor) -> Tensor:
    """Float64 rows divided by their L2 norm (clamped at 1e-12, so an all-zero row stays zero)."""
    rows = rows_n_D.to(torch.float64)
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)


def cal_scores(
    probs_pool_N_C: Tensor,
    embeddings_pool_N_D: Tensor,
    probs_labelled_M_C: Tensor,
    embeddings_labelled_M_D: Tensor,
    k_neighbours: int | None = CAL_NEIGHBOURS,
    normalize: bool = False,
) -> Tensor:
    r"""Contrastive active learning (CAL) score: disagreement with the nearest labelled neighbours.

    Margatina, Vernikos, Barrault & Aletras 2021, "Active Learning by Acquiring Contrastive
    Examples" (EMNLP). A *contrastive* candidate sits close to labelled points in embedding
    space yet is predicted differently. For candidate `x_p` with its ``k`` nearest
    labelled neighbours `x_l^{(1..k)}` (Euclidean distance between embeddings, searched among
    the labelled samples only):

        s(x_p) = \frac{1}{k} \sum_{i=1}^{k} \mathrm{KL}\big(p(y \mid x_l^{(i)}) \,\|\, p(y \mid x_p)\big),

    the KL divergence from the *neighbour's* prediction to the *candidate's* (the direction
    of the paper). Probabilities are the model's predictions for both sets. Inside the log of
    the candidate's probabilities they are clamped to at least ``1e-12``, so a class the
    candidate rules out gives a large finite score instead of inf; terms with
    `p(y \mid x_l) = 0` contribute 0. When fewer than ``k`` points are labelled, all are
    used. Neighbours come from ``torch.topk`` on the distances; ties at the k-th distance go
    to the lower labelled positions. Pool rows are processed in
    chunks, so memory is ``O(chunk x M)``.

    With ``normalize=True`` every embedding is first divided by its L2 norm (an all-zero row
    stays zero), so neighbours are the nearest in angle; the authors' code does this before its
    kNN, and `lightning_al.strategies.CAL` does it by default. The kernel's own default keeps
    the caller's geometry.

    Args:
        probs_pool_N_C: softmax outputs for the pool, shape ``(N, C)``.
        embeddings_pool_N_D: pool embeddings, shape ``(N, D)``.
        probs_labelled_M_C: softmax outputs for the labelled set, shape ``(M, C)``, ``M >= 1``.
        embeddings_labelled_M_D: labelled embeddings, shape ``(M, D)``.
        k_neighbours: neighbours per candidate, at least 1; ``None`` takes
            `cal_neighbour_count` ``(M, C)``, one per 10 labels per class, between 1 and 10.
        normalize: L2-normalise the embeddings before the neighbour search.

    Returns:
        Float64 scores of shape ``(N,)`` in nats, higher = query first.

    Example:
        >>> pool_probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
        >>> pool_emb = torch.tensor([[0.0], [10.0]])
        >>> lab_probs = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
        >>> lab_emb = torch.tensor([[0.1], [9.9]])
        >>> cal_scores(pool_probs, pool_emb, lab_probs, lab_emb, k_neighbours=1)  # 0, KL(0.1,0.9 || 0.9,0.1)
        tensor([0.0000, 1.7578], dtype=torch.float64)
        >>> # in angle, (0, 10) is nearest to (0.1, 1); in raw distance, to (5, 8)
        >>> emb_2d, lab_2d = torch.tensor([[10.0, 0.0], [0.0, 10.0]]), torch.tensor([[5.0, 8.0], [0.1, 1.0]])
        >>> cal_scores(pool_probs, emb_2d, lab_probs, lab_2d, k_neighbours=1, normalize=True)
        tensor([0.0000, 1.7578], dtype=torch.float64)
        >>> cal_scores(pool_probs, emb_2d, lab_probs, lab_2d, k_neighbours=1)  # KL(0.5,0.5 || 0.9,0.1)
        tensor([0.0000, 0.5108], dtype=torch.float64)
    """
    check_probs("probs_pool_N_C", probs_pool_N_C, ndim=2)
    check_probs("probs_labelled_M_C", probs_labelled_M_C, ndim=2)
    num_pool, num_classes = probs_pool_N_C.shape
    num_labelled = probs_labelled_M_C.shape[0]
    if probs_labelled_M_C.shape[1] != num_classes:
        raise ValueError(
            f"Expected `probs_labelled_M_C` to have {num_classes} classes (as `probs_pool_N_C`), "
            f"but got {_describe(probs_labelled_M_C)}."
        )
    if num_labelled == 0:
        raise ValueError("Expected `probs_labelled_M_C` to have at least one labelled row, but got 0 rows.")
    check_embeddings("embeddings_pool_N_D", embeddings_pool_N_D, num_pool, "probs_pool_N_C")
    check_embeddings("embeddings_labelled_M_D", embeddings_labelled_M_D, num_labelled, "probs_labelled_M_C")
    if embeddings_labelled_M_D.shape[1] != embeddings_pool_N_D.shape[1]:
        raise ValueError(
            f"Expected `embeddings_labelled_M_D` to have {embeddings_pool_N_D.shape[1]} columns "
            f"(as `embeddings_pool_N_D`), but got {_describe(embeddings_labelled_M_D)}."
        )
    if not isinstance(normalize, bool):
        raise TypeError(f"Expected `normalize` to be a bool, but got {_describe(normalize)}.")
    if k_neighbours is None:
        k_neighbours = cal_neighbour_count(num_labelled, num_classes)
    k_neighbours = as_count("k_neighbours", k_neighbours)
    if k_neighbours < 1:
        raise ValueError(f"Expected `k_neighbours` to be at least 1, but got {k_neighbours}.")
    k = min(k_neighbours, num_labelled)

    labelled = probs_labelled_M_C.to(torch.float64)
    # KL(q || p) = sum_c q log q - sum_c q log p; the first term depends on the neighbour only.
    neg_entropy_M = torch.special.xlogy(labelled, labelled).sum(dim=1)
    labelled_M_D = _unit_rows(embeddings_labelled_M_D) if normalize else embeddings_labelled_M_D.to(torch.float64)
    labelled_sq_M = labelled_M_D.square().sum(1)
    out_N = torch.empty(num_pool, dtype=torch.float64, device=probs_pool_N_C.device)
    chunk = max(1, _CHUNK_ELEMENTS // num_labelled)
    for start in range(0, num_pool, chunk):
        stop = min(start + chunk, num_pool)
        pool_n_D = embeddings_pool_N_D[start:stop]
        if normalize:
            pool_n_D = _unit_rows(pool_n_D)
        sq_n_M = _squared_distances(pool_n_D, labelled_M_D, labelled_sq_M)
        neighbours_n_k = _k_nearest(sq_n_M, k)
        log_pool_n_C = probs_pool_N_C[start:stop].to(torch.float64).clamp_min(_LOG_EPS).log()
        mean_neighbour_n_C = labelled[neighbours_n_k].mean(dim=1)
        cross_n = (mean_neighbour_n_C * log_pool_n_C).sum(dim=1)
        out_N[start:stop] = neg_entropy_M[neighbours_n_k].mean(dim=1) - cross_n
    return out_N


# ----- max-cover greedy -----------------------------------------------------------------------


def max_cover_greedy(
    similarity_source_N_D: Tensor,
    candidates_idx: Tensor,
    k: int,
    reference_idx: Tensor | None = None,
) -> Tensor:
    r"""Greedy maximisation of cosine representativeness (suggestive annotation).

    Yang, Zhang, Chen, Zhang & Chen 2017, "Suggestive Annotation: A Deep Active Learning
    Framework for Biomedical Image Segmentation" (MICCAI). How well a set `S` stands
    in for a reference set `R` is

        F(S) = \sum_{x \in R} \max_{s \in S} \cos(x, s),

    a monotone submodular (max-cover) function, so adding, one at a time, the candidate with
    the largest gain `F(S \cup \{c\}) - F(S)` is within `1 - 1/e` of the best
    set. A running vector `m_x = \max_{s \in S} \cos(x, s)` makes each gain
    `\sum_x \max(0, \cos(x, c) - m_x)` cost `O(|R|)`; candidates are processed in
    chunks. Rows are L2-normalised inside (an all-zero row has cosine 0 with everything).
    Ties go to the earlier entry of ``candidates_idx``. In the paper the candidates are the most uncertain pool
    images and the reference set is the whole pool.

    Args:
        similarity_source_N_D: descriptors, shape ``(N, D)``.
        candidates_idx: distinct positions into the ``N`` axis to choose from, shape ``(Nc,)``.
        k: how many to choose, ``1 <= k <= Nc``.
        reference_idx: distinct positions of the reference set; ``None`` means all ``N`` rows.

    Returns:
        ``LongTensor`` of shape ``(k,)`` with positions into the ``N`` axis, in greedy order.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
        >>> max_cover_greedy(x, torch.tensor([0, 2, 4]), k=2)  # the middle first, then the worse-covered side
        tensor([4, 2])
    """
    check_embeddings("similarity_source_N_D", similarity_source_N_D)
    num_points = similarity_source_N_D.shape[0]
    candidates = _check_positions("candidates_idx", candidates_idx, num_points).to(similarity_source_N_D.device)
    k = as_count("k", k)
    if not 1 <= k <= candidates.numel():
        raise ValueError(f"Expected `k` to be in [1, {candidates.numel()}] (the number of candidates), but got {k}.")
    if reference_idx is None:
        reference = torch.arange(num_points, device=similarity_source_N_D.device)
    else:
        reference = _check_positions("reference_idx", reference_idx, num_points).to(similarity_source_N_D.device)
        if reference.numel() == 0:
            raise ValueError("Expected `reference_idx` to hold at least one position, but got none.")

    def unit(rows: Tensor) -> Tensor:
        rows = similarity_source_N_D[rows].to(torch.float64)
        return rows / rows.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)

    reference_R_D = unit(reference)
    num_reference = reference_R_D.shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // num_reference)
    # Keep the whole candidate x reference table when it is small; otherwise recompute it per chunk.
    cached = candidates.numel() <= 4 * chunk
    table = unit(candidates) @ reference_R_D.T if cached else None

    def similarities(start: int, stop: int) -> Tensor:
        if table is not None:
            return table[start:stop]
        return unit(candidates[start:stop]) @ reference_R_D.T

    running_max_R: Tensor | None = None
    available = torch.ones(candidates.numel(), dtype=torch.bool, device=candidates.device)
    picks: list[int] = []
    step_chunk = candidates.numel() if cached else chunk
    for _ in range(k):
        gains = torch.empty(candidates.numel(), dtype=torch.float64, device=candidates.device)
        for start in range(0, candidates.numel(), step_chunk):
            sims_c_R = similarities(start, start + step_chunk)
            if running_max_R is None:
                gains[start : start + step_chunk] = sims_c_R.sum(dim=1)
            else:
                gains[start : start + step_chunk] = (sims_c_R - running_max_R).clamp_min(0).sum(dim=1)
        best = int(gains.masked_fill(~available, -math.inf).argmax())  # first maximum: lowest position
        available[best] = False
        picks.append(best)
        chosen_R = similarities(best, best + 1)[0]
        running_max_R = chosen_R if running_max_R is None else torch.maximum(running_max_R, chosen_R)
    return candidates[torch.tensor(picks, dtype=torch.long, device=candidates.device)]
