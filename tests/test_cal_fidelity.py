"""CAL as the authors run it: L2-normalised embeddings, and the budget-adaptive neighbour count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lightning_al as al
from lightning_al.functional import hybrid
from lightning_al.functional.hybrid import CAL_NEIGHBOURS, cal_neighbour_count, cal_scores
from lightning_al.strategies import CAL


def _probs(n: int, c: int, seed: int) -> torch.Tensor:
    return (torch.randn(n, c, generator=torch.Generator().manual_seed(seed)) * 2).softmax(1).double()


def reference(pool_p, pool_h, lab_p, lab_h, k: int, normalize: bool) -> np.ndarray:
    """Candidate by candidate in numpy: optional unit rows, stable-sorted distances, mean KL(neighbour || candidate)."""
    pool_p, pool_h, lab_p, lab_h = (np.asarray(t, dtype=np.float64) for t in (pool_p, pool_h, lab_p, lab_h))
    if normalize:
        pool_h = pool_h / np.maximum(np.linalg.norm(pool_h, axis=1, keepdims=True), 1e-12)
        lab_h = lab_h / np.maximum(np.linalg.norm(lab_h, axis=1, keepdims=True), 1e-12)
    scores = []
    for i in range(len(pool_p)):
        # rounded, so that distances equal in exact arithmetic tie here as in the kernel
        dist = np.round(np.sqrt(((lab_h - pool_h[i]) ** 2).sum(axis=1)), 9)
        nearest = np.argsort(dist, kind="stable")[: min(k, len(lab_p))]
        candidate = np.maximum(pool_p[i], 1e-12)
        kls = [sum(q[c] * math.log(q[c] / candidate[c]) for c in range(len(q)) if q[c] > 0) for q in lab_p[nearest]]
        scores.append(sum(kls) / len(kls))
    return np.array(scores)


# ----- L2 normalisation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_elements", [2**20, 5])  # 5 elements: one pool row per chunk
@pytest.mark.parametrize("k", [1, 4, 30])  # 30 > M: every labelled sample is a neighbour
def test_normalised_scores_match_the_reference(monkeypatch, chunk_elements, k):
    monkeypatch.setattr(hybrid, "_CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(0)
    pool_h, lab_h = torch.randn(29, 6, generator=g) * 5, torch.randn(17, 6, generator=g)
    pool_p, lab_p = _probs(29, 4, 1), _probs(17, 4, 2)
    out = cal_scores(pool_p, pool_h, lab_p, lab_h, k_neighbours=k, normalize=True)
    assert out.shape == (29,) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), reference(pool_p, pool_h, lab_p, lab_h, k, True), rtol=1e-10, atol=1e-12)
    # the raw-distance option keeps matching its own reference, and the two differ on this data
    raw = cal_scores(pool_p, pool_h, lab_p, lab_h, k_neighbours=k, normalize=False)
    np.testing.assert_allclose(raw.numpy(), reference(pool_p, pool_h, lab_p, lab_h, k, False), rtol=1e-10, atol=1e-12)
    if k < 17:
        assert not torch.allclose(out, raw)


def test_normalised_scores_ignore_the_length_of_each_embedding():
    g = torch.Generator().manual_seed(3)
    pool_h, lab_h = torch.randn(20, 4, generator=g).double(), torch.randn(12, 4, generator=g).double()
    pool_p, lab_p = _probs(20, 3, 4), _probs(12, 3, 5)
    scale_pool = torch.rand(20, 1, generator=g).double() * 100 + 0.01
    scale_lab = torch.rand(12, 1, generator=g).double() * 100 + 0.01
    base = cal_scores(pool_p, pool_h, lab_p, lab_h, 3, normalize=True)
    scaled = cal_scores(pool_p, pool_h * scale_pool, lab_p, lab_h * scale_lab, 3, normalize=True)
    torch.testing.assert_close(scaled, base, rtol=1e-10, atol=1e-12)
    raw_scaled = cal_scores(pool_p, pool_h * scale_pool, lab_p, lab_h * scale_lab, 3)
    assert not torch.allclose(raw_scaled, cal_scores(pool_p, pool_h, lab_p, lab_h, 3))


def test_normalisation_changes_the_neighbour_by_hand():
    # candidate (0, 10) predicts (0.9, 0.1); labelled (5, 8) predicts (0.5, 0.5), labelled (0.1, 1) predicts (0.1, 0.9).
    # Raw: (5, 8) is nearer (distance 5.4 vs 9.0); in angle (0.1, 1) is (cos 0.995 vs 0.848).
    candidate_p, candidate_h = torch.tensor([[0.9, 0.1]], dtype=torch.float64), torch.tensor([[0.0, 10.0]])
    lab_p = torch.tensor([[0.5, 0.5], [0.1, 0.9]], dtype=torch.float64)
    lab_h = torch.tensor([[5.0, 8.0], [0.1, 1.0]])
    kl_half = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    kl_far = 0.1 * math.log(0.1 / 0.9) + 0.9 * math.log(0.9 / 0.1)
    assert float(cal_scores(candidate_p, candidate_h, lab_p, lab_h, 1)) == pytest.approx(kl_half, rel=1e-12)
    assert float(cal_scores(candidate_p, candidate_h, lab_p, lab_h, 1, normalize=True)) == pytest.approx(
        kl_far, rel=1e-12
    )


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_normalised_ties_go_to_lower_labelled_positions(k):
    # Multiples of (1, 0), (0, 1), (3, 4), (4, 3): normalised rows of one direction are bitwise equal,
    # so every candidate has exact ties, and distinct directions never tie.
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [4.0, 3.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    lab_h = directions[torch.randint(0, 4, (14,), generator=g)] * torch.randint(1, 6, (14, 1), generator=g)
    pool_h = directions[torch.randint(0, 4, (9,), generator=g)] * torch.randint(1, 6, (9, 1), generator=g)
    pool_p, lab_p = _probs(9, 3, 8), _probs(14, 3, 9)
    out = cal_scores(pool_p, pool_h, lab_p, lab_h, k, normalize=True)
    np.testing.assert_allclose(out.numpy(), reference(pool_p, pool_h, lab_p, lab_h, k, True), rtol=1e-10, atol=1e-12)


def test_a_zero_embedding_stays_zero_and_is_equidistant_from_every_unit_row():
    # normalised, the zero candidate is at distance 1 from every labelled row: ties, so the first ones count
    lab_p = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]], dtype=torch.float64)
    lab_h = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    candidate_p = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    out = cal_scores(candidate_p, torch.zeros(1, 2), lab_p, lab_h, 2, normalize=True)
    expected = np.mean([sum(q[c] * math.log(q[c] / [0.6, 0.4][c]) for c in range(2)) for q in lab_p[:2].tolist()])
    assert math.isfinite(float(out)) and float(out) == pytest.approx(expected, rel=1e-12)


def test_normalize_must_be_a_bool():
    p, h = torch.full((3, 2), 0.5), torch.randn(3, 4)
    with pytest.raises(TypeError, match="`normalize` to be a bool"):
        cal_scores(p, h, p, h, 2, normalize=1)


# ----- budget-adaptive neighbour count ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_labelled", "num_classes", "expected"),
    [
        (1, 10, 1),  # fewer labels than classes: still one neighbour
        (20, 10, 1),
        (199, 10, 1),  # 19.9 labels per class
        (200, 10, 2),
        (450, 10, 4),
        (999, 10, 9),
        (1000, 10, 10),  # 100 labels per class: the authors' 10
        (10**6, 2, 10),  # capped
        (600, 2, 10),  # 300 labels per class, as SST-2 at 1 % of its pool
        (200, 14, 1),  # 14 labels per class, as DBpedia at 1 % of 20,000
        (75, 1, 7),
    ],
)
def test_neighbour_count_by_hand(num_labelled, num_classes, expected):
    assert cal_neighbour_count(num_labelled, num_classes) == expected


def test_neighbour_count_follows_its_rule_and_cap():
    for m in range(1, 400, 7):
        for c in (1, 2, 3, 10):
            labels_per_class = m / c
            rule = max(1, min(CAL_NEIGHBOURS, int(labels_per_class // 10)))
            assert cal_neighbour_count(m, c) == rule
            assert cal_neighbour_count(m, c, max_neighbours=3) == min(3, rule)
    assert CAL_NEIGHBOURS == 10  # the authors' num_nei


def test_neighbour_count_refuses_bad_input():
    with pytest.raises(ValueError, match="`num_labelled` to be at least 1, but got 0"):
        cal_neighbour_count(0, 10)
    with pytest.raises(ValueError, match="`num_classes` to be at least 1, but got 0"):
        cal_neighbour_count(10, 0)
    with pytest.raises(ValueError, match="`max_neighbours` to be at least 1, but got 0"):
        cal_neighbour_count(10, 2, max_neighbours=0)
    with pytest.raises(TypeError, match="`num_labelled` to be an int"):
        cal_neighbour_count(10.0, 2)


@pytest.mark.parametrize(("m", "c"), [(7, 3), (60, 2), (250, 2)])
def test_kernel_none_takes_the_adaptive_count(m, c):
    g = torch.Generator().manual_seed(m)
    pool_h, lab_h = torch.randn(15, 3, generator=g), torch.randn(m, 3, generator=g)
    pool_p, lab_p = _probs(15, c, 1), _probs(m, c, 2)
    k = cal_neighbour_count(m, c)
    for normalize in (False, True):
        out = cal_scores(pool_p, pool_h, lab_p, lab_h, None, normalize=normalize)
        np.testing.assert_allclose(out.numpy(), reference(pool_p, pool_h, lab_p, lab_h, k, normalize), rtol=1e-10)


# ----- the strategy ---------------------------------------------------------------------------------------------


def _outputs(n: int, m: int, c: int, seed: int = 0) -> al.PoolOutputs:
    g = torch.Generator().manual_seed(seed)
    labelled = al.PoolOutputs(
        ids=torch.arange(m),
        values={"probs": _probs(m, c, seed + 1).float(), "embeddings": torch.randn(m, 4, generator=g) * 3},
    )
    return al.PoolOutputs(
        ids=torch.arange(1000, 1000 + n),
        values={"probs": _probs(n, c, seed + 2).float(), "embeddings": torch.randn(n, 4, generator=g)},
        labelled=labelled,
    )


def test_strategy_defaults_are_normalised_and_adaptive():
    cal = CAL()
    assert cal.k_neighbours is None and cal.normalize is True
    assert repr(cal) == "CAL(k_neighbours=None, normalize=True)"
    out = _outputs(n=30, m=60, c=2)  # 30 labels per class: 3 neighbours
    lab = out.labelled
    expected = reference(out["probs"], out["embeddings"], lab["probs"], lab["embeddings"], 3, True)
    np.testing.assert_allclose(cal.score(out).numpy(), expected, rtol=1e-6)
    ten = reference(out["probs"], out["embeddings"], lab["probs"], lab["embeddings"], 10, True)
    assert not np.allclose(expected, ten)


@pytest.mark.parametrize(("k", "normalize"), [(10, True), (10, False), (2, False)])
def test_strategy_explicit_settings(k, normalize):
    out = _outputs(n=25, m=12, c=3, seed=4)
    lab = out.labelled
    cal = CAL(k_neighbours=k, normalize=normalize)
    expected = reference(out["probs"], out["embeddings"], lab["probs"], lab["embeddings"], k, normalize)
    np.testing.assert_allclose(cal.score(out).numpy(), expected, rtol=1e-6)
    ids = cal.select(out, 4).ids
    assert torch.equal(ids, out.ids[torch.argsort(torch.from_numpy(expected), descending=True, stable=True)[:4]])


def test_strategy_refuses_bad_arguments():
    with pytest.raises(TypeError, match="`normalize` to be a bool, but got 'yes'"):
        CAL(normalize="yes")
    with pytest.raises(ValueError, match="`k_neighbours` to be an int >= 1, but got 0"):
        CAL(k_neighbours=0)
