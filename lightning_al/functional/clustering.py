r"""Weighted k-means and picking the sample nearest each centre (for Zhdanov 2019's diverse mini-batches).

Distances are accumulated in float64 and every ``N x K`` computation runs in row chunks,
so memory stays bounded on large pools.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_al.functional._checks import _describe, as_count, check_embeddings, check_finite, check_generator

# Float64 entries of one chunk of a pairwise table (8 MiB).
_CHUNK_ELEMENTS = 2**20


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

    Minimises `\sum_n w_n \min_k \|x_n - \mu_k\|^2`. Seeding draws the first centre
    with probability `\propto w_n` and each next one `\propto w_n d_n^2`
    (`d_n`: distance to the nearest centre so far; Arthur & Vassilvitskii 2007). Each
    Lloyd step assigns every point to its nearest centre (lowest index on ties) and moves
    each centre to the weighted mean `\mu_k = \sum_{n \in k} w_n x_n / \sum_{n \in k} w_n`.
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
    check_embeddings("embeddings_N_D", embeddings_N_D)
    num_points = embeddings_N_D.shape[0]
    _check_weights(weights_N, num_points)
    n_clusters = as_count("n_clusters", n_clusters)
    num_weighted = int((weights_N > 0).sum())
    if not 1 <= n_clusters <= num_weighted:
        raise ValueError(
            f"Expected `n_clusters` to be in [1, {num_weighted}] (the number of positively weighted points), "
            f"but got {n_clusters}."
        )
    check_generator(generator)
    n_iter = as_count("n_iter", n_iter)
    if n_iter < 1:
        raise ValueError(f"Expected `n_iter` to be at least 1, but got {n_iter}.")
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol >= 0:
        raise ValueError(f"Expected `tol` to be a non-negative number, but got {tol!r}.")
    if init_centres_K_D is not None:
        check_embeddings("init_centres_K_D", init_centres_K_D, n_clusters, "n_clusters")
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
    check_embeddings("embeddings_N_D", embeddings_N_D)
    check_embeddings("centres_K_D", centres_K_D)
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
