"""k-center greedy and BADGE: the memory-bounded kernels against brute-force references built here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_al.functional import diversity as diversity_module
from lightning_al.functional.diversity import badge, covering_radius, kcenter_greedy


# ----- independent references (full matrices) ------------------------------------------------
def kcenter_reference(x: np.ndarray, labelled: np.ndarray, k: int) -> tuple[list[int], float]:
    """Greedy farthest-first on the full (N, N) float64 distance matrix; returns picks and covering radius."""
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    centres = list(np.flatnonzero(labelled))
    # documented rule without labels: the first pick is the point farthest from the mean
    nearest = dist[:, centres].min(axis=1) if centres else np.sqrt(((x - x.mean(axis=0)) ** 2).sum(-1))
    picks = []
    for _ in range(k):
        candidates = np.where(labelled | np.isin(np.arange(len(x)), picks), -np.inf, nearest)
        pick = int(np.argmax(candidates))  # numpy: first maximum
        picks.append(pick)
        nearest = dist[:, pick] if len(picks) == 1 and not centres else np.minimum(nearest, dist[:, pick])
    radius = dist[:, centres + picks].min(axis=1).max()
    return picks, float(radius)


def gradient_embeddings(probs: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Explicit (N, C * D) float64 matrix of g_i = (p_i - onehot(argmax p_i)) ⊗ h_i."""
    probs, emb = probs.double(), emb.double()
    residual = probs - torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).double()
    return (residual[:, :, None] * emb[:, None, :]).reshape(len(probs), -1)


def badge_reference(probs: torch.Tensor, emb: torch.Tensor, k: int, seed: int) -> list[int]:
    """k-means++ seeding on the explicit gradient embeddings, same draw sequence as the kernel."""
    grads = gradient_embeddings(probs, emb)
    sq_norms = (grads**2).sum(1)
    generator = torch.Generator().manual_seed(seed)
    picks = [int(sq_norms.argmax())]
    nearest = torch.full((len(grads),), float("inf"), dtype=torch.float64)
    for _ in range(k - 1):
        nearest = torch.minimum(nearest, ((grads - grads[picks[-1]]) ** 2).sum(1))
        nearest[picks] = 0.0
        if nearest.sum() > 0:
            picks.append(int(torch.multinomial(nearest, 1, generator=generator)))
        else:
            masked = sq_norms.clone()
            masked[picks] = -float("inf")
            picks.append(int(masked.argmax()))
    return picks


def random_probs(n: int, c: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2.0 * torch.randn(n, c, generator=g, dtype=torch.float64), dim=1).to(dtype)


# ----- k-center greedy -------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_labelled", [0, 1, 7])
def test_kcenter_matches_brute_force(seed, num_labelled):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    labelled = torch.zeros(60, dtype=torch.bool)
    labelled[torch.randperm(60, generator=g)[:num_labelled]] = True
    picks = kcenter_greedy(x, labelled, 12)
    ref_picks, ref_radius = kcenter_reference(x.numpy(), labelled.numpy(), 12)
    assert picks.dtype == torch.long
    assert picks.tolist() == ref_picks
    assert not labelled[picks].any()
    centres = labelled.clone()
    centres[picks] = True
    assert covering_radius(x, centres).item() == pytest.approx(ref_radius, rel=1e-9)


def test_kcenter_float32_matches_float64_reference():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(80, 16, generator=g)
    labelled = torch.zeros(80, dtype=torch.bool)
    labelled[:3] = True
    ref_picks, _ = kcenter_reference(x.double().numpy(), labelled.numpy(), 10)
    assert kcenter_greedy(x, labelled, 10).tolist() == ref_picks


def test_kcenter_hand_case_and_no_labelled_rule():
    x = torch.tensor([[0.0], [1.0], [5.0], [10.0], [-3.0]])
    # From {0}: farthest is 10 (pos 3), then 5 (pos 2, distance 5 from both 0 and 10), then -3 (pos 4).
    labelled = torch.tensor([True, False, False, False, False])
    assert kcenter_greedy(x, labelled, 3).tolist() == [3, 2, 4]
    # No labels: mean is 2.6; farthest from it is 10 (pos 3), then -3 (pos 4), then 5 (pos 2).
    assert kcenter_greedy(x, torch.zeros(5, dtype=torch.bool), 3).tolist() == [3, 4, 2]


def test_kcenter_ties_go_to_lower_position():
    # Points at ±1 around the labelled origin are tied; then ±2 duplicates.
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])
    labelled = torch.tensor([True, False, False, False, False])
    # All four stay at distance 1 from the origin (their nearest centre) → lowest position each time.
    assert kcenter_greedy(x, labelled, 4).tolist() == [1, 2, 3, 4]
    # Labelled (0, 1): (0,-1) is at 2, (±1, 0) tie at √2 → 3, then both at √2 still → 2, then 4.
    assert kcenter_greedy(x, torch.tensor([False, True, False, False, False]), 3).tolist() == [3, 2, 4]
    dup = torch.tensor([[0.0], [3.0], [3.0], [3.0]])
    assert kcenter_greedy(dup, torch.tensor([True, False, False, False]), 3).tolist() == [1, 2, 3]


def test_kcenter_chunking_gives_identical_results(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(90, 6, generator=g, dtype=torch.float64)
    labelled = torch.zeros(90, dtype=torch.bool)
    labelled[torch.randperm(90, generator=g)[:20]] = True
    full = kcenter_greedy(x, labelled, 15)
    centres = labelled.clone()
    centres[full] = True
    radius = covering_radius(x, centres)
    monkeypatch.setattr(diversity_module, "_CHUNK_ELEMENTS", 7)
    assert kcenter_greedy(x, labelled, 15).tolist() == full.tolist()
    assert covering_radius(x, centres).item() == pytest.approx(radius.item(), rel=1e-12)
    assert (
        kcenter_greedy(x, torch.zeros(90, dtype=torch.bool), 5).tolist()
        == kcenter_reference(x.numpy(), np.zeros(90, dtype=bool), 5)[0]
    )


def test_kcenter_greedy_is_a_two_approximation_on_small_pool():
    # Brute-force the optimal k-center radius over all subsets of size 3 (no labelled points).
    import itertools

    g = torch.Generator().manual_seed(11)
    x = torch.randn(12, 2, generator=g, dtype=torch.float64)
    dist = torch.cdist(x, x)
    subsets = torch.tensor(list(itertools.combinations(range(12), 3)))  # (220, 3)
    best = dist[:, subsets].min(dim=2).values.max(dim=0).values.min().item()
    picks = kcenter_greedy(x, torch.zeros(12, dtype=torch.bool), 3)
    centres = torch.zeros(12, dtype=torch.bool)
    centres[picks] = True
    # The first pick is fixed by the mean rule rather than arbitrary; the greedy bound still holds.
    assert covering_radius(x, centres).item() <= 2 * best + 1e-12


def test_kcenter_k_bounds_and_input_checks():
    x = torch.randn(6, 3)
    labelled = torch.tensor([True, True, False, False, False, False])
    assert sorted(kcenter_greedy(x, labelled, 4).tolist()) == [2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"Expected `k` to be in \[1, 4\].*but got 5"):
        kcenter_greedy(x, labelled, 5)
    with pytest.raises(ValueError, match=r"Expected `k`.*but got 0"):
        kcenter_greedy(x, labelled, 0)
    with pytest.raises(TypeError, match="Expected `k` to be an int, but got float"):
        kcenter_greedy(x, labelled, 2.0)
    with pytest.raises(ValueError, match=r"Expected `k` to be in \[1, 0\]"):
        kcenter_greedy(x, torch.ones(6, dtype=torch.bool), 1)
    with pytest.raises(TypeError, match=r"Expected `labelled_mask_N` to have dtype torch\.bool"):
        kcenter_greedy(x, labelled.long(), 1)
    with pytest.raises(ValueError, match=r"Expected `labelled_mask_N` to have shape \(6,\)"):
        kcenter_greedy(x, labelled[:5], 1)
    with pytest.raises(ValueError, match=r"Expected `embeddings_N_D` to have shape \(N, D\)"):
        kcenter_greedy(x[0], labelled, 1)
    with pytest.raises(TypeError, match="Expected `embeddings_N_D` to hold floating-point"):
        kcenter_greedy(x.long(), labelled, 1)
    bad = x.clone()
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"Expected `embeddings_N_D` to be finite, but rows \[4\]"):
        kcenter_greedy(bad, labelled, 1)
    bad[4, 1] = float("inf")
    with pytest.raises(ValueError, match="to be finite"):
        covering_radius(bad, labelled)
    with pytest.raises(ValueError, match="Expected `centre_mask_N` to mark at least one centre"):
        covering_radius(x, torch.zeros(6, dtype=torch.bool))


# ----- BADGE -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_badge_matches_explicit_gradient_embeddings(seed):
    probs = random_probs(40, 4, seed)
    emb = torch.randn(40, 6, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    picks = badge(probs, emb, 15, generator=torch.Generator().manual_seed(seed))
    assert picks.tolist() == badge_reference(probs, emb, 15, seed)
    assert len(set(picks.tolist())) == 15


def test_badge_float32_inputs_match_reference():
    probs = random_probs(50, 5, 7, dtype=torch.float32)
    emb = torch.randn(50, 8, generator=torch.Generator().manual_seed(8))
    picks = badge(probs, emb, 10, generator=torch.Generator().manual_seed(4))
    assert picks.tolist() == badge_reference(probs, emb, 10, 4)


def test_badge_factorised_distance_equals_materialised():
    # The identity used by the kernel, checked directly on explicit vectors.
    probs = random_probs(12, 3, 9)
    emb = torch.randn(12, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    grads = gradient_embeddings(probs, emb)
    residual = probs - torch.nn.functional.one_hot(probs.argmax(1), 3).double()
    factorised = (
        (residual**2).sum(1)[:, None] * (emb**2).sum(1)[:, None]
        + ((residual**2).sum(1) * (emb**2).sum(1))[None, :]
        - 2 * (residual @ residual.T) * (emb @ emb.T)
    )
    torch.testing.assert_close(factorised, torch.cdist(grads, grads) ** 2, atol=1e-10, rtol=1e-10)


def test_badge_confident_point_has_zero_gradient_and_is_not_first():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.4, 0.4, 0.2]])
    emb = torch.tensor([[100.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # ‖a‖²‖h‖²: row 0 → 0 (one-hot); row 1 → (0.25+0.09+0.04)·1 = 0.38; row 2 → (0.04+0.09+0.01)·1 = 0.14;
    # row 3 → (0.36+0.16+0.04)·2 = 1.12 → first pick.
    assert gradient_embeddings(probs[:1], emb[:1]).abs().max().item() == 0.0
    for seed in range(5):
        picks = badge(probs, emb, 3, generator=torch.Generator().manual_seed(seed))
        assert picks[0].item() == 3
        assert 0 not in picks[:1].tolist()


def test_badge_all_zero_distribution_falls_back_to_largest_norm():
    # Rows 0 and 1 are one-hot: g = 0 (duplicates of each other). Rows 2-4 are identical, ‖g‖² = 0.32·9.
    # First pick: row 2 (largest ‖g‖, lowest position). Then only rows 0/1 have D > 0 (D² = ‖g_2‖²):
    # one of them is drawn, after which every unchosen point has D = 0 (rows 3, 4 duplicate row 2, the
    # other zero row duplicates the drawn one) → deterministic fallback by ‖g‖, ties by position.
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4]])
    emb = torch.tensor([[1.0], [2.0], [3.0], [3.0], [3.0]])
    seen = set()
    for seed in range(6):
        picks = badge(probs, emb, 5, generator=torch.Generator().manual_seed(seed)).tolist()
        assert picks[0] == 2
        assert picks[1] in (0, 1)
        assert picks[2:] == [3, 4, 1 - picks[1]]
        assert picks == badge_reference(probs.double(), emb.double(), 5, seed)
        seen.add(picks[1])
    assert seen == {0, 1}  # both zero-gradient rows carry the same probability mass


def test_badge_determinism_and_seed_dependence():
    probs = random_probs(200, 6, 1, dtype=torch.float32)
    emb = torch.randn(200, 10, generator=torch.Generator().manual_seed(2))
    first = badge(probs, emb, 20, generator=torch.Generator().manual_seed(0))
    again = badge(probs, emb, 20, generator=torch.Generator().manual_seed(0))
    assert first.tolist() == again.tolist()
    assert len(set(first.tolist())) == 20
    others = {tuple(badge(probs, emb, 20, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(1, 5)}
    assert any(o != tuple(first.tolist()) for o in others)
    assert all(o[0] == first[0].item() for o in others)  # the first centre is deterministic


def test_badge_k_bounds_and_input_checks():
    probs = random_probs(5, 3, 0, dtype=torch.float32)
    emb = torch.randn(5, 2)
    assert sorted(badge(probs, emb, 5, generator=torch.Generator().manual_seed(0)).tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"Expected `k` to be in \[1, 5\].*but got 6"):
        badge(probs, emb, 6)
    with pytest.raises(ValueError, match=r"Expected `k`.*but got 0"):
        badge(probs, emb, 0)
    with pytest.raises(ValueError, match="Expected `embeddings_N_D` to have 5 rows"):
        badge(probs, emb[:4], 1)
    with pytest.raises(ValueError, match="Expected each distribution in `probs_N_C` to sum to 1"):
        badge(probs * 0.5, emb, 1)
    with pytest.raises(TypeError, match=r"Expected `generator` to be a torch\.Generator or None, but got int"):
        badge(probs, emb, 2, generator=0)
    bad = emb.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"Expected `embeddings_N_D` to be finite, but rows \[2\]"):
        badge(probs, bad, 1)
