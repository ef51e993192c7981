r"""Diversity kernels: k-center greedy (core-set) and BADGE, with memory bounded by the inputs.

**k-center greedy** — Sener & Savarese 2018, "Active Learning for Convolutional Neural
Networks: A Core-Set Approach" (ICLR). Choose ``k`` unlabelled points one at a time, each the
point farthest (Euclidean) from its nearest centre, where the centres are the labelled points
plus those chosen so far:

    u = \arg\max_{i \notin S} \min_{j \in S} \lVert x_i - x_j \rVert, \qquad S \leftarrow S \cup \{u\}.

This greedy farthest-first rule is a 2-approximation of the minimax covering radius.

**BADGE** — Ash, Zhang, Krishnamurthy, Langford & Agarwal 2020, "Deep Batch Active Learning
by Diverse, Uncertain Gradient Lower Bounds" (ICLR). Each point gets the gradient of the
cross-entropy loss, under its own predicted label `\hat y = \arg\max_c p_c`, with respect
to the last linear layer's weight: `g = (p - e_{\hat y}) \otimes h` (``h`` the penultimate
embedding). k-means++ seeding on these vectors picks points that are both uncertain (large
`\lVert g \rVert`) and mutually different.

Neither kernel builds an ``N x N`` distance matrix or the ``(N, D * C)`` gradient embeddings.
Both keep one running vector ``min_dist_N`` (squared distance to the nearest centre, float64)
and update it once per pick at a cost of ``O(N * D)`` (k-center) or ``O(N * (D + C))`` (BADGE),
using `\lVert x - c \rVert^2 = \lVert x \rVert^2 - 2 x \cdot c + \lVert c \rVert^2` clamped
at 0. Dot products run in the input's precision (float32 stays float32, float64 stays float64);
half-precision inputs (float16, bfloat16) stay half precision in memory and their products run in
float32 on row chunks of ``_CHUNK_ELEMENTS`` entries, so a pool held in half precision never gets a
full float32 copy (the result equals that of upcasting the whole matrix first). Squared norms and
the combination are float64. Squared distances are used throughout: the
argmax is the same and k-means++ samples proportionally to the squared distance anyway.
The formula cancels catastrophically for (near-)duplicates, so a squared distance at or below
the rounding level ``tol * (‖x‖² + ‖c‖²)`` (``tol`` = 1e-5 for float32 products, 1e-12 for
float64) counts as exactly 0: duplicates of a centre then really are at distance 0, ties
between them resolve by position, and k-means++ never samples them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lightning_al.functional._checks import (
    _describe,
    as_count,
    check_embeddings,
    check_finite,
    check_generator,
    check_probs,
)

# Entries of one block of the (rows x centres) dot-product matrix built while initialising
# distances from many centres (float64 temporaries of this size: 8 MiB). Tests shrink it.
_CHUNK_ELEMENTS = 2**20
# Relative rounding level of ‖x‖² - 2 x·c + ‖c‖² per dtype of the dot products (see module doc).
_ROUNDING_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _from_dots(dots: Tensor, sq_x: Tensor, sq_c: Tensor, tol: float) -> Tensor:
    """``sq_x + sq_c - 2 dots`` (float64, broadcast, in place on ``dots``); values at the rounding level → 0."""
    scale = sq_x + sq_c
    dist = dots.mul_(-2.0).add_(scale)
    return dist.masked_fill_(dist <= tol * scale, 0.0)


# ----- validation ---------------------------------------------------------------------------
def _check_mask(name: str, mask: Tensor, num_points: int) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {_describe(mask)}.")
    if mask.dtype != torch.bool:
        raise TypeError(f"Expected `{name}` to have dtype torch.bool, but got {_describe(mask)}.")
    if mask.ndim != 1 or mask.shape[0] != num_points:
        raise ValueError(f"Expected `{name}` to have shape ({num_points},), but got {_describe(mask)}.")


# ----- shared distance helpers --------------------------------------------------------------
def _product_dtype(values: Tensor) -> torch.dtype:
    """The dtype products of ``values`` run in: its own for float32/float64, float32 for half precision."""
    return values.dtype if values.dtype in (torch.float32, torch.float64) else torch.float32


def _chunk_rows(x_N_D: Tensor) -> int:
    """Rows of ``x_N_D`` in one chunk of at most ``_CHUNK_ELEMENTS`` entries (at least one row)."""
    return max(1, _CHUNK_ELEMENTS // max(x_N_D.shape[1], 1))


def _dots_with_vector(x_N_D: Tensor, v_D: Tensor) -> Tensor:
    """Float64 ``x_i · v`` for every row, the product in `_product_dtype` of ``x_N_D``.

    Float32/float64 ``x_N_D``: one matrix-vector product. Half precision: the same product on float32
    row chunks (``_CHUNK_ELEMENTS`` entries each), so no float32 copy of the whole matrix exists.
    """
    dtype = _product_dtype(x_N_D)
    v_D = v_D.to(dtype)
    if x_N_D.dtype == dtype:
        return (x_N_D @ v_D).to(torch.float64)
    out_N = torch.empty(x_N_D.shape[0], dtype=torch.float64, device=x_N_D.device)
    rows = _chunk_rows(x_N_D)
    for start in range(0, x_N_D.shape[0], rows):
        out_N[start : start + rows] = x_N_D[start : start + rows].to(dtype) @ v_D
    return out_N


def _squared_norms(name: str, x_N_D: Tensor) -> Tensor:
    """Float64 ``‖x_i‖²`` of every row, in row chunks; refuses NaN/inf (and squares that overflow)."""
    num_points = x_N_D.shape[0]
    rows = _chunk_rows(x_N_D)
    out_N = torch.empty(num_points, dtype=torch.float64, device=x_N_D.device)
    for start in range(0, num_points, rows):
        chunk = x_N_D[start : start + rows].to(torch.float64)
        out_N[start : start + rows] = (chunk * chunk).sum(dim=1)
    if not torch.isfinite(out_N).all():
        check_finite(name, x_N_D)  # raises with the offending rows when an entry is NaN/inf
        raise ValueError(f"Expected `{name}` to have finite squared norms, but some overflow float64.")
    return out_N


def _row_mean(x_N_D: Tensor) -> Tensor:
    """Float64 mean of the rows, summed in row chunks (no float64 copy of the whole matrix)."""
    rows = _chunk_rows(x_N_D)
    total_D = torch.zeros(x_N_D.shape[1], dtype=torch.float64, device=x_N_D.device)
    for start in range(0, x_N_D.shape[0], rows):
        total_D += x_N_D[start : start + rows].to(torch.float64).sum(dim=0)
    return total_D / x_N_D.shape[0]


def _min_sq_dist_to_rows(x_N_D: Tensor, sqnorm_N: Tensor, centre_idx_M: Tensor) -> Tensor:
    r"""Float64 ``min_j ‖x_i - x_{c_j}‖²`` over the rows ``centre_idx_M`` of ``x_N_D``; ``+inf`` if none.

    Blocks of at most ``_CHUNK_ELEMENTS`` (rows x centres) entries: memory beyond the inputs is
    ``O(N)`` plus one block, whatever the number of centres. Products run in `_product_dtype`
    (half-precision rows and centres are upcast block by block).
    """
    num_points = x_N_D.shape[0]
    num_centres = centre_idx_M.numel()
    min_N = torch.full((num_points,), math.inf, dtype=torch.float64, device=x_N_D.device)
    if num_centres == 0 or num_points == 0:
        return min_N
    dtype = _product_dtype(x_N_D)
    tol = _ROUNDING_TOL[dtype]
    cols = min(num_centres, max(1, math.isqrt(_CHUNK_ELEMENTS)))
    rows = max(1, _CHUNK_ELEMENTS // cols)
    if x_N_D.dtype != dtype:  # the upcast centres and row block stay within one chunk as well
        cols = min(cols, _chunk_rows(x_N_D))
        rows = min(max(1, _CHUNK_ELEMENTS // cols), _chunk_rows(x_N_D))
    for c_start in range(0, num_centres, cols):
        idx = centre_idx_M[c_start : c_start + cols]
        centres_m_D = x_N_D.index_select(0, idx).to(dtype)
        centre_sq_m = sqnorm_N.index_select(0, idx)
        for r_start in range(0, num_points, rows):
            dots_r_m = (x_N_D[r_start : r_start + rows].to(dtype) @ centres_m_D.T).to(torch.float64)
            block_r_m = _from_dots(dots_r_m, sqnorm_N[r_start : r_start + rows, None], centre_sq_m[None, :], tol)
            block_r = block_r_m.amin(dim=1)
            torch.minimum(min_N[r_start : r_start + rows], block_r, out=min_N[r_start : r_start + rows])
    return min_N


def _sq_dist_to_vector(x_N_D: Tensor, sqnorm_N: Tensor, centre_D: Tensor, centre_sq: Tensor) -> Tensor:
    """Float64 ``‖x_i - c‖²`` for every row (rounding level → 0); one matrix-vector product."""
    dots_N = _dots_with_vector(x_N_D, centre_D)
    return _from_dots(dots_N, sqnorm_N, centre_sq, _ROUNDING_TOL[_product_dtype(x_N_D)])


# ----- k-center greedy ----------------------------------------------------------------------
@torch.no_grad()
def kcenter_greedy(embeddings_N_D: Tensor, labelled_mask_N: Tensor, k: int) -> Tensor:
    r"""Greedy farthest-first selection of ``k`` unlabelled points (Sener & Savarese 2018).

    Each pick is the unlabelled point with the largest Euclidean distance to its nearest
    centre (labelled points and earlier picks); ties go to the lower position.

    **No labelled point.** The first pick is the point farthest from the pool mean
    `\bar x = \frac{1}{N}\sum_i x_i` (ties → lower position); this is deterministic and
    starts from the edge of the data, as the later picks do.

    Memory: the inputs, a few ``(N,)`` vectors and one block of ``_CHUNK_ELEMENTS`` entries;
    time: ``O(N * L * D)`` to initialise from ``L`` labelled points, then ``O(N * D)`` per pick.

    Args:
        embeddings_N_D: ``(N, D)`` floating embeddings (finite).
        labelled_mask_N: ``(N,)`` bool, ``True`` where a point is already labelled (a centre).
        k: number of points to choose, in ``[1, number of unlabelled points]``.

    Returns:
        ``LongTensor[k]`` of row positions, in the order they were picked.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [5.0], [10.0]])
        >>> kcenter_greedy(x, torch.tensor([True, False, False, False]), 2).tolist()
        [3, 2]
    """
    check_embeddings("embeddings_N_D", embeddings_N_D, finite=False)
    num_points = embeddings_N_D.shape[0]
    _check_mask("labelled_mask_N", labelled_mask_N, num_points)
    k = as_count("k", k)
    labelled_N = labelled_mask_N.to(embeddings_N_D.device)
    num_unlabelled = num_points - int(labelled_N.sum())
    if not 1 <= k <= num_unlabelled:
        raise ValueError(f"Expected `k` to be in [1, {num_unlabelled}] (the number of unlabelled points), but got {k}.")
    sqnorm_N = _squared_norms("embeddings_N_D", embeddings_N_D)

    available_N = ~labelled_N
    if num_unlabelled < num_points:
        min_dist_N = _min_sq_dist_to_rows(embeddings_N_D, sqnorm_N, labelled_N.nonzero().flatten())
    else:
        mean_D = _row_mean(embeddings_N_D)
        min_dist_N = _sq_dist_to_vector(embeddings_N_D, sqnorm_N, mean_D, (mean_D * mean_D).sum())

    picks = torch.empty(k, dtype=torch.long, device=embeddings_N_D.device)
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=embeddings_N_D.device)
    for step in range(k):
        pick = int(torch.where(available_N, min_dist_N, neg_inf).argmax())  # first maximum = lowest position
        picks[step] = pick
        available_N[pick] = False
        if step == 0 and num_unlabelled == num_points:
            min_dist_N.fill_(math.inf)  # the mean was only a starting reference, not a centre
        if step + 1 < k:
            dist_N = _sq_dist_to_vector(embeddings_N_D, sqnorm_N, embeddings_N_D[pick], sqnorm_N[pick])
            dist_N[pick] = 0.0
            torch.minimum(min_dist_N, dist_N, out=min_dist_N)
    return picks


@torch.no_grad()
def covering_radius(embeddings_N_D: Tensor, centre_mask_N: Tensor) -> Tensor:
    r"""`\max_i \min_{j \in S} \lVert x_i - x_j \rVert` for the centres ``S`` marked in ``centre_mask_N``.

    The quantity k-center greedy keeps small (Sener & Savarese 2018, "Active Learning for Convolutional
    Neural Networks: A Core-Set Approach"). Returns a float64 scalar; computed in bounded blocks like
    `kcenter_greedy`.

    Args:
        embeddings_N_D: ``(N, D)`` points.
        centre_mask_N: ``(N,)`` bool, ``True`` for the centres ``S``.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [5.0], [10.0]])
        >>> covering_radius(x, torch.tensor([True, False, True, False])).item()
        5.0
    """
    check_embeddings("embeddings_N_D", embeddings_N_D, finite=False)
    _check_mask("centre_mask_N", centre_mask_N, embeddings_N_D.shape[0])
    centre_mask_N = centre_mask_N.to(embeddings_N_D.device)
    if not centre_mask_N.any():
        raise ValueError("Expected `centre_mask_N` to mark at least one centre, but got none.")
    sqnorm_N = _squared_norms("embeddings_N_D", embeddings_N_D)
    min_dist_N = _min_sq_dist_to_rows(embeddings_N_D, sqnorm_N, centre_mask_N.nonzero().flatten())
    min_dist_N[centre_mask_N] = 0.0
    return min_dist_N.max().sqrt()


# ----- BADGE --------------------------------------------------------------------------------
@torch.no_grad()
def badge(probs_N_C: Tensor, embeddings_N_D: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    r"""k-means++ seeding on last-layer gradient embeddings (Ash et al. 2020), never materialised.

    With `a_i = p_i - e_{\hat y_i}` (`\hat y_i = \arg\max_c p_{ic}`, first maximum on
    ties) and `g_i = a_i \otimes h_i` of size ``D * C``,

        \lVert g_i - g_j \rVert^2 = \lVert a_i \rVert^2 \lVert h_i \rVert^2 + \lVert a_j \rVert^2 \lVert h_j \rVert^2
            - 2 \langle a_i, a_j \rangle \langle h_i, h_j \rangle,

    and `\langle a_i, a_j \rangle = \langle p_i, p_j \rangle - p_{i \hat y_j} - p_{j \hat y_i}
    + [\hat y_i = \hat y_j]`, so one pick costs a product with ``probs`` and one with the embeddings.

    Seeding: the first centre is the point with the largest `\lVert g \rVert` (as in the
    authors' code; ties → lower position). Each further centre is drawn with probability
    proportional to `D(x)^2`, the squared distance to its nearest chosen centre, by
    ``torch.multinomial(D², 1, generator=generator)`` (float64 weights). Chosen points have
    `D = 0`, so they never repeat. If every unchosen point has `D = 0` (all remaining
    gradients coincide with centres), the next pick is, deterministically, the unchosen point with
    the largest `\lVert g \rVert` (ties → lower position).

    Args:
        probs_N_C: ``(N, C)`` predictive probabilities of the unlabelled pool.
        embeddings_N_D: ``(N, D)`` penultimate-layer embeddings ``h`` of the same points.
        k: number of points to choose, in ``[1, N]``.
        generator: randomness of the k-means++ draws.

    Returns:
        ``LongTensor[k]`` of row positions, in the order they were picked.
    """
    check_probs("probs_N_C", probs_N_C, ndim=2)
    check_embeddings("embeddings_N_D", embeddings_N_D, finite=False)
    num_points = probs_N_C.shape[0]
    if embeddings_N_D.shape[0] != num_points:
        raise ValueError(
            f"Expected `embeddings_N_D` to have {num_points} rows (one per row of `probs_N_C`), "
            f"but got {_describe(embeddings_N_D)}."
        )
    k = as_count("k", k)
    if not 1 <= k <= num_points:
        raise ValueError(f"Expected `k` to be in [1, {num_points}] (the pool size), but got {k}.")
    check_generator(generator)
    device = embeddings_N_D.device
    probs_N_C = probs_N_C.to(device)

    emb_sq_N = _squared_norms("embeddings_N_D", embeddings_N_D)
    pred_N = probs_N_C.argmax(dim=1)
    # ‖a_i‖² = sum_{c != ŷ} p_c² + (1 - p_ŷ)², from float64 row chunks (exact 0 for one-hot rows).
    # The non-top squares are summed directly: ‖p‖² - p_ŷ² would cancel when p_ŷ ~ 1.
    _squared_norms("probs_N_C", probs_N_C)  # refuses NaN/inf with the offending rows
    others_sq_N = _squared_norms("probs_N_C", probs_N_C.scatter(1, pred_N[:, None], 0))
    top_N = probs_N_C.gather(1, pred_N[:, None]).squeeze(1).to(torch.float64)
    residual_sq_N = others_sq_N + (1.0 - top_N) ** 2
    grad_sq_N = residual_sq_N * emb_sq_N  # ‖g_i‖²

    tol = max(_ROUNDING_TOL[_product_dtype(probs_N_C)], _ROUNDING_TOL[_product_dtype(embeddings_N_D)])

    def dots_with(pick: int) -> Tensor:
        # ⟨a_i, a_j⟩ = ⟨p_i, p_j⟩ - p_{i ŷ_j} - p_{j ŷ_i} + [ŷ_i = ŷ_j]
        p_j_C = probs_N_C[pick]
        a_dot_N = _dots_with_vector(probs_N_C, p_j_C)
        a_dot_N -= probs_N_C[:, pred_N[pick]].to(torch.float64)
        a_dot_N -= p_j_C.to(torch.float64)[pred_N]
        a_dot_N += (pred_N == pred_N[pick]).to(torch.float64)
        return a_dot_N.mul_(_dots_with_vector(embeddings_N_D, embeddings_N_D[pick]))

    return _kmeans_pp_seeding(grad_sq_N, dots_with, k, generator, tol)


def _kmeans_pp_seeding(
    grad_sq_N: Tensor, dots_with: Callable[[int], Tensor], k: int, generator: torch.Generator | None, tol: float
) -> Tensor:
    """BADGE's k-means++ seeding given ``‖g_i‖²`` and ``dots_with(j)``, the float64 ``⟨g_i, g_j⟩`` of every ``i``."""
    num_points, device = grad_sq_N.shape[0], grad_sq_N.device
    picks = torch.empty(k, dtype=torch.long, device=device)
    chosen_N = torch.zeros(num_points, dtype=torch.bool, device=device)
    min_dist_N = torch.full((num_points,), math.inf, dtype=torch.float64, device=device)
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=device)
    pick = int(grad_sq_N.argmax())
    for step in range(k):
        if step > 0:
            if min_dist_N.sum() > 0:
                pick = int(torch.multinomial(min_dist_N, 1, generator=generator))
            else:
                pick = int(torch.where(chosen_N, neg_inf, grad_sq_N).argmax())
        picks[step] = pick
        chosen_N[pick] = True
        if step + 1 == k:
            break
        dist_N = _from_dots(dots_with(pick), grad_sq_N, grad_sq_N[pick], tol)
        torch.minimum(min_dist_N, dist_N, out=min_dist_N)
        min_dist_N[chosen_N] = 0.0
    return picks


@torch.no_grad()
def badge_factored(
    residuals_N_R: Tensor, embeddings_N_D: Tensor, k: int, generator: torch.Generator | None = None
) -> Tensor:
    r"""BADGE's k-means++ seeding (see `badge`) on gradient embeddings `g_i = r_i \otimes h_i`.

    For any loss whose last-layer weight gradient factorises as a residual ``r`` (the gradient w.r.t. the
    logits under the hypothesised labels) times the layer input ``h``, e.g. binary cross-entropy over ``L``
    labels, `r = \sigma(z) - \hat y`; `\lVert g_i - g_j \rVert^2` comes from
    `\langle r_i, r_j \rangle \langle h_i, h_j \rangle`, so ``g`` is never built. With ``R = 1`` and
    `r = 1`, ``embeddings_N_D`` are themselves the gradient embeddings.

    Args:
        residuals_N_R: ``(N, R)`` residuals.
        embeddings_N_D: ``(N, D)`` layer inputs ``h``.
        k: number of points to choose, in ``[1, N]``.
        generator: randomness of the k-means++ draws.

    Returns:
        ``LongTensor[k]`` of row positions, in the order they were picked.

    Example:
        >>> r = torch.tensor([[0.5], [0.0], [-0.4]])
        >>> badge_factored(r, torch.ones(3, 2), k=1)
        tensor([0])
    """
    check_embeddings("residuals_N_R", residuals_N_R, finite=True)
    check_embeddings("embeddings_N_D", embeddings_N_D, residuals_N_R.shape[0], "residuals_N_R", finite=False)
    num_points = residuals_N_R.shape[0]
    k = as_count("k", k)
    if not 1 <= k <= num_points:
        raise ValueError(f"Expected `k` to be in [1, {num_points}] (the pool size), but got {k}.")
    check_generator(generator)
    residuals_N_R = residuals_N_R.to(embeddings_N_D.device)
    grad_sq_N = _squared_norms("residuals_N_R", residuals_N_R) * _squared_norms("embeddings_N_D", embeddings_N_D)
    tol = max(_ROUNDING_TOL[_product_dtype(residuals_N_R)], _ROUNDING_TOL[_product_dtype(embeddings_N_D)])

    def dots_with(pick: int) -> Tensor:
        r_dot_N = _dots_with_vector(residuals_N_R, residuals_N_R[pick])
        return r_dot_N.mul_(_dots_with_vector(embeddings_N_D, embeddings_N_D[pick]))

    return _kmeans_pp_seeding(grad_sq_N, dots_with, k, generator, tol)
