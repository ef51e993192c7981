r"""ProbCover: greedy maximum coverage of δ-balls, and the purity rule that chooses δ.

Yehuda, Dekel, Hacohen & Weinshall 2022, "Active Learning Through a Covering Lens" (NeurIPS).
In a good embedding space, points within distance δ of each other mostly share a label, so a
labelled point "covers" its δ-ball `B_\delta(x) = \{x' : \lVert x - x' \rVert_2 \le \delta\}`.
For a tiny budget, query the points that cover the most of the data:

    \max_{S \subseteq U,\ |S| = k}\ \Big|\bigcup_{x \in L \cup S} B_\delta(x)\Big|,

solved greedily (within `1 - 1/e` of the optimum): points covered by labelled ones start
covered; each pick is the unlabelled point whose ball holds the most still-uncovered points.

δ: the largest candidate whose *ball purity* reaches α (the paper: 0.95), where, with a k-means
clustering of the embeddings into as many clusters as classes,

    \pi(\delta) = \frac{1}{N} \big|\{x : \text{every point of } B_\delta(x) \text{ is in } x\text{'s cluster}\}\big|.

Memory: no ``N x N`` table or edge list is built. Ball sizes are counted in row blocks of at most
``_CHUNK_ELEMENTS`` float64 entries, and updated after each pick from the distances to the newly
covered points only, so all picks together cost ``O(N^2 D)`` time (each point is newly covered once)
and ``O(block + N * D)`` memory beyond the inputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_al.functional._checks import _describe, as_count, check_embeddings, check_generator
from lightning_al.functional.clustering import _squared_distances
from lightning_al.functional.diversity import _check_mask
from lightning_al.functional.typical_clusters import _check_assignment

# Float64 entries of one (rows x points) block of squared distances (8 MiB). Tests shrink it.
_CHUNK_ELEMENTS = 2**20


def _check_delta(delta: object) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (math.isfinite(delta) and delta >= 0):
        raise ValueError(f"Expected `delta` to be a finite number >= 0, but got {delta!r}.")
    return float(delta)


def _ball_counts(points_N_D: Tensor, sq_N: Tensor, targets: Tensor, delta_sq: float) -> Tensor:
    """Per point, how many of the rows ``targets`` lie within the ball (``d² <= δ²``); int64 ``(N,)``, in blocks."""
    num_points = points_N_D.shape[0]
    counts_N = torch.zeros(num_points, dtype=torch.long, device=points_N_D.device)
    if targets.numel() == 0:
        return counts_N
    targets_T_D, targets_sq_T = points_N_D[targets], sq_N[targets]
    rows = max(1, _CHUNK_ELEMENTS // targets.numel())
    for start in range(0, num_points, rows):
        sq_r_T = _squared_distances(points_N_D[start : start + rows], targets_T_D, targets_sq_T)
        counts_N[start : start + rows] = (sq_r_T <= delta_sq).sum(dim=1)
    return counts_N


@torch.no_grad()
def probcover_greedy(
    embeddings_N_D: Tensor,
    labelled_mask_N: Tensor,
    k: int,
    delta: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""ProbCover's greedy (Yehuda et al. 2022): ``k`` unlabelled points whose δ-balls cover the most points.

    Start with every point within δ of a labelled point covered. Each pick is the unlabelled,
    not yet picked point whose ball holds the most uncovered points (ties → lowest position, as the
    ``argmax`` of the authors' code); the points of its ball become covered. Once every point is
    covered (the best gain is 0), the remaining picks are drawn uniformly from the unpicked
    unlabelled points with ``generator`` (the authors' code would take the point at position 0
    again, a labelled or already picked one).

    Balls are closed, as in the paper (the authors' code tests ``‖x - y‖ < δ``; the two differ only
    for pairs at exactly δ). Ball membership is ``‖x - y‖² <= δ²`` with float64 squared distances
    `\lVert x \rVert^2 - 2 x \cdot y + \lVert y \rVert^2` (clamped at 0); a gain is a count
    maintained by subtraction, so a pair at δ within rounding could be judged differently in the
    count and in its update — gains are clamped at 0.

    Args:
        embeddings_N_D: ``(N, D)`` points, labelled and unlabelled.
        labelled_mask_N: ``(N,)`` bool, ``True`` for labelled points.
        k: number of picks, in ``[1, number of unlabelled points]``.
        delta: ball radius, ``>= 0``.
        generator: randomness of the picks made once everything is covered.

    Returns:
        ``LongTensor[k]`` of row positions, in pick order.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
        >>> probcover_greedy(x, torch.zeros(5, dtype=torch.bool), 2, delta=1.0).tolist()
        [1, 3]
    """
    check_embeddings("embeddings_N_D", embeddings_N_D)
    num_points = embeddings_N_D.shape[0]
    _check_mask("labelled_mask_N", labelled_mask_N, num_points)
    k = as_count("k", k)
    delta_sq = _check_delta(delta) ** 2
    check_generator(generator)
    device = embeddings_N_D.device
    labelled_N = labelled_mask_N.to(device)
    num_unlabelled = num_points - int(labelled_N.sum())
    if not 1 <= k <= num_unlabelled:
        raise ValueError(f"Expected `k` to be in [1, {num_unlabelled}] (the number of unlabelled points), but got {k}.")

    points_N_D = embeddings_N_D.to(torch.float64)
    sq_N = points_N_D.square().sum(1)
    covered_N = _ball_counts(points_N_D, sq_N, labelled_N.nonzero().flatten(), delta_sq) > 0
    gain_N = _ball_counts(points_N_D, sq_N, (~covered_N).nonzero().flatten(), delta_sq)
    available_N = ~labelled_N
    picks: list[int] = []
    while len(picks) < k:
        pick = int(gain_N.masked_fill(~available_N, -1).argmax())  # first maximum: lowest position
        if int(gain_N[pick]) <= 0:
            rest = available_N.nonzero().flatten()
            order = torch.randperm(rest.numel(), generator=generator).to(device)
            picks.extend(rest[order[: k - len(picks)]].tolist())
            break
        picks.append(pick)
        available_N[pick] = False
        uncovered = (~covered_N).nonzero().flatten()
        in_ball = _squared_distances(points_N_D[pick : pick + 1], points_N_D[uncovered], sq_N[uncovered])[0]
        newly = uncovered[in_ball <= delta_sq]
        covered_N[newly] = True
        gain_N.sub_(_ball_counts(points_N_D, sq_N, newly, delta_sq)).clamp_(min=0)
    return torch.tensor(picks, dtype=torch.long, device=device)


@torch.no_grad()
def nearest_other_cluster_distance(embeddings_N_D: Tensor, assignment_N: Tensor) -> Tensor:
    r"""Per point, the Euclidean distance to the nearest point of another cluster (``inf`` if there is none).

    A point's δ-ball is pure exactly when this distance exceeds δ. Float64, in row blocks.

    Args:
        embeddings_N_D: ``(N, D)`` points.
        assignment_N: ``(N,)`` non-negative integer cluster id of every point.

    Returns:
        ``(N,)`` float64 distances.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [4.0]])
        >>> nearest_other_cluster_distance(x, torch.tensor([0, 0, 1]))
        tensor([4., 3., 3.], dtype=torch.float64)
    """
    check_embeddings("embeddings_N_D", embeddings_N_D)
    num_points = embeddings_N_D.shape[0]
    assignment_N = _check_assignment(assignment_N, num_points).to(embeddings_N_D.device)
    points_N_D = embeddings_N_D.to(torch.float64)
    sq_N = points_N_D.square().sum(1)
    out_N = torch.empty(num_points, dtype=torch.float64, device=embeddings_N_D.device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, num_points))
    for start in range(0, num_points, rows):
        sq_r_N = _squared_distances(points_N_D[start : start + rows], points_N_D, sq_N)
        same_r_N = assignment_N[start : start + rows, None] == assignment_N[None, :]
        out_N[start : start + rows] = sq_r_N.masked_fill_(same_r_N, math.inf).amin(dim=1).sqrt()
    return out_N


@torch.no_grad()
def ball_purity(embeddings_N_D: Tensor, assignment_N: Tensor, deltas_M: Tensor) -> Tensor:
    r"""Purity `\pi(\delta)` for every candidate δ: the fraction of points whose δ-ball holds only their cluster.

    Args:
        embeddings_N_D: ``(N, D)`` points, ``N >= 1``.
        assignment_N: ``(N,)`` cluster ids (ProbCover: k-means with as many clusters as classes).
        deltas_M: ``(M,)`` non-negative candidate radii.

    Returns:
        Float64 ``(M,)`` in ``[0, 1]``, non-increasing in δ.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [4.0]])
        >>> ball_purity(x, torch.tensor([0, 0, 1]), torch.tensor([1.0, 3.0, 4.0]))
        tensor([1.0000, 0.3333, 0.0000], dtype=torch.float64)
    """
    deltas_M = _check_deltas(deltas_M)
    if embeddings_N_D.shape[0] == 0:
        raise ValueError(f"Expected `embeddings_N_D` to hold at least one point, but got {_describe(embeddings_N_D)}.")
    other_N = nearest_other_cluster_distance(embeddings_N_D, assignment_N)
    return _purity(other_N, deltas_M.to(other_N))


def _check_deltas(deltas_M: Tensor) -> Tensor:
    if not isinstance(deltas_M, Tensor) or deltas_M.ndim != 1 or not deltas_M.is_floating_point():
        raise TypeError(f"Expected `deltas_M` to be a 1-D floating tensor, but got {_describe(deltas_M)}.")
    if deltas_M.numel() == 0 or not (torch.isfinite(deltas_M).all() and (deltas_M >= 0).all()):
        raise ValueError(f"Expected `deltas_M` to hold finite values >= 0 (at least one), but got {deltas_M.tolist()}.")
    return deltas_M


def _purity(other_N: Tensor, deltas_M: Tensor) -> Tensor:
    """Fraction of points whose nearest foreign point is farther than each δ (sorted search, ``O((N + M) log N)``)."""
    sorted_N = torch.sort(other_N).values
    impure_M = torch.searchsorted(sorted_N, deltas_M, right=True)  # points with distance <= δ
    return 1.0 - impure_M.to(torch.float64) / other_N.numel()


@torch.no_grad()
def purity_delta(
    embeddings_N_D: Tensor, assignment_N: Tensor, alpha: float = 0.95, deltas_M: Tensor | None = None
) -> float:
    r"""ProbCover's δ: the largest candidate with `\pi(\delta) \ge \alpha` (Yehuda et al. 2022).

    Without ``deltas_M``, the candidates are 0 and the distinct distances to the nearest foreign
    point, the only values where `\pi` changes (a ball is closed, so at δ equal to a point's
    distance that point is impure); the result is then the largest such distance that keeps purity
    at least α. If no candidate reaches α, the smallest candidate is returned.

    Args:
        embeddings_N_D: ``(N, D)`` points, ``N >= 1``.
        assignment_N: ``(N,)`` cluster ids.
        alpha: purity threshold in ``(0, 1]``.
        deltas_M: optional ``(M,)`` candidate radii (e.g. a grid).

    Returns:
        δ as a Python float (``inf`` only when every point is in one cluster and no grid is given).

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [4.0], [4.5]])
        >>> purity_delta(x, torch.tensor([0, 0, 1, 1]), alpha=0.5)  # foreign distances 4, 3, 3, 3.5
        3.0
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ValueError(f"Expected `alpha` to be a number in (0, 1], but got {alpha!r}.")
    if embeddings_N_D.shape[0] == 0:
        raise ValueError(f"Expected `embeddings_N_D` to hold at least one point, but got {_describe(embeddings_N_D)}.")
    other_N = nearest_other_cluster_distance(embeddings_N_D, assignment_N)
    if deltas_M is None:
        finite = other_N[torch.isfinite(other_N)]
        if finite.numel() == 0:
            return math.inf
        candidates_M = torch.cat([finite.new_zeros(1), finite.unique()])
    else:
        candidates_M = torch.sort(_check_deltas(deltas_M).to(other_N)).values
    ok_M = _purity(other_N, candidates_M) >= alpha
    if not ok_M.any():
        return float(candidates_M[0])
    return float(candidates_M[ok_M.nonzero().flatten()[-1]])
