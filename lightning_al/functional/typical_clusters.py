r"""Typicality and TypiClust: the densest point of each uncovered cluster, for tiny labelling budgets.

Hacohen, Dekel & Weinshall 2022, "Active Learning on a Budget: Opposite Strategies Suit High and
Low Budgets" (ICML). With only a few labels, querying *typical* points (dense regions of the
data) beats querying uncertain ones. The typicality of a point `x` among points `X` is
the inverse mean distance to its `K` nearest neighbours in `X` (itself excluded):

    \mathrm{Typicality}(x) = \Big(\frac{1}{K} \sum_{x_i \in \mathrm{KNN}_K(x)} \lVert x - x_i \rVert_2\Big)^{-1}.

TypiClust clusters all points (labelled and not) with k-means into `|L| + B` clusters, then,
once per query slot, takes the cluster holding the fewest labelled points (ties → the largest
cluster) and queries its most typical unlabelled point, computed inside that cluster with
`K = \min(20, |\text{cluster}| - 1)`.

Memory: no ``N x N`` table is built. Typicality runs in row blocks of at most ``_CHUNK_ELEMENTS``
(rows x points) float64 entries, ``O(block + N * D)`` beyond the inputs; it is computed only for the
clusters actually visited, each against its own members.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_al.functional._checks import _describe, as_count, check_embeddings, check_generator
from lightning_al.functional.clustering import _squared_distances, weighted_kmeans
from lightning_al.functional.diversity import _check_mask

# Float64 entries of one (rows x points) block of squared distances (8 MiB). Tests shrink it.
_CHUNK_ELEMENTS = 2**20


@torch.no_grad()
def typicality(embeddings_N_D: Tensor, k_neighbours: int = 20) -> Tensor:
    r"""Inverse mean Euclidean distance to the ``K = min(k_neighbours, N - 1)`` nearest other points.

    Distances are float64, from `\lVert x \rVert^2 - 2 x \cdot y + \lVert y \rVert^2` clamped at 0,
    in row blocks (memory ``O(block)``, time ``O(N^2 D)``). A point whose ``K`` neighbours all coincide
    with it gets ``inf``; a lone point (``N = 1``, no neighbour) gets ``0``.

    Args:
        embeddings_N_D: ``(N, D)`` floating points, ``N >= 1``.
        k_neighbours: ``K`` before capping at ``N - 1``, at least 1.

    Returns:
        Float64 ``(N,)``, higher = more typical.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
        >>> typicality(x, k_neighbours=1)  # nearest neighbours at 1, 1, 1, 8
        tensor([1.0000, 1.0000, 1.0000, 0.1250], dtype=torch.float64)
    """
    check_embeddings("embeddings_N_D", embeddings_N_D)
    k_neighbours = as_count("k_neighbours", k_neighbours)
    if k_neighbours < 1:
        raise ValueError(f"Expected `k_neighbours` to be at least 1, but got {k_neighbours}.")
    num_points = embeddings_N_D.shape[0]
    if num_points == 0:
        raise ValueError(f"Expected `embeddings_N_D` to hold at least one point, but got {_describe(embeddings_N_D)}.")
    device = embeddings_N_D.device
    if num_points == 1:
        return torch.zeros(1, dtype=torch.float64, device=device)
    k = min(k_neighbours, num_points - 1)
    points_N_D = embeddings_N_D.to(torch.float64)
    sq_N = points_N_D.square().sum(1)
    out_N = torch.empty(num_points, dtype=torch.float64, device=device)
    rows = max(1, _CHUNK_ELEMENTS // num_points)
    for start in range(0, num_points, rows):
        stop = min(start + rows, num_points)
        sq_r_N = _squared_distances(points_N_D[start:stop], points_N_D, sq_N)
        local = torch.arange(stop - start, device=device)
        sq_r_N[local, local + start] = math.inf  # a point is not its own neighbour
        nearest_r_k = torch.topk(sq_r_N, k, dim=1, largest=False).values
        out_N[start:stop] = nearest_r_k.sqrt().mean(dim=1).reciprocal()
    return out_N


def _check_assignment(assignment_N: Tensor, num_points: int) -> Tensor:
    if not isinstance(assignment_N, Tensor):
        raise TypeError(f"Expected `assignment_N` to be a torch.Tensor, but got {_describe(assignment_N)}.")
    if assignment_N.is_floating_point() or assignment_N.is_complex() or assignment_N.dtype == torch.bool:
        raise TypeError(f"Expected `assignment_N` to hold integer cluster ids, but got {_describe(assignment_N)}.")
    if assignment_N.shape != (num_points,):
        raise ValueError(f"Expected `assignment_N` to have shape ({num_points},), but got {_describe(assignment_N)}.")
    if num_points and int(assignment_N.min()) < 0:
        raise ValueError(f"Expected `assignment_N` to be non-negative, but got minimum {int(assignment_N.min())}.")
    return assignment_N.long()


@torch.no_grad()
def typiclust_from_clusters(
    embeddings_N_D: Tensor,
    assignment_N: Tensor,
    labelled_mask_N: Tensor,
    k: int,
    k_neighbours: int = 20,
    min_cluster_size: int = 5,
) -> Tensor:
    r"""TypiClust's picks given a clustering: the most typical unlabelled point of the least covered cluster.

    For each of the ``k`` picks: among clusters with at least ``min_cluster_size`` points and an
    unlabelled point left, take the one with the fewest labelled points (earlier picks count as
    labelled), ties → the most points, then the lowest cluster id; query its unlabelled point of
    highest `typicality` among all of that cluster's points (labelled included, ``K =
    min(k_neighbours, size - 1)``), ties → lowest position. Clusters smaller than
    ``min_cluster_size`` are used only once every larger one is exhausted.

    Args:
        embeddings_N_D: ``(N, D)`` points, labelled and unlabelled.
        assignment_N: ``(N,)`` non-negative integer cluster id of every point.
        labelled_mask_N: ``(N,)`` bool, ``True`` for labelled points (never picked).
        k: number of picks, in ``[1, number of unlabelled points]``.
        k_neighbours: neighbours of the typicality, at least 1 (the paper: 20).
        min_cluster_size: clusters below this size are deferred (the paper: 5), at least 1.

    Returns:
        ``LongTensor[k]`` of row positions, in pick order.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [0.3], [5.0], [5.2], [9.0]])
        >>> clusters = torch.tensor([0, 0, 0, 1, 1, 2])
        >>> labelled = torch.tensor([True, False, False, False, False, False])
        >>> typiclust_from_clusters(x, clusters, labelled, 3, k_neighbours=1, min_cluster_size=2).tolist()
        [3, 1, 4]
    """
    check_embeddings("embeddings_N_D", embeddings_N_D)
    num_points = embeddings_N_D.shape[0]
    assignment_N = _check_assignment(assignment_N, num_points)
    _check_mask("labelled_mask_N", labelled_mask_N, num_points)
    k, k_neighbours, min_cluster_size = (
        as_count(name, v)
        for name, v in (("k", k), ("k_neighbours", k_neighbours), ("min_cluster_size", min_cluster_size))
    )
    if k_neighbours < 1:
        raise ValueError(f"Expected `k_neighbours` to be at least 1, but got {k_neighbours}.")
    if min_cluster_size < 1:
        raise ValueError(f"Expected `min_cluster_size` to be at least 1, but got {min_cluster_size}.")
    labelled_N = labelled_mask_N.to(assignment_N.device)
    num_unlabelled = num_points - int(labelled_N.sum())
    if not 1 <= k <= num_unlabelled:
        raise ValueError(f"Expected `k` to be in [1, {num_unlabelled}] (the number of unlabelled points), but got {k}.")

    num_clusters = int(assignment_N.max()) + 1
    size_C = torch.bincount(assignment_N, minlength=num_clusters)
    covered_C = torch.bincount(assignment_N[labelled_N], minlength=num_clusters)
    left_C = size_C - covered_C
    large_C = size_C >= min_cluster_size
    available_N = ~labelled_N
    typical: dict[int, tuple[Tensor, Tensor]] = {}  # cluster -> (member positions, their typicality)
    picks: list[int] = []
    for _ in range(k):
        open_C = left_C > 0
        if not (open_C & large_C).any():
            large_C = torch.ones_like(large_C)  # only small clusters are left
        # Lexicographic: fewest labelled, then largest, then lowest id (argmin takes the first minimum).
        key_C = covered_C.double() * (num_points + 1) - size_C.double()
        cluster = int(key_C.masked_fill(~(open_C & large_C), math.inf).argmin())
        if cluster not in typical:
            members = (assignment_N == cluster).nonzero().flatten()
            typical[cluster] = (members, typicality(embeddings_N_D[members], k_neighbours))
        members, scores = typical[cluster]
        pick = int(members[int(scores.masked_fill(~available_N[members], -math.inf).argmax())])
        picks.append(pick)
        available_N[pick] = False
        covered_C[cluster] += 1
        left_C[cluster] -= 1
    return torch.tensor(picks, dtype=torch.long, device=embeddings_N_D.device)


@torch.no_grad()
def typiclust(
    embeddings_N_D: Tensor,
    labelled_mask_N: Tensor,
    k: int,
    max_clusters: int = 500,
    k_neighbours: int = 20,
    min_cluster_size: int = 5,
    n_iter: int = 100,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""TypiClust (Hacohen et al. 2022): k-means into ``min(|L| + k, max_clusters, N)`` clusters, then
    `typiclust_from_clusters`.

    k-means is `lightning_al.functional.weighted_kmeans` with unit weights on all ``N``
    points (k-means++ seeding from ``generator``, at most ``n_iter`` Lloyd steps, each ``O(N K D)``
    time and ``O(block)`` memory). The paper caps the clusters at 500 (beyond, one more cluster per
    query hardly changes what is typical).

    Args:
        embeddings_N_D: ``(N, D)`` points, labelled and unlabelled.
        labelled_mask_N: ``(N,)`` bool, ``True`` for labelled points.
        k: number of picks, in ``[1, number of unlabelled points]``.
        max_clusters: cap on the number of clusters, at least 1.
        k_neighbours: neighbours of the typicality (see `typiclust_from_clusters`).
        min_cluster_size: clusters below this size are deferred (see `typiclust_from_clusters`).
        n_iter: maximum Lloyd steps of k-means.
        generator: randomness of the k-means++ seeding.

    Returns:
        ``LongTensor[k]`` of row positions, in pick order.
    """
    check_embeddings("embeddings_N_D", embeddings_N_D)
    num_points = embeddings_N_D.shape[0]
    _check_mask("labelled_mask_N", labelled_mask_N, num_points)
    k, max_clusters = as_count("k", k), as_count("max_clusters", max_clusters)
    if max_clusters < 1:
        raise ValueError(f"Expected `max_clusters` to be at least 1, but got {max_clusters}.")
    check_generator(generator)
    num_labelled = int(labelled_mask_N.sum())
    if not 1 <= k <= num_points - num_labelled:
        raise ValueError(
            f"Expected `k` to be in [1, {num_points - num_labelled}] (the number of unlabelled points), but got {k}."
        )
    n_clusters = min(num_labelled + k, max_clusters, num_points)
    weights_N = torch.ones(num_points, dtype=torch.float64, device=embeddings_N_D.device)
    _, assignment_N = weighted_kmeans(embeddings_N_D, weights_N, n_clusters, generator=generator, n_iter=n_iter)
    return typiclust_from_clusters(embeddings_N_D, assignment_N, labelled_mask_N, k, k_neighbours, min_cluster_size)
