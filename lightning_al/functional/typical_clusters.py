r"""Typicality and TypiClust: the densest point of each uncovered cluster, for tiny labelling budgets.

Hacohen, Dekel & Weinshall 2022, "Active Learning on a Budget: Opposite Strategies Suit High and
Low Budgets" (ICML). With only a few labels, querying *typical* points (dense regions of the
data) beats querying uncertain ones. The paper defines the typicality of a point `x` among points
`X` as the inverse mean distance to its `K` nearest neighbours in `X` (itself excluded):

    \mathrm{Typicality}(x) = \Big(\frac{1}{K} \sum_{x_i \in \mathrm{KNN}_K(x)} \lVert x - x_i \rVert_2\Big)^{-1};

the authors' code (github.com/avihu111/TypiClust, ``deep-al/pycls/al/typiclust.py``) averages
*squared* distances instead (what a faiss ``IndexFlatL2`` search returns). TypiClust here does
the same by default; ``squared_distances=False`` gives the paper's formula.

TypiClust clusters all points (labelled and not) with k-means into `|L| + B` clusters (at most
500), drops the clusters of fewer than 6 points, orders the others once — fewest labelled points
first, then the largest — and takes pick `i` from the `i`-th cluster of that order, cycling: the
most typical of the cluster's still unlabelled points, typicality computed among those points
only with `K = \min(20, \lfloor n / 2 \rfloor)` (`n` of them). These are the rules of the
authors' code; see `typiclust_from_clusters` for what happens where it would fail.

Memory: no ``N x N`` table is built. Typicality runs in row blocks of at most ``_CHUNK_ELEMENTS``
(rows x points) float64 entries, ``O(block + N * D)`` beyond the inputs; it is computed only for the
clusters actually visited, each against its own points.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_al.functional._checks import _describe, as_count, check_embeddings, check_generator
from lightning_al.functional.clustering import weighted_kmeans
from lightning_al.functional.diversity import _check_mask

# Float64 entries of one (rows x points) block of squared distances (8 MiB). Tests shrink it.
_CHUNK_ELEMENTS = 2**20


def _symmetric_squared_distances(rows_n_D: Tensor, points_M_D: Tensor) -> Tensor:
    """Float64 ``(n, M)`` squared distances from coordinate differences (symmetric to the last bit)."""
    return torch.cdist(rows_n_D, points_M_D, compute_mode="donot_use_mm_for_euclid_dist").square_()


@torch.no_grad()
def typicality(embeddings_N_D: Tensor, k_neighbours: int = 20, squared: bool = False) -> Tensor:
    r"""Inverse mean Euclidean distance to the ``K = min(k_neighbours, N - 1)`` nearest other points.

    Distances are float64, from coordinate differences, so ``d(x, y)`` and ``d(y, x)`` are the same
    number and mutual neighbours tie exactly; in row blocks (memory ``O(block)``, time
    ``O(N^2 D)``). With ``squared=True`` the mean is over
    squared distances (the authors' code). A point whose ``K`` neighbours all coincide with it
    gets ``inf``; a lone point (``N = 1``, no neighbour) gets ``0``.

    Args:
        embeddings_N_D: ``(N, D)`` floating points, ``N >= 1``.
        k_neighbours: ``K`` before capping at ``N - 1``, at least 1.
        squared: average squared distances instead of distances.

    Returns:
        Float64 ``(N,)``, higher = more typical.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
        >>> typicality(x, k_neighbours=1)  # nearest neighbours at 1, 1, 1, 8
        tensor([1.0000, 1.0000, 1.0000, 0.1250], dtype=torch.float64)
        >>> typicality(x, k_neighbours=2, squared=True)  # squared: (1, 4), (1, 1), (1, 4), (64, 81)
        tensor([0.4000, 1.0000, 0.4000, 0.0138], dtype=torch.float64)
    """
    check_embeddings("embeddings_N_D", embeddings_N_D)
    k_neighbours = as_count("k_neighbours", k_neighbours)
    if k_neighbours < 1:
        raise ValueError(f"Expected `k_neighbours` to be at least 1, but got {k_neighbours}.")
    if not isinstance(squared, bool):
        raise TypeError(f"Expected `squared` to be a bool, but got {squared!r}.")
    num_points = embeddings_N_D.shape[0]
    if num_points == 0:
        raise ValueError(f"Expected `embeddings_N_D` to hold at least one point, but got {_describe(embeddings_N_D)}.")
    device = embeddings_N_D.device
    if num_points == 1:
        return torch.zeros(1, dtype=torch.float64, device=device)
    k = min(k_neighbours, num_points - 1)
    points_N_D = embeddings_N_D.to(torch.float64)
    out_N = torch.empty(num_points, dtype=torch.float64, device=device)
    rows = max(1, _CHUNK_ELEMENTS // num_points)
    for start in range(0, num_points, rows):
        stop = min(start + rows, num_points)
        sq_r_N = _symmetric_squared_distances(points_N_D[start:stop], points_N_D)
        local = torch.arange(stop - start, device=device)
        sq_r_N[local, local + start] = math.inf  # a point is not its own neighbour
        nearest_r_k = torch.topk(sq_r_N, k, dim=1, largest=False).values
        out_N[start:stop] = (nearest_r_k if squared else nearest_r_k.sqrt()).mean(dim=1).reciprocal()
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


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be a bool, but got {value!r}.")
    return value


def _cluster_order(cluster_ids: Tensor, covered_C: Tensor, size_C: Tensor) -> list[int]:
    """``cluster_ids`` sorted by fewest labelled points, then most points, then lowest id."""
    return sorted(cluster_ids.tolist(), key=lambda c: (int(covered_C[c]), -int(size_C[c]), c))


@torch.no_grad()
def typiclust_from_clusters(
    embeddings_N_D: Tensor,
    assignment_N: Tensor,
    labelled_mask_N: Tensor,
    k: int,
    k_neighbours: int = 20,
    min_cluster_size: int = 6,
    squared_distances: bool = True,
) -> Tensor:
    r"""TypiClust's picks given a clustering, by the rules of the authors' code.

    The clusters with at least ``min_cluster_size`` points (labelled and unlabelled) are ordered
    once: fewest labelled points first, then the most points, then the lowest cluster id. Pick
    ``i`` comes from the next cluster of that order, cycling through it (the ``i``-th while
    ``k`` does not exceed their number), skipping clusters with no unlabelled point left. In the
    chosen cluster, the `typicality` of its ``n`` unlabelled, not yet picked points is computed
    among those points only, with ``K = min(k_neighbours, n // 2)`` (mean squared distance
    with ``squared_distances``, as the authors' code); the most typical is picked (ties → lowest
    position; a last remaining point is picked as it is).

    Where the authors' code would fail, once no cluster of ``min_cluster_size`` points has an
    unlabelled point left (or none has that size), the smaller clusters are used in the same
    way, in the same order.

    Args:
        embeddings_N_D: ``(N, D)`` points, labelled and unlabelled.
        assignment_N: ``(N,)`` non-negative integer cluster id of every point.
        labelled_mask_N: ``(N,)`` bool, ``True`` for labelled points (never picked).
        k: number of picks, in ``[1, number of unlabelled points]``.
        k_neighbours: cap on the neighbours of the typicality, at least 1 (the paper: 20).
        min_cluster_size: smallest cluster used while larger ones have points left, at least 1
            (the authors' code keeps clusters of more than 5 points: 6).
        squared_distances: typicality from mean squared distances (the authors' code) rather than
            mean distances (the paper's formula).

    Returns:
        ``LongTensor[k]`` of row positions, in pick order.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [0.3], [0.4], [5.0], [5.2], [9.0]])
        >>> clusters = torch.tensor([0, 0, 0, 0, 1, 1, 2])
        >>> labelled = torch.tensor([True, False, False, False, False, False, False])
        >>> typiclust_from_clusters(x, clusters, labelled, 4, min_cluster_size=2).tolist()
        [4, 2, 5, 1]
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
    squared_distances = _check_flag("squared_distances", squared_distances)
    labelled_N = labelled_mask_N.to(assignment_N.device)
    num_unlabelled = num_points - int(labelled_N.sum())
    if not 1 <= k <= num_unlabelled:
        raise ValueError(f"Expected `k` to be in [1, {num_unlabelled}] (the number of unlabelled points), but got {k}.")

    num_clusters = int(assignment_N.max()) + 1
    size_C = torch.bincount(assignment_N, minlength=num_clusters)
    covered_C = torch.bincount(assignment_N[labelled_N], minlength=num_clusters)
    present = (size_C > 0).nonzero().flatten()
    large = size_C[present] >= min_cluster_size
    orders = [_cluster_order(present[large], covered_C, size_C), _cluster_order(present[~large], covered_C, size_C)]
    left_C = (size_C - covered_C).tolist()
    available_N = ~labelled_N
    picks: list[int] = []
    tier, cursor = 0, 0
    while len(picks) < k:
        order = orders[tier]
        # The next cluster of this tier's order with an unlabelled point left, cycling; else the next tier.
        for step in range(len(order)):
            if left_C[order[(cursor + step) % len(order)]] > 0:
                break
        else:
            tier, cursor = tier + 1, 0
            continue
        cluster = order[(cursor + step) % len(order)]
        cursor = (cursor + step + 1) % len(order)
        members = ((assignment_N == cluster) & available_N).nonzero().flatten()
        if members.numel() == 1:
            pick = int(members[0])
        else:
            k_cluster = min(k_neighbours, members.numel() // 2)
            scores = typicality(embeddings_N_D[members], k_cluster, squared=squared_distances)
            pick = int(members[int(scores.argmax())])
        picks.append(pick)
        available_N[pick] = False
        left_C[cluster] -= 1
    return torch.tensor(picks, dtype=torch.long, device=embeddings_N_D.device)


def _kmeans_restarts(n_init: int | None, n_clusters: int) -> int:
    """Restarts of k-means: ``n_init``, or by default 10 up to 50 clusters and 3 beyond (the authors' code)."""
    if n_init is None:
        return 10 if n_clusters <= 50 else 3
    return n_init


def _inertia(embeddings_N_D: Tensor, centres_K_D: Tensor, assignment_N: Tensor) -> float:
    """Sum of squared distances from each point to its assigned centre (float64, in row blocks)."""
    points = embeddings_N_D.to(torch.float64)
    centres = centres_K_D.to(torch.float64)
    rows = max(1, _CHUNK_ELEMENTS // max(1, points.shape[1]))
    total = 0.0
    for start in range(0, points.shape[0], rows):
        diff = points[start : start + rows] - centres[assignment_N[start : start + rows]]
        total += float(diff.square().sum())
    return total


@torch.no_grad()
def typiclust(
    embeddings_N_D: Tensor,
    labelled_mask_N: Tensor,
    k: int,
    max_clusters: int = 500,
    k_neighbours: int = 20,
    min_cluster_size: int = 6,
    n_iter: int = 100,
    generator: torch.Generator | None = None,
    squared_distances: bool = True,
    n_init: int | None = None,
) -> Tensor:
    r"""TypiClust (Hacohen et al. 2022): k-means into ``min(|L| + k, max_clusters, N)`` clusters, then
    `typiclust_from_clusters`.

    k-means is `lightning_al.functional.weighted_kmeans` with unit weights on all ``N``
    points (k-means++ seeding from ``generator``, at most ``n_iter`` Lloyd steps, each ``O(N K D)``
    time and ``O(block)`` memory), run ``n_init`` times; the clustering of lowest inertia is kept.
    By default ``n_init`` is what the authors' code gets from scikit-learn 1.0: 10 runs of
    ``KMeans`` up to 50 clusters, 3 of ``MiniBatchKMeans`` beyond (here full-batch Lloyd steps in
    both cases). The paper caps the clusters at 500 (beyond, one more cluster per query hardly
    changes what is typical). The points are used as given: the `lightning_al.strategies.TypiClust`
    strategy L2-normalises them first, as the authors' code does.

    Args:
        embeddings_N_D: ``(N, D)`` points, labelled and unlabelled.
        labelled_mask_N: ``(N,)`` bool, ``True`` for labelled points.
        k: number of picks, in ``[1, number of unlabelled points]``.
        max_clusters: cap on the number of clusters, at least 1.
        k_neighbours: neighbours of the typicality (see `typiclust_from_clusters`).
        min_cluster_size: smallest cluster used first (see `typiclust_from_clusters`).
        n_iter: maximum Lloyd steps of each k-means run.
        generator: randomness of the k-means++ seedings.
        squared_distances: see `typiclust_from_clusters`.
        n_init: k-means runs, at least 1; ``None``: 10 up to 50 clusters, else 3.

    Returns:
        ``LongTensor[k]`` of row positions, in pick order.
    """
    check_embeddings("embeddings_N_D", embeddings_N_D)
    num_points = embeddings_N_D.shape[0]
    _check_mask("labelled_mask_N", labelled_mask_N, num_points)
    k, max_clusters = as_count("k", k), as_count("max_clusters", max_clusters)
    if max_clusters < 1:
        raise ValueError(f"Expected `max_clusters` to be at least 1, but got {max_clusters}.")
    if n_init is not None and as_count("n_init", n_init) < 1:
        raise ValueError(f"Expected `n_init` to be at least 1 or None, but got {n_init}.")
    check_generator(generator)
    num_labelled = int(labelled_mask_N.sum())
    if not 1 <= k <= num_points - num_labelled:
        raise ValueError(
            f"Expected `k` to be in [1, {num_points - num_labelled}] (the number of unlabelled points), but got {k}."
        )
    n_clusters = min(num_labelled + k, max_clusters, num_points)
    weights_N = torch.ones(num_points, dtype=torch.float64, device=embeddings_N_D.device)
    best: tuple[float, Tensor] | None = None
    for _ in range(_kmeans_restarts(n_init, n_clusters)):
        centres, assignment_N = weighted_kmeans(
            embeddings_N_D, weights_N, n_clusters, generator=generator, n_iter=n_iter
        )
        inertia = _inertia(embeddings_N_D, centres, assignment_N)
        if best is None or inertia < best[0]:
            best = (inertia, assignment_N)
    return typiclust_from_clusters(
        embeddings_N_D, best[1], labelled_mask_N, k, k_neighbours, min_cluster_size, squared_distances
    )
