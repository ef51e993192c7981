r"""Hybrid kernels that mix a model's predictions with the geometry of its embeddings.

- :func:`cal_scores`: contrastive examples (Margatina et al. 2021).
- :func:`weighted_kmeans` and :func:`nearest_to_centres`: diverse mini-batches by
  weighted k-means (Zhdanov 2019).
- :func:`max_cover_greedy`: representativeness by greedy max-cover (Yang et al. 2017).

Distances are accumulated in float64 and every ``N x M`` computation runs in row chunks,
so memory stays bounded on large pools.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_al.functional._checks import _describe, as_count, check_finite, check_probs

# Float64 entries of one chunk of a pairwise table (8 MiB).
_CHUNK_ELEMENTS = 2**20
# Inside logarithms, probabilities are clamped to at least this, so a zero never gives inf.
_LOG_EPS = 1e-12


def _check_embeddings(name: str, values: Tensor, num_rows: int | None = None, rows_of: str = "") -> None:
    """A finite floating 2-D tensor, with ``num_rows`` rows when given (to match ``rows_of``)."""
    if not isinstance(values, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {_describe(values)}.")
    if values.ndim != 2:
        raise ValueError(f"Expected `{name}` to have shape (N, D), but got {_describe(values)}.")
    if not values.is_floating_point():
        raise TypeError(f"Expected `{name}` to hold floating-point values, but got {_describe(values)}.")
    if num_rows is not None and values.shape[0] != num_rows:
        raise ValueError(f"Expected `{name}` to have {num_rows} rows (as `{rows_of}`), but got {_describe(values)}.")
    if values.numel():
        check_finite(name, values)


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


def _check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"Expected `generator` to be a torch.Generator or None, but got {type(generator).__name__}.")


def _squared_distances(rows_n_D: Tensor, centres_K_D: Tensor, centres_sq_K: Tensor | None = None) -> Tensor:
    """Float64 squared Euclidean distances, shape ``(n, K)``, clamped at zero.

    Pass float64 ``centres_K_D`` and their squared norms ``centres_sq_K`` to reuse them across chunks.
    """
    rows = rows_n_D.to(torch.float64)
    centres = centres_K_D.to(torch.float64)
    if centres_sq_K is None:
        centres_sq_K = centres.square().sum(1)
    sq = torch.addmm(centres_sq_K, rows, centres.T, alpha=-2).add_(rows.square().sum(1, keepdim=True))
    return sq.clamp_min_(0)


def _nearest(points_N_D: Tensor, centres_K_D: Tensor) -> tuple[Tensor, Tensor]:
    """Per point, the nearest centre (lowest index on ties) and its squared distance, chunked over points."""
    num_points = points_N_D.shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, centres_K_D.shape[0]))
    index_N = torch.empty(num_points, dtype=torch.long, device=points_N_D.device)
    sq_N = torch.empty(num_points, dtype=torch.float64, device=points_N_D.device)
    for start in range(0, num_points, chunk):
        sq_N[start : start + chunk], index_N[start : start + chunk] = _squared_distances(
            points_N_D[start : start + chunk], centres_K_D
        ).min(dim=1)
    return index_N, sq_N


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


def cal_scores(
    probs_pool_N_C: Tensor,
    embeddings_pool_N_D: Tensor,
    probs_labelled_M_C: Tensor,
    embeddings_labelled_M_D: Tensor,
    k_neighbours: int = 10,
) -> Tensor:
    r"""Contrastive active learning (CAL) score: disagreement with the nearest labelled neighbours.

    Margatina, Vernikos, Barrault & Aletras 2021, "Active Learning by Acquiring Contrastive
    Examples" (EMNLP). A *contrastive* candidate sits close to labelled points in embedding
    space yet is predicted differently. For candidate :math:`x_p` with its ``k`` nearest
    labelled neighbours :math:`x_l^{(1..k)}` (Euclidean distance between embeddings):

    .. math::
        s(x_p) = \frac{1}{k} \sum_{i=1}^{k} \mathrm{KL}\big(p(y \mid x_l^{(i)}) \,\|\, p(y \mid x_p)\big),

    the KL divergence from the *neighbour's* prediction to the *candidate's* (the direction
    of the paper). Probabilities are the model's predictions for both sets. Inside the log of
    the candidate's probabilities they are clamped to at least ``1e-12``, so a class the
    candidate rules out gives a large finite score instead of inf; terms with
    :math:`p(y \mid x_l) = 0` contribute 0. When fewer than ``k`` points are labelled, all are
    used. Neighbours come from ``torch.topk`` on the distances; ties at the k-th distance go
    to the lower labelled positions. Pool rows are processed in
    chunks, so memory is ``O(chunk x M)``.

    Args:
        probs_pool_N_C: softmax outputs for the pool, shape ``(N, C)``.
        embeddings_pool_N_D: pool embeddings, shape ``(N, D)``.
        probs_labelled_M_C: softmax outputs for the labelled set, shape ``(M, C)``, ``M >= 1``.
        embeddings_labelled_M_D: labelled embeddings, shape ``(M, D)``.
        k_neighbours: neighbours per candidate, at least 1.

    Returns:
        Float64 scores of shape ``(N,)`` in nats, higher = query first.

    Example:
        >>> pool_probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
        >>> pool_emb = torch.tensor([[0.0], [10.0]])
        >>> lab_probs = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
        >>> lab_emb = torch.tensor([[0.1], [9.9]])
        >>> cal_scores(pool_probs, pool_emb, lab_probs, lab_emb, k_neighbours=1)  # 0, KL(0.1,0.9 || 0.9,0.1)
        tensor([0.0000, 1.7578], dtype=torch.float64)
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
    _check_embeddings("embeddings_pool_N_D", embeddings_pool_N_D, num_pool, "probs_pool_N_C")
    _check_embeddings("embeddings_labelled_M_D", embeddings_labelled_M_D, num_labelled, "probs_labelled_M_C")
    if embeddings_labelled_M_D.shape[1] != embeddings_pool_N_D.shape[1]:
        raise ValueError(
            f"Expected `embeddings_labelled_M_D` to have {embeddings_pool_N_D.shape[1]} columns "
            f"(as `embeddings_pool_N_D`), but got {_describe(embeddings_labelled_M_D)}."
        )
    k_neighbours = as_count("k_neighbours", k_neighbours)
    if k_neighbours < 1:
        raise ValueError(f"Expected `k_neighbours` to be at least 1, but got {k_neighbours}.")
    k = min(k_neighbours, num_labelled)

    labelled = probs_labelled_M_C.to(torch.float64)
    # KL(q || p) = sum_c q log q - sum_c q log p; the first term depends on the neighbour only.
    neg_entropy_M = torch.special.xlogy(labelled, labelled).sum(dim=1)
    labelled_M_D = embeddings_labelled_M_D.to(torch.float64)
    labelled_sq_M = labelled_M_D.square().sum(1)
    out_N = torch.empty(num_pool, dtype=torch.float64, device=probs_pool_N_C.device)
    chunk = max(1, _CHUNK_ELEMENTS // num_labelled)
    for start in range(0, num_pool, chunk):
        stop = min(start + chunk, num_pool)
        sq_n_M = _squared_distances(embeddings_pool_N_D[start:stop], labelled_M_D, labelled_sq_M)
        neighbours_n_k = _k_nearest(sq_n_M, k)
        log_pool_n_C = probs_pool_N_C[start:stop].to(torch.float64).clamp_min(_LOG_EPS).log()
        mean_neighbour_n_C = labelled[neighbours_n_k].mean(dim=1)
        cross_n = (mean_neighbour_n_C * log_pool_n_C).sum(dim=1)
        out_N[start:stop] = neg_entropy_M[neighbours_n_k].mean(dim=1) - cross_n
    return out_N


# ----- weighted k-means ----------------------------------------------------------------------


def _check_weights(weights_N: Tensor, num_points: int) -> None:
    if not isinstance(weights_N, Tensor):
        raise TypeError(f"Expected `weights_N` to be a torch.Tensor, but got {_describe(weights_N)}.")
    if weights_N.shape != (num_points,):
        raise ValueError(f"Expected `weights_N` to have shape ({num_points},), but got {_describe(weights_N)}.")
    if not weights_N.is_floating_point():
        raise TypeError(f"Expected `weights_N` to hold floating-point weights, but got {_describe(weights_N)}.")
    check_finite("weights_N", weights_N)
    if (weights_N < 0).any():
        raise ValueError(f"Expected `weights_N` to be non-negative, but got minimum {float(weights_N.min()):.4g}.")


def _kmeans_plus_plus(points_N_D: Tensor, weights_N: Tensor, n_clusters: int, generator) -> Tensor:
    """Weighted k-means++ seeding: positions of ``n_clusters`` distinct seeds, each drawn with probability ∝ w d²."""
    num_points = points_N_D.shape[0]
    device = points_N_D.device
    chosen = torch.zeros(num_points, dtype=torch.bool, device=device)
    seeds = [int(torch.multinomial(weights_N, 1, generator=generator))]
    chosen[seeds[0]] = True
    min_sq_N = torch.full((num_points,), math.inf, dtype=torch.float64, device=device)
    for _ in range(1, n_clusters):
        _, sq_N = _nearest(points_N_D, points_N_D[seeds[-1]].unsqueeze(0))
        min_sq_N = torch.minimum(min_sq_N, sq_N)
        mass_N = (weights_N * min_sq_N).masked_fill(chosen, 0)
        if not mass_N.sum() > 0:  # every weighted point coincides with a seed: draw among the rest by weight
            mass_N = weights_N.masked_fill(chosen, 0)
        seeds.append(int(torch.multinomial(mass_N, 1, generator=generator)))
        chosen[seeds[-1]] = True
    return torch.tensor(seeds, dtype=torch.long, device=device)


def _weighted_means(
    points_N_D: Tensor, weights_N: Tensor, assignment_N: Tensor, n_clusters: int
) -> tuple[Tensor, Tensor]:
    """Per cluster, the float64 weighted sum of its points and its total weight, chunked over points."""
    num_points, dim = points_N_D.shape
    sums_K_D = torch.zeros(n_clusters, dim, dtype=torch.float64, device=points_N_D.device)
    mass_K = torch.zeros(n_clusters, dtype=torch.float64, device=points_N_D.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, dim))
    for start in range(0, num_points, chunk):
        w = weights_N[start : start + chunk]
        cluster = assignment_N[start : start + chunk]
        sums_K_D.index_add_(0, cluster, points_N_D[start : start + chunk].to(torch.float64) * w[:, None])
        mass_K.index_add_(0, cluster, w)
    return sums_K_D, mass_K


def weighted_kmeans(
    embeddings_N_D: Tensor,
    weights_N: Tensor,
    n_clusters: int,
    generator: torch.Generator | None = None,
    n_iter: int = 100,
    tol: float = 1e-8,
    init_centres_K_D: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Lloyd's k-means with sample weights, seeded by weighted k-means++.

    Minimises :math:`\sum_n w_n \min_k \|x_n - \mu_k\|^2`. Seeding draws the first centre
    with probability :math:`\propto w_n` and each next one :math:`\propto w_n d_n^2`
    (:math:`d_n`: distance to the nearest centre so far; Arthur & Vassilvitskii 2007). Each
    Lloyd step assigns every point to its nearest centre (lowest index on ties) and moves
    each centre to the weighted mean :math:`\mu_k = \sum_{n \in k} w_n x_n / \sum_{n \in k} w_n`.
    A cluster left with no weight is re-seeded, deterministically, at the positively weighted
    point farthest from its own centre (the next farthest for a second empty cluster, and
    so on). Iteration stops when the assignment repeats (then the centres are exactly the
    weighted means of the returned assignment), when no centre moves by more than
    ``sqrt(tol)`` times the data's weighted spread, or after ``n_iter`` steps. Zhdanov 2019,
    "Diverse mini-batch Active Learning", clusters the pool with weights = informativeness.

    Args:
        embeddings_N_D: points, shape ``(N, D)``.
        weights_N: non-negative weights, shape ``(N,)``; at least ``n_clusters`` must be positive.
        n_clusters: ``K``, at least 1.
        generator: randomness of the seeding.
        n_iter: maximum Lloyd steps, at least 1.
        tol: relative tolerance on the squared centre shift, ``>= 0``.
        init_centres_K_D: starting centres, shape ``(K, D)``, instead of k-means++ seeding
            (then ``generator`` is unused); e.g. to warm-start from the previous round.

    Returns:
        ``(centres_K_D, assignment_N)``: centres in the dtype of ``embeddings_N_D`` and, per
        point, the index of its nearest centre (``LongTensor``).

    Example:
        >>> points = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
        >>> centres, assignment = weighted_kmeans(points, torch.tensor([1.0, 3.0, 1.0, 1.0]), 2,
        ...                                       generator=torch.Generator().manual_seed(0))
        >>> sorted(centres.flatten().tolist()), assignment[0] == assignment[1]
        ([0.75, 10.5], tensor(True))
    """
    _check_embeddings("embeddings_N_D", embeddings_N_D)
    num_points = embeddings_N_D.shape[0]
    _check_weights(weights_N, num_points)
    n_clusters = as_count("n_clusters", n_clusters)
    num_weighted = int((weights_N > 0).sum())
    if not 1 <= n_clusters <= num_weighted:
        raise ValueError(
            f"Expected `n_clusters` to be in [1, {num_weighted}] (the number of positively weighted points), "
            f"but got {n_clusters}."
        )
    _check_generator(generator)
    n_iter = as_count("n_iter", n_iter)
    if n_iter < 1:
        raise ValueError(f"Expected `n_iter` to be at least 1, but got {n_iter}.")
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol >= 0:
        raise ValueError(f"Expected `tol` to be a non-negative number, but got {tol!r}.")
    if init_centres_K_D is not None:
        _check_embeddings("init_centres_K_D", init_centres_K_D, n_clusters, "n_clusters")
        if init_centres_K_D.shape[1] != embeddings_N_D.shape[1]:
            raise ValueError(
                f"Expected `init_centres_K_D` to have {embeddings_N_D.shape[1]} columns (as `embeddings_N_D`), "
                f"but got {_describe(init_centres_K_D)}."
            )

    weights = weights_N.to(torch.float64)
    positive_N = weights > 0
    total_sum_D, total_mass = _weighted_means(embeddings_N_D, weights, torch.zeros_like(weights, dtype=torch.long), 1)
    global_mean = total_sum_D / total_mass
    _, spread_N = _nearest(embeddings_N_D, global_mean)
    threshold = tol * float((weights * spread_N).sum() / total_mass)

    if init_centres_K_D is None:
        seeds_K = _kmeans_plus_plus(embeddings_N_D, weights, n_clusters, generator)
        centres_K_D = embeddings_N_D[seeds_K].to(torch.float64)
    else:
        centres_K_D = init_centres_K_D.to(device=embeddings_N_D.device, dtype=torch.float64)
    previous_N: Tensor | None = None
    for _ in range(n_iter):
        assignment_N, sq_N = _nearest(embeddings_N_D, centres_K_D)
        if previous_N is not None and torch.equal(assignment_N, previous_N):
            break
        previous_N = assignment_N
        sums_K_D, mass_K = _weighted_means(embeddings_N_D, weights, assignment_N, n_clusters)
        new_K_D = sums_K_D / mass_K.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
        empty = (mass_K <= 0).nonzero().flatten().tolist()
        if empty:
            # Farthest positively weighted points from their centres, lowest position first on ties.
            candidates_N = sq_N.masked_fill(~positive_N, -1.0)
            order = torch.sort(candidates_N, descending=True, stable=True).indices[: len(empty)]
            new_K_D[empty] = embeddings_N_D[order].to(torch.float64)
        shift = float((new_K_D - centres_K_D).square().sum(dim=1).max())
        centres_K_D = new_K_D
        if not empty and shift <= threshold:
            break
    assignment_N, _ = _nearest(embeddings_N_D, centres_K_D)
    return centres_K_D.to(embeddings_N_D.dtype), assignment_N


def nearest_to_centres(embeddings_N_D: Tensor, centres_K_D: Tensor) -> Tensor:
    r"""For each centre, the position of its nearest point; positions are distinct.

    Centres are served in order; a centre whose nearest point was already given to an
    earlier centre gets its nearest *unused* point instead. Ties go to the lower position.
    Euclidean distance, chunked over points (memory ``O(chunk x K)``).

    Args:
        embeddings_N_D: points, shape ``(N, D)``.
        centres_K_D: centres, shape ``(K, D)`` with ``K <= N``.

    Returns:
        ``LongTensor`` of shape ``(K,)`` with positions into ``embeddings_N_D``.

    Example:
        >>> points = torch.tensor([[0.0], [1.0], [5.0]])
        >>> nearest_to_centres(points, torch.tensor([[0.2], [0.1], [4.0]]))  # both first centres prefer 0
        tensor([0, 1, 2])
    """
    _check_embeddings("embeddings_N_D", embeddings_N_D)
    _check_embeddings("centres_K_D", centres_K_D)
    num_points, num_centres = embeddings_N_D.shape[0], centres_K_D.shape[0]
    if centres_K_D.shape[1] != embeddings_N_D.shape[1]:
        raise ValueError(
            f"Expected `centres_K_D` to have {embeddings_N_D.shape[1]} columns (as `embeddings_N_D`), "
            f"but got {_describe(centres_K_D)}."
        )
    if num_centres > num_points:
        raise ValueError(f"Expected at most {num_points} centres (the number of points), but got {num_centres}.")
    device = embeddings_N_D.device
    # Per centre, its nearest point overall (one chunked pass over the points).
    best_sq_K = torch.full((num_centres,), math.inf, dtype=torch.float64, device=device)
    best_K = torch.zeros(num_centres, dtype=torch.long, device=device)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, num_centres))
    for start in range(0, num_points, chunk):
        sq_K_n = _squared_distances(centres_K_D, embeddings_N_D[start : start + chunk])
        sq_K, arg_K = sq_K_n.min(dim=1)
        better = sq_K < best_sq_K  # strict: an equal distance later keeps the lower position
        best_sq_K = torch.where(better, sq_K, best_sq_K)
        best_K = torch.where(better, arg_K + start, best_K)
    used = torch.zeros(num_points, dtype=torch.bool, device=device)
    picks = best_K.tolist()
    for k, position in enumerate(picks):
        if used[position]:  # rare: recompute this centre's distances with the used points masked out
            _, sq_N = _nearest(embeddings_N_D, centres_K_D[k : k + 1])
            position = int(sq_N.masked_fill(used, math.inf).argmin())
            picks[k] = position
        used[position] = True
    return torch.tensor(picks, dtype=torch.long, device=device)


# ----- max-cover greedy -----------------------------------------------------------------------


def max_cover_greedy(
    similarity_source_N_D: Tensor,
    candidates_idx: Tensor,
    k: int,
    reference_idx: Tensor | None = None,
) -> Tensor:
    r"""Greedy maximisation of cosine representativeness (suggestive annotation).

    Yang, Zhang, Chen, Zhang & Chen 2017, "Suggestive Annotation: A Deep Active Learning
    Framework for Biomedical Image Segmentation" (MICCAI). How well a set :math:`S` stands
    in for a reference set :math:`R` is

    .. math::
        F(S) = \sum_{x \in R} \max_{s \in S} \cos(x, s),

    a monotone submodular (max-cover) function, so adding, one at a time, the candidate with
    the largest gain :math:`F(S \cup \{c\}) - F(S)` is within :math:`1 - 1/e` of the best
    set. A running vector :math:`m_x = \max_{s \in S} \cos(x, s)` makes each gain
    :math:`\sum_x \max(0, \cos(x, c) - m_x)` cost :math:`O(|R|)`; candidates are processed in
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
    _check_embeddings("similarity_source_N_D", similarity_source_N_D)
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
