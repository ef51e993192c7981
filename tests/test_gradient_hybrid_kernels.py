"""Tests of ``lightning_al.functional.gradient`` (EGL) and ``lightning_al.functional.hybrid``."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import lightning_al.functional.clustering as clustering
import lightning_al.functional.gradient as gradient
import lightning_al.functional.hybrid as hybrid
from lightning_al.functional.clustering import nearest_to_centres, weighted_kmeans
from lightning_al.functional.gradient import egl
from lightning_al.functional.hybrid import cal_scores, max_cover_greedy


def _random_probs(n: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64).mul(2).softmax(dim=1)


@pytest.mark.parametrize("module", [gradient, hybrid, clustering])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, report=False)
    assert result.attempted > 0
    assert result.failed == 0


# ----- EGL -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
def test_egl_matches_autograd(bias):
    torch.manual_seed(0)
    num_points, dim, num_classes = 6, 5, 4
    layer = torch.nn.Linear(dim, num_classes, bias=bias).double()
    h_N_D = torch.randn(num_points, dim, dtype=torch.float64)
    with torch.no_grad():
        probs_N_C = layer(h_N_D).softmax(dim=1)
    expected = []
    for n in range(num_points):
        total = 0.0
        for y in range(num_classes):
            layer.zero_grad()
            loss = torch.nn.functional.cross_entropy(layer(h_N_D[n : n + 1]), torch.tensor([y]))
            loss.backward()
            sq = layer.weight.grad.square().sum()
            if bias:
                sq = sq + layer.bias.grad.square().sum()
            total += float(probs_N_C[n, y]) * float(sq.sqrt())
        expected.append(total)
    torch.testing.assert_close(egl(probs_N_C, h_N_D, bias=bias), torch.tensor(expected, dtype=torch.float64))


def test_egl_hand_values_and_dtype():
    h = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    probs = torch.full((2, 4), 0.25)
    # uniform over 4: ||p - e_y||^2 = 1/4 - 1/2 + 1 = 3/4 for every y
    out = egl(probs, h)
    assert out.dtype == torch.float32 and out.shape == (2,)
    torch.testing.assert_close(out, torch.tensor([5 * math.sqrt(0.75), 0.0]))
    # with a bias, a zero embedding still has the bias gradient
    torch.testing.assert_close(egl(probs, h, bias=True), torch.tensor([math.sqrt(26 * 0.75), math.sqrt(0.75)]))
    assert float(egl(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))) == 0.0


def test_egl_rejects_bad_input():
    probs = torch.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="`embeddings_N_D` to have 3 rows"):
        egl(probs, torch.ones(2, 4))
    with pytest.raises(ValueError, match="`embeddings_N_D` to have shape"):
        egl(probs, torch.ones(3))
    with pytest.raises(ValueError, match="`embeddings_N_D` to be finite"):
        egl(probs, torch.tensor([[1.0], [math.nan], [0.0]]))
    with pytest.raises(TypeError, match="`embeddings_N_D` to hold floating-point"):
        egl(probs, torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="sum to 1"):
        egl(torch.full((3, 2), 0.4), torch.ones(3, 2))
    with pytest.raises(TypeError, match="`bias` to be a bool"):
        egl(probs, torch.ones(3, 2), bias=1)


# ----- CAL -------------------------------------------------------------------------------------


def ref_cal(pool_p, pool_h, lab_p, lab_h, k):
    """One candidate at a time: stable-sorted neighbours, KL(neighbour || candidate) with the eps clamp."""
    pool_p, pool_h, lab_p, lab_h = (np.asarray(t, dtype=np.float64) for t in (pool_p, pool_h, lab_p, lab_h))
    out = []
    for i in range(len(pool_p)):
        dist = np.sqrt(((lab_h - pool_h[i]) ** 2).sum(axis=1))
        neighbours = np.argsort(dist, kind="stable")[: min(k, len(lab_p))]
        kls = []
        for j in neighbours:
            q, p = lab_p[j], np.maximum(pool_p[i], 1e-12)
            kls.append(sum(q[c] * math.log(q[c] / p[c]) for c in range(len(q)) if q[c] > 0))
        out.append(np.mean(kls))
    return np.array(out)


@pytest.mark.parametrize("chunk_elements", [2**20, 7])  # 7 elements: chunks of one pool row
@pytest.mark.parametrize("k", [1, 5, 40])  # 40 > M: every labelled point is a neighbour
def test_cal_matches_loop_reference(monkeypatch, chunk_elements, k):
    monkeypatch.setattr(hybrid, "_CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(1)
    pool_p, lab_p = _random_probs(37, 3, 2), _random_probs(23, 3, 3)
    pool_h, lab_h = torch.randn(37, 4, generator=g), torch.randn(23, 4, generator=g)
    out = cal_scores(pool_p, pool_h, lab_p, lab_h, k_neighbours=k)
    assert out.shape == (37,) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), ref_cal(pool_p, pool_h, lab_p, lab_h, k), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_cal_ties_go_to_lower_labelled_positions(k):
    g = torch.Generator().manual_seed(11)
    pool_p, lab_p = _random_probs(20, 3, 12), _random_probs(15, 3, 13)
    # integer grid embeddings: many exactly equal distances
    pool_h = torch.randint(0, 3, (20, 2), generator=g).double()
    lab_h = torch.randint(0, 3, (15, 2), generator=g).double()
    out = cal_scores(pool_p, pool_h, lab_p, lab_h, k_neighbours=k)
    np.testing.assert_allclose(out.numpy(), ref_cal(pool_p, pool_h, lab_p, lab_h, k), rtol=1e-10, atol=1e-12)


def test_cal_direction_and_zero_probabilities():
    neighbour, candidate = [0.5, 0.5], [0.9, 0.1]
    candidate_p, neighbour_p = torch.tensor([candidate], dtype=torch.float64), torch.tensor([neighbour])
    out = cal_scores(candidate_p, torch.zeros(1, 2), neighbour_p, torch.zeros(1, 2))
    forward = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # KL(neighbour || candidate)
    backward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert abs(forward - backward) > 0.1
    assert float(out) == pytest.approx(forward, rel=1e-12)
    # a class the candidate rules out: large but finite thanks to the clamp
    out = cal_scores(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 1), torch.tensor([[0.5, 0.5]]), torch.zeros(1, 1))
    expected = 0.5 * math.log(0.5 / 1.0) + 0.5 * math.log(0.5 / 1e-12)
    assert math.isfinite(float(out)) and float(out) == pytest.approx(expected, rel=1e-12)


def test_cal_identical_predictions_score_zero():
    probs = _random_probs(5, 4, 7)
    emb = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    out = cal_scores(probs, emb, probs, emb, k_neighbours=1)  # each point's nearest neighbour is itself
    torch.testing.assert_close(out, torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)


def test_cal_rejects_bad_input():
    p, h = torch.full((3, 2), 0.5), torch.zeros(3, 4)
    with pytest.raises(ValueError, match="at least one labelled row"):
        cal_scores(p, h, torch.zeros(0, 2), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="`probs_labelled_M_C` to have 2 classes"):
        cal_scores(p, h, torch.full((3, 3), 1 / 3), h)
    with pytest.raises(ValueError, match="`embeddings_labelled_M_D` to have 4 columns"):
        cal_scores(p, h, p, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="`embeddings_pool_N_D` to have 3 rows"):
        cal_scores(p, torch.zeros(2, 4), p, h)
    with pytest.raises(ValueError, match="`k_neighbours` to be at least 1"):
        cal_scores(p, h, p, h, k_neighbours=0)
    with pytest.raises(TypeError, match="`k_neighbours` to be an int"):
        cal_scores(p, h, p, h, k_neighbours=2.0)


# ----- weighted k-means -----------------------------------------------------------------------


def test_weighted_kmeans_recovers_weighted_blob_means():
    g = torch.Generator().manual_seed(0)
    true_centres = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]], dtype=torch.float64)
    blob_N = torch.arange(4).repeat_interleave(30)
    points = true_centres[blob_N] + torch.randn(120, 2, generator=g, dtype=torch.float64)
    weights = torch.rand(120, generator=g, dtype=torch.float64) * 5 + 0.1
    centres, assignment = weighted_kmeans(points, weights, 4, generator=torch.Generator().manual_seed(3))
    for b in range(4):
        members = blob_N == b
        assert assignment[members].unique().numel() == 1  # a blob is one cluster
        cluster = int(assignment[members][0])
        weighted_mean = (points[members] * weights[members, None]).sum(0) / weights[members].sum()
        torch.testing.assert_close(centres[cluster], weighted_mean)
        assert (centres[cluster] - true_centres[b]).norm() < 1.0
    assert assignment.unique().numel() == 4


def test_weighted_kmeans_fixed_point_matches_numpy():
    g = torch.Generator().manual_seed(5)
    points = torch.randn(12, 2, generator=g, dtype=torch.float64)
    weights = torch.rand(12, generator=g, dtype=torch.float64) + 0.05
    centres, assignment = weighted_kmeans(points, weights, 3, generator=torch.Generator().manual_seed(1), tol=0.0)
    x, w, c, a = points.numpy(), weights.numpy(), centres.numpy(), assignment.numpy()
    nearest = np.argmin(((x[:, None, :] - c[None, :, :]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(a, nearest)
    for k in range(3):
        members = a == k
        assert members.any()
        np.testing.assert_allclose(c[k], (x[members] * w[members, None]).sum(0) / w[members].sum(), rtol=1e-12)


def test_weighted_kmeans_is_deterministic_and_weights_matter():
    g = torch.Generator().manual_seed(2)
    points = torch.randn(60, 3, generator=g)
    weights = torch.rand(60, generator=g)
    first = weighted_kmeans(points, weights, 5, generator=torch.Generator().manual_seed(9))
    second = weighted_kmeans(points, weights, 5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[0].dtype == torch.float32 and first[1].dtype == torch.long
    # a far outlier with zero weight neither pulls the single centre nor can be a seed
    with_outlier = torch.cat([points, torch.full((1, 3), 1e3)])
    centre, _ = weighted_kmeans(with_outlier, torch.cat([weights, torch.zeros(1)]), 1)
    torch.testing.assert_close(centre[0], (points * weights[:, None]).sum(0) / weights.sum())


def test_weighted_kmeans_reseeds_empty_clusters_at_farthest_points():
    points = torch.tensor([[0.0], [1.0], [9.0], [10.0]])
    # Centres 1 and 2 win no point at first: they restart at the points farthest from centre 0 (10, then 9).
    init = torch.tensor([[0.5], [100.0], [200.0]])
    centres, assignment = weighted_kmeans(points, torch.ones(4), 3, init_centres_K_D=init)
    torch.testing.assert_close(centres, torch.tensor([[0.5], [10.0], [9.0]]))
    assert assignment.tolist() == [0, 0, 2, 1]


def test_weighted_kmeans_rejects_bad_input():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"`n_clusters` to be in \[1, 2\]"):
        weighted_kmeans(x, torch.tensor([1.0, 0.0, 0.0, 2.0, 0.0]), 3)
    with pytest.raises(ValueError, match="`weights_N` to be non-negative"):
        weighted_kmeans(x, torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0]), 2)
    with pytest.raises(ValueError, match=r"`weights_N` to have shape \(5,\)"):
        weighted_kmeans(x, torch.ones(4), 2)
    with pytest.raises(TypeError, match=r"`generator` to be a torch\.Generator"):
        weighted_kmeans(x, torch.ones(5), 2, generator=0)
    with pytest.raises(ValueError, match="`n_iter` to be at least 1"):
        weighted_kmeans(x, torch.ones(5), 2, n_iter=0)
    with pytest.raises(ValueError, match="`tol` to be a non-negative number"):
        weighted_kmeans(x, torch.ones(5), 2, tol=-1.0)
    with pytest.raises(ValueError, match="`init_centres_K_D` to have 2 rows"):
        weighted_kmeans(x, torch.ones(5), 2, init_centres_K_D=torch.zeros(3, 2))


# ----- nearest_to_centres --------------------------------------------------------------------


def ref_nearest_to_centres(points, centres):
    dist = ((points[None, :, :] - centres[:, None, :]) ** 2).sum(-1)
    used, picks = set(), []
    for row in dist:
        order = [int(i) for i in np.argsort(row, kind="stable") if int(i) not in used]
        picks.append(order[0])
        used.add(order[0])
    return picks


@pytest.mark.parametrize("chunk_elements", [2**20, 5])
def test_nearest_to_centres_matches_reference(monkeypatch, chunk_elements):
    monkeypatch.setattr(clustering, "_CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(4)
    points = torch.randn(30, 2, generator=g, dtype=torch.float64)
    # centres drawn next to a few points, several sharing the same nearest point
    centres = points[torch.tensor([3, 3, 3, 7, 7, 12])] + 0.01 * torch.randn(6, 2, generator=g, dtype=torch.float64)
    picks = nearest_to_centres(points, centres)
    assert picks.dtype == torch.long and picks.unique().numel() == 6
    assert picks.tolist() == ref_nearest_to_centres(points.numpy(), centres.numpy())


def test_nearest_to_centres_rejects_bad_input():
    with pytest.raises(ValueError, match="at most 2 centres"):
        nearest_to_centres(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="`centres_K_D` to have 3 columns"):
        nearest_to_centres(torch.zeros(2, 3), torch.zeros(1, 2))


# ----- max-cover greedy ----------------------------------------------------------------------


def ref_max_cover(x, candidates, k, reference):
    """Greedy on F(S) = sum_{r in reference} max_{s in S} cos(r, s), evaluating F from scratch."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)

    def coverage(chosen):
        return sum(max(float(unit[r] @ unit[s]) for s in chosen) for r in reference)

    chosen = []
    for _ in range(k):
        best = max((c for c in candidates if c not in chosen), key=lambda c: coverage([*chosen, c]))
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("chunk_elements", [2**20, 3])  # tiny chunks: no cached table, one candidate per chunk
@pytest.mark.parametrize("with_reference", [False, True])
def test_max_cover_matches_brute_force(monkeypatch, chunk_elements, with_reference):
    monkeypatch.setattr(hybrid, "_CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(25, 4, generator=g, dtype=torch.float64).relu() + 0.01  # non-negative descriptors
    candidates = torch.randperm(25, generator=g)[:12]
    reference = torch.randperm(25, generator=g)[:15] if with_reference else None
    picks = max_cover_greedy(x, candidates, 6, reference_idx=reference)
    ref_rows = reference.tolist() if with_reference else list(range(25))
    assert picks.tolist() == ref_max_cover(x.numpy(), candidates.tolist(), 6, ref_rows)


def test_max_cover_is_scale_invariant_and_returns_dataset_positions():
    g = torch.Generator().manual_seed(8)
    x = torch.rand(20, 3, generator=g)
    candidates = torch.tensor([19, 4, 11, 7, 0])
    picks = max_cover_greedy(x, candidates, 5)
    scaled = x * torch.rand(20, 1, generator=g).add(0.5) * 10
    assert torch.equal(max_cover_greedy(scaled, candidates, 5), picks)
    assert sorted(picks.tolist()) == sorted(candidates.tolist())


def test_max_cover_rejects_bad_input():
    x = torch.rand(6, 3)
    with pytest.raises(ValueError, match="distinct positions"):
        max_cover_greedy(x, torch.tensor([1, 1]), 1)
    with pytest.raises(ValueError, match=r"positions in \[0, 6\)"):
        max_cover_greedy(x, torch.tensor([1, 6]), 1)
    with pytest.raises(TypeError, match="1-D integer tensor"):
        max_cover_greedy(x, torch.tensor([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match=r"`k` to be in \[1, 2\]"):
        max_cover_greedy(x, torch.tensor([1, 2]), 3)
    with pytest.raises(ValueError, match="`reference_idx` to hold at least one"):
        max_cover_greedy(x, torch.tensor([1, 2]), 1, reference_idx=torch.zeros(0, dtype=torch.long))
