"""Property-based tests of every kernel in ``lightning_al.functional``: what must hold for any valid input.

Hypothesis draws small pools (N <= 8, T <= 5, C <= 5) whose distributions mix random, sparse,
softmax-of-logits, near-one-hot, one-hot and uniform rows, and embeddings on an integer grid
(many exact ties and duplicates) or spread out. Each test states one consequence of a kernel's
definition: finite outputs and their ranges, equivariance to the order of the samples,
selections that are distinct, in range and of the requested size, and greedy choices that are
optimal up to ties against a brute-force reference written here. Where a kernel breaks ties by
position, permuting the samples may legitimately change the pick, so those checks draw tie-free
inputs (seeded continuous draws) and ``assume`` a visible gap between the best and the runner-up.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lightning_al.functional import (
    badge,
    bald,
    batchbald,
    batchbald_with_gains,
    cal_scores,
    covering_radius,
    egl,
    entropy,
    expected_entropy,
    forgetting_counts,
    kcenter_greedy,
    kl_to_consensus,
    label_dispersion,
    least_confidence,
    loss_prediction_ranking_loss,
    margin,
    max_cover_greedy,
    mean_std,
    nearest_to_centres,
    predictive_entropy,
    topk_select,
    variation_ratio,
    vote_entropy,
    weighted_kmeans,
)
from lightning_al.functional.mal import cosine_logits, mal_score

# Modest example counts and no per-example deadline: the file must stay fast on a busy machine.
PROPERTY = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = st.integers(0, 2**32 - 1)
DTYPES = st.sampled_from([torch.float64, torch.float32])
FLOAT64 = st.just(torch.float64)
# Absolute slack for float32 results (float64 results get 1e-9).
TOL32 = 1e-5


def tol_for(dtype: torch.dtype) -> float:
    return TOL32 if dtype == torch.float32 else 1e-9


# ----- strategies ---------------------------------------------------------------------------------


@st.composite
def distributions(draw, num_classes: int) -> np.ndarray:
    """One float64 distribution over ``num_classes``: random, sparse, logits, near-one-hot, one-hot or uniform."""
    kind = draw(st.sampled_from(["random", "sparse", "logits", "near_one_hot", "one_hot", "uniform"]))
    if kind == "uniform":
        return np.full(num_classes, 1.0 / num_classes)
    if kind == "one_hot":
        row = np.zeros(num_classes)
        row[draw(st.integers(0, num_classes - 1))] = 1.0
        return row
    if kind == "logits":
        logits = np.array(draw(st.lists(st.floats(-30, 30), min_size=num_classes, max_size=num_classes)))
        row = np.exp(logits - logits.max())
        return row / row.sum()
    low = 0.0 if kind == "sparse" else 0.01
    weights = np.array(draw(st.lists(st.floats(low, 1.0), min_size=num_classes, max_size=num_classes)))
    if kind == "near_one_hot":
        top = draw(st.integers(0, num_classes - 1))
        eps = draw(st.sampled_from([1e-12, 1e-7, 1e-3, 5e-2]))
        weights[top] = 0.0
        row = eps * weights / weights.sum() if weights.sum() > 0 else np.zeros(num_classes)
        row[top] = 1.0 - row.sum()
        return row
    if weights.sum() == 0:
        weights[0] = 1.0
    return weights / weights.sum()


@st.composite
def probs_n_c(draw, max_n: int = 8, max_c: int = 5, dtypes=DTYPES) -> torch.Tensor:
    n, c = draw(st.integers(1, max_n)), draw(st.integers(2, max_c))
    rows = np.stack([draw(distributions(c)) for _ in range(n)])
    return torch.from_numpy(rows).to(draw(dtypes))


@st.composite
def probs_n_t_c(draw, max_n: int = 6, max_t: int = 5, max_c: int = 4, min_t: int = 1, dtypes=DTYPES) -> torch.Tensor:
    """``(N, T, C)``; about a quarter of the samples have members that all agree."""
    n, t, c = draw(st.integers(1, max_n)), draw(st.integers(min_t, max_t)), draw(st.integers(2, max_c))
    samples = []
    for _ in range(n):
        if draw(st.integers(0, 3)) == 0:
            samples.append(np.tile(draw(distributions(c)), (t, 1)))
        else:
            samples.append(np.stack([draw(distributions(c)) for _ in range(t)]))
    return torch.from_numpy(np.stack(samples)).to(draw(dtypes))


@st.composite
def embeddings(draw, n: int, d: int, dtypes=FLOAT64) -> torch.Tensor:
    """``(n, d)`` points on the integer grid [-3, 3] (ties, duplicates) or spread floats in [-10, 10]."""
    grid = draw(st.booleans())
    values = st.integers(-3, 3).map(float) if grid else st.floats(-10, 10, allow_subnormal=False)
    flat = draw(st.lists(values, min_size=n * d, max_size=n * d))
    return torch.tensor(flat, dtype=torch.float64).reshape(n, d).to(draw(dtypes))


def dirichlet(seed: int, *shape: int, alpha: float = 1.0) -> torch.Tensor:
    """Seeded float64 Dirichlet draws of shape ``shape`` (last axis on the simplex): tie-free in practice."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.dirichlet(np.full(shape[-1], alpha), size=shape[:-1]))


def normal(seed: int, *shape: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=shape))


def permutation(data, n: int) -> torch.Tensor:
    return torch.tensor(data.draw(st.permutations(range(n))), dtype=torch.long)


# ----- references -----------------------------------------------------------------------------


def entropy_np(p: np.ndarray) -> np.ndarray:
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def joint_mutual_information(p_N_T_C: np.ndarray, chosen: list[int]) -> float:
    """``H[y_A] - sum_i E_t H[p_t(y_i)]`` by enumerating every label configuration of ``A``."""
    joint_T_M = np.ones((p_N_T_C.shape[1], 1))
    for i in chosen:
        joint_T_M = (joint_T_M[:, :, None] * p_N_T_C[i][:, None, :]).reshape(p_N_T_C.shape[1], -1)
    return float(entropy_np(joint_T_M.mean(axis=0)) - sum(entropy_np(p_N_T_C[i]).mean() for i in chosen))


def sq_dists(x_N_D: torch.Tensor, y_M_D: torch.Tensor) -> torch.Tensor:
    return (x_N_D.double()[:, None, :] - y_M_D.double()[None, :, :]).square().sum(-1)


def radius(x_N_D: torch.Tensor, centres: list[int]) -> float:
    return float(sq_dists(x_N_D, x_N_D[centres]).amin(dim=1).max().sqrt())


def gradient_embeddings(probs_N_C: torch.Tensor, h_N_D: torch.Tensor) -> torch.Tensor:
    """BADGE's ``(p - e_argmax) ⊗ h``, materialised, float64 ``(N, C * D)``."""
    p = probs_N_C.double()
    residual = p - torch.nn.functional.one_hot(p.argmax(dim=1), p.shape[1]).double()
    return (residual[:, :, None] * h_N_D.double()[:, None, :]).reshape(p.shape[0], -1)


def cover_value(unit_N_D: torch.Tensor, chosen: list[int], reference: list[int]) -> float:
    if not chosen:
        return 0.0
    return float((unit_N_D[reference] @ unit_N_D[chosen].T).amax(dim=1).sum())


def unit_rows(x_N_D: torch.Tensor) -> torch.Tensor:
    x = x_N_D.double()
    return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


def kmeans_objective(x_N_D: torch.Tensor, w_N: torch.Tensor, centres_K_D: torch.Tensor) -> float:
    return float((w_N.double() * sq_dists(x_N_D, centres_K_D).amin(dim=1)).sum())


def assert_selection(picks: torch.Tensor, size: int, allowed: torch.Tensor) -> None:
    """``size`` distinct LongTensor positions, each marked in the bool mask ``allowed``."""
    assert picks.dtype == torch.long and picks.shape == (size,)
    assert picks.unique().numel() == size
    assert bool(((picks >= 0) & (picks < allowed.numel())).all())
    assert bool(allowed[picks].all())


# ----- uncertainty: least_confidence, margin, entropy -----------------------------------------------

UNCERTAINTY = {"least_confidence": least_confidence, "margin": margin, "entropy": entropy}


@PROPERTY
@given(probs=probs_n_c())
def test_uncertainty_scores_are_finite_and_in_range(probs):
    n, c = probs.shape
    tol = tol_for(probs.dtype)
    lc, mg, h = least_confidence(probs), margin(probs), entropy(probs)
    for score in (lc, mg, h):
        assert score.shape == (n,) and score.dtype == probs.dtype and bool(torch.isfinite(score).all())
    assert bool((lc >= -tol).all() and (lc <= 1 - 1 / c + tol).all())
    assert bool((mg >= -tol).all() and (mg <= 1 + tol).all())
    assert bool((h >= -tol).all() and (h <= math.log(c) + tol).all())


@PROPERTY
@given(probs=probs_n_c())
def test_uncertainty_scores_are_ordered_least_confidence_margin_entropy(probs):
    # 1 - p1 <= 1 - p1 + p2 (margin), 1 - p1 <= -log p1 <= H (entropy), and p2 <= 1 - p1 (margin <= 2 LC)
    tol = tol_for(probs.dtype)
    lc, mg, h = least_confidence(probs).double(), margin(probs).double(), entropy(probs).double()
    assert bool((lc <= mg + tol).all())
    assert bool((mg <= 2 * lc + tol).all())
    assert bool((lc <= h + tol).all())


@PROPERTY
@given(probs=probs_n_c(), data=st.data())
def test_uncertainty_scores_follow_sample_order_and_ignore_class_order(probs, data):
    n, c = probs.shape
    samples, classes = permutation(data, n), permutation(data, c)
    for name, score in UNCERTAINTY.items():
        expected = score(probs)
        torch.testing.assert_close(score(probs[samples]), expected[samples], msg=name)
        torch.testing.assert_close(score(probs[:, classes]), expected, msg=name)


@PROPERTY
@given(n=st.integers(1, 4), c=st.integers(2, 6), hot=st.data())
def test_uncertainty_extremes_one_hot_is_zero_uniform_is_maximal(n, c, hot):
    one_hot = torch.nn.functional.one_hot(torch.tensor(hot.draw(st.lists(st.integers(0, c - 1), min_size=n))), c)
    one_hot = one_hot.double()
    uniform = torch.full((n, c), 1.0 / c, dtype=torch.float64)
    for score in UNCERTAINTY.values():
        torch.testing.assert_close(score(one_hot), torch.zeros(one_hot.shape[0], dtype=torch.float64))
    torch.testing.assert_close(least_confidence(uniform), torch.full((n,), 1 - 1 / c, dtype=torch.float64))
    torch.testing.assert_close(margin(uniform), torch.ones(n, dtype=torch.float64))
    torch.testing.assert_close(entropy(uniform), torch.full((n,), math.log(c), dtype=torch.float64))


# ----- selection: topk_select ----------------------------------------------------------------------

SCORE_VALUES = st.floats(-1e6, 1e6, allow_subnormal=False) | st.sampled_from([0.0, 1.0, -1.0])


@PROPERTY
@given(scores=st.lists(SCORE_VALUES, min_size=1, max_size=12), data=st.data())
def test_topk_select_picks_the_k_highest_highest_first_ties_to_lower_positions(scores, data):
    scores = torch.tensor(scores, dtype=torch.float64)
    k = data.draw(st.integers(1, scores.numel()))
    picks = topk_select(scores, k)
    assert_selection(picks, k, torch.ones(scores.numel(), dtype=torch.bool))
    left_out = torch.ones(scores.numel(), dtype=torch.bool)
    left_out[picks] = False
    if left_out.any():
        assert float(scores[picks].min()) >= float(scores[left_out].max())
    # highest first; among equal scores, lower positions first (and the lowest ones taken)
    assert [(-float(scores[i]), int(i)) for i in picks] == sorted((-float(scores[i]), int(i)) for i in picks)
    boundary = scores[picks].min()
    at_boundary = (scores == boundary).nonzero().flatten()
    taken = sorted(int(i) for i in picks if scores[i] == boundary)
    assert taken == at_boundary[: len(taken)].tolist()
    # a larger k extends the same query
    assert torch.equal(topk_select(scores, scores.numel())[:k], picks)


@PROPERTY
@given(scores=st.lists(SCORE_VALUES, min_size=1, max_size=12), data=st.data())
def test_topk_select_under_a_permutation_keeps_the_selected_values_and_the_set_when_tie_free(scores, data):
    scores = torch.tensor(scores, dtype=torch.float64)
    k = data.draw(st.integers(1, scores.numel()))
    perm = permutation(data, scores.numel())
    picks, picks_perm = topk_select(scores, k), topk_select(scores[perm], k)
    # with ties the positions may differ, never the selected values
    assert torch.equal(scores[perm][picks_perm], scores[picks])
    if scores.unique().numel() == scores.numel():
        assert torch.equal(perm[picks_perm], picks)


# ----- bayesian: the BALD family and query by committee ------------------------------------------------

BAYESIAN = {
    "predictive_entropy": predictive_entropy,
    "expected_entropy": expected_entropy,
    "bald": bald,
    "variation_ratio": variation_ratio,
    "mean_std": mean_std,
    "vote_entropy": vote_entropy,
    "kl_to_consensus": kl_to_consensus,
}
VOTE_FREE = ("predictive_entropy", "expected_entropy", "bald", "mean_std", "kl_to_consensus")


@PROPERTY
@given(probs=probs_n_t_c())
def test_bayesian_scores_are_finite_and_in_range(probs):
    n, t, c = probs.shape
    tol = tol_for(probs.dtype)
    scores = {name: kernel(probs) for name, kernel in BAYESIAN.items()}
    for name, score in scores.items():
        assert score.shape == (n,) and score.dtype == probs.dtype, name
        assert bool(torch.isfinite(score).all()) and bool((score >= 0).all()), name
    log_c, log_min = math.log(c), math.log(min(t, c))
    assert bool((scores["predictive_entropy"] <= log_c + tol).all())
    assert bool((scores["expected_entropy"] <= log_c + tol).all())
    assert bool((scores["bald"] <= log_min + tol).all())
    assert bool((scores["kl_to_consensus"] <= log_min + tol).all())
    assert bool((scores["vote_entropy"] <= log_min + tol).all())
    assert bool((scores["variation_ratio"] <= 1 - 1 / min(t, c) + tol).all())
    assert bool((scores["mean_std"] <= 0.5 + tol).all())


@PROPERTY
@given(probs=probs_n_t_c())
def test_bald_is_between_zero_and_the_entropy_of_the_mean_and_splits_it(probs):
    tol = tol_for(probs.dtype)
    mutual_information, total, aleatoric = bald(probs), predictive_entropy(probs), expected_entropy(probs)
    assert bool((mutual_information >= -tol).all())
    assert bool((mutual_information <= total + tol).all())
    assert bool((aleatoric <= total + tol).all())  # entropy is concave
    torch.testing.assert_close(mutual_information.double(), (total.double() - aleatoric.double()).clamp_min(0))
    torch.testing.assert_close(kl_to_consensus(probs).double(), mutual_information.double(), rtol=0, atol=10 * tol)
    torch.testing.assert_close(total, entropy(probs.double().mean(dim=1)).to(probs.dtype))


@PROPERTY
@given(probs=probs_n_t_c())
def test_vote_counts_are_whole_votes_and_agree_on_unanimity(probs):
    t = probs.shape[1]
    ratio, votes = variation_ratio(probs).double(), vote_entropy(probs).double()
    modal_votes = (1 - ratio) * t
    torch.testing.assert_close(modal_votes, modal_votes.round(), rtol=0, atol=1e-4)
    assert bool((modal_votes.round() >= 1).all())
    assert torch.equal(ratio.abs() < 1e-6, votes.abs() < 1e-6)  # zero together: a unanimous vote


@PROPERTY
@given(probs=probs_n_t_c(), data=st.data())
def test_bayesian_scores_follow_sample_order_and_ignore_member_order(probs, data):
    n, t, _ = probs.shape
    samples, members = permutation(data, n), permutation(data, t)
    tol = tol_for(probs.dtype)
    for name, kernel in BAYESIAN.items():
        expected = kernel(probs)
        torch.testing.assert_close(kernel(probs[samples]), expected[samples], rtol=0, atol=tol, msg=name)
        torch.testing.assert_close(kernel(probs[:, members]), expected, rtol=0, atol=tol, msg=name)


@PROPERTY
@given(probs=probs_n_t_c(), data=st.data())
def test_scores_without_votes_ignore_class_order(probs, data):
    # vote-based scores break argmax ties by class index, so only the others are class-symmetric
    classes = permutation(data, probs.shape[2])
    tol = tol_for(probs.dtype)
    for name in VOTE_FREE:
        torch.testing.assert_close(BAYESIAN[name](probs[:, :, classes]), BAYESIAN[name](probs), rtol=0, atol=tol)


@PROPERTY
@given(probs=probs_n_t_c(max_t=1))
def test_a_single_member_has_no_disagreement(probs):
    zeros = torch.zeros(probs.shape[0], dtype=probs.dtype)
    for name in ("bald", "variation_ratio", "mean_std", "vote_entropy", "kl_to_consensus"):
        torch.testing.assert_close(BAYESIAN[name](probs), zeros, rtol=0, atol=tol_for(probs.dtype), msg=name)
    torch.testing.assert_close(expected_entropy(probs), predictive_entropy(probs))


@PROPERTY
@given(row=st.integers(2, 5).flatmap(lambda c: st.tuples(distributions(c))), t=st.integers(1, 5))
def test_agreeing_members_score_zero_disagreement(row, t):
    probs = torch.from_numpy(np.tile(row[0], (1, t, 1)))
    for name in ("bald", "variation_ratio", "mean_std", "vote_entropy", "kl_to_consensus"):
        torch.testing.assert_close(BAYESIAN[name](probs), torch.zeros(1, dtype=torch.float64), rtol=0, atol=1e-9)


# ----- batch_bald: batchbald, batchbald_with_gains --------------------------------------------------


@PROPERTY
@given(probs=probs_n_t_c(max_n=7, max_t=4, dtypes=FLOAT64), data=st.data())
def test_batchbald_picks_are_greedy_up_to_ties_with_exact_gains(probs, data):
    n = probs.shape[0]
    batch_size = data.draw(st.integers(1, min(n, 4)))
    picks, gains = batchbald_with_gains(probs, batch_size)
    assert_selection(picks, batch_size, torch.ones(n, dtype=torch.bool))
    assert torch.equal(batchbald(probs, batch_size), picks)
    p, chosen = probs.numpy(), []
    for pick, gain in zip(picks.tolist(), gains.tolist(), strict=True):
        base = joint_mutual_information(p, chosen)
        candidates = {i: joint_mutual_information(p, [*chosen, i]) - base for i in range(n) if i not in chosen}
        assert candidates[pick] >= max(candidates.values()) - 1e-9
        assert math.isclose(gain, candidates[pick], abs_tol=1e-9)
        chosen.append(pick)
    assert math.isclose(float(gains.sum()), joint_mutual_information(p, chosen), abs_tol=1e-9)
    assert bool((gains[1:] <= gains[:-1] + 1e-9).all())  # submodular: gains never grow
    assert math.isclose(float(gains[0]), float(bald(probs).max()), abs_tol=1e-9)


@PROPERTY
@given(seed=SEEDS, n=st.integers(2, 7), t=st.integers(2, 4), c=st.integers(2, 4), data=st.data())
def test_batchbald_picks_follow_a_permutation_of_a_tie_free_pool(seed, n, t, c, data):
    probs = dirichlet(seed, n, t, c, alpha=0.5)
    batch_size = data.draw(st.integers(1, min(n, 4)))
    picks = batchbald(probs, batch_size)
    p, chosen = probs.numpy(), []
    for pick in picks.tolist():
        base = joint_mutual_information(p, chosen)
        gains = sorted(joint_mutual_information(p, [*chosen, i]) - base for i in range(n) if i not in chosen)
        assume(len(gains) == 1 or gains[-1] - gains[-2] > 1e-7)
        chosen.append(pick)
    perm = permutation(data, n)
    assert torch.equal(perm[batchbald(probs[perm], batch_size)], picks)


@PROPERTY
@given(probs=probs_n_t_c(max_n=8, max_c=4), num_samples=st.integers(1, 4), seed=SEEDS, data=st.data())
def test_batchbald_sampled_regime_picks_distinct_points_reproducibly(probs, num_samples, seed, data):
    n = probs.shape[0]
    batch_size = data.draw(st.integers(1, n))
    runs = [batchbald(probs, batch_size, num_samples, torch.Generator().manual_seed(seed)) for _ in range(2)]
    assert_selection(runs[0], batch_size, torch.ones(n, dtype=torch.bool))
    assert torch.equal(runs[0], runs[1])


# ----- diversity: kcenter_greedy, covering_radius, badge --------------------------------------------


@st.composite
def pool_with_labels(draw, max_n: int = 8, max_d: int = 3, dtypes=FLOAT64):
    n, d = draw(st.integers(2, max_n)), draw(st.integers(1, max_d))
    x = draw(embeddings(n, d, dtypes))
    labelled = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    if labelled.all():
        labelled[draw(st.integers(0, n - 1))] = False
    k = draw(st.integers(1, int((~labelled).sum())))
    return x, labelled, k


def kcenter_distances(x: torch.Tensor, labelled: torch.Tensor, picks: list[int]) -> list[torch.Tensor]:
    """Per step of a farthest-first run through ``picks``: float64 squared distance of every point to the centres."""
    steps, centres = [], labelled.nonzero().flatten().tolist()
    for pick in picks:
        if centres:
            steps.append(sq_dists(x, x[centres]).amin(dim=1))
        else:  # no centre yet: distance to the pool mean
            steps.append(sq_dists(x, x.double().mean(dim=0, keepdim=True))[:, 0])
        centres.append(pick)
    return steps


@PROPERTY
@given(pool=pool_with_labels(dtypes=DTYPES))
def test_kcenter_picks_the_farthest_point_at_every_step_up_to_ties(pool):
    x, labelled, k = pool
    picks = kcenter_greedy(x, labelled, k)
    assert_selection(picks, k, ~labelled)
    scale = 1 + 4 * float(x.double().square().sum(dim=1).max())
    slack = scale * (1e-4 if x.dtype == torch.float32 else 1e-9)
    available = ~labelled
    for pick, dist in zip(picks.tolist(), kcenter_distances(x, labelled, picks.tolist()), strict=True):
        assert float(dist[pick]) >= float(dist[available].max()) - slack
        available[pick] = False


@PROPERTY
@given(pool=pool_with_labels())
def test_kcenter_query_grows_by_prefix_and_its_covering_radius_never_grows(pool):
    x, labelled, _ = pool
    full = kcenter_greedy(x, labelled, int((~labelled).sum()))
    radii = []
    for k in range(1, full.numel() + 1):
        assert torch.equal(kcenter_greedy(x, labelled, k), full[:k])
        centres = labelled.clone()
        centres[full[:k]] = True
        radii.append(float(covering_radius(x, centres)))
    assert all(later <= earlier + 1e-9 for earlier, later in itertools.pairwise(radii))
    assert radii[-1] == 0.0  # every point is a centre


@PROPERTY
@given(pool=pool_with_labels(max_n=7))
def test_kcenter_is_a_two_approximation_of_the_best_covering(pool):
    x, labelled, k = pool
    known = labelled.nonzero().flatten().tolist()
    unlabelled = (~labelled).nonzero().flatten().tolist()
    greedy = radius(x, known + kcenter_greedy(x, labelled, k).tolist())
    best = min(radius(x, known + list(extra)) for extra in itertools.combinations(unlabelled, k))
    assert greedy <= 2 * best + 1e-9


@PROPERTY
@given(seed=SEEDS, n=st.integers(2, 8), d=st.integers(1, 3), data=st.data())
def test_kcenter_picks_follow_a_permutation_of_a_tie_free_pool(seed, n, d, data):
    x = normal(seed, n, d)
    labelled = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    assume(not labelled.all())
    k = data.draw(st.integers(1, int((~labelled).sum())))
    picks = kcenter_greedy(x, labelled, k)
    available = ~labelled
    for pick, dist in zip(picks.tolist(), kcenter_distances(x, labelled, picks.tolist()), strict=True):
        best_two = dist[available].topk(min(2, int(available.sum()))).values
        assume(best_two.numel() == 1 or float(best_two[0] - best_two[1]) > 1e-6)
        available[pick] = False
    perm = permutation(data, n)
    assert torch.equal(perm[kcenter_greedy(x[perm], labelled[perm], k)], picks)


@PROPERTY
@given(pool=pool_with_labels(dtypes=DTYPES), data=st.data())
def test_covering_radius_matches_brute_force_and_ignores_order(pool, data):
    x, labelled, _ = pool
    centres = labelled.clone()
    centres[data.draw(st.integers(0, x.shape[0] - 1))] = True
    value = float(covering_radius(x, centres))
    scale = 1 + 4 * float(x.double().square().sum(dim=1).max())
    slack = math.sqrt(scale * (1e-4 if x.dtype == torch.float32 else 1e-9))
    assert value >= 0 and math.isfinite(value)
    assert math.isclose(value, radius(x, centres.nonzero().flatten().tolist()), abs_tol=slack)
    perm = permutation(data, x.shape[0])
    assert math.isclose(float(covering_radius(x[perm], centres[perm])), value, abs_tol=slack)
    assert float(covering_radius(x, torch.ones_like(centres))) == 0.0


@st.composite
def badge_pools(draw, dtypes=FLOAT64):
    """Probabilities and embeddings, with some rows duplicated so gradient embeddings coincide."""
    probs = draw(probs_n_c(max_n=8, max_c=4, dtypes=dtypes))
    n = probs.shape[0]
    h = draw(embeddings(n, draw(st.integers(1, 3)), dtypes))
    copies = torch.tensor(draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n)))
    keep = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    rows = torch.where(keep, torch.arange(n), copies)
    return probs[rows], h[rows]


@PROPERTY
@given(pool=badge_pools(dtypes=DTYPES), seed=SEEDS, data=st.data())
def test_badge_picks_are_distinct_reproducible_and_start_at_the_largest_gradient(pool, seed, data):
    probs, h = pool
    k = data.draw(st.integers(1, probs.shape[0]))
    picks = badge(probs, h, k, generator=torch.Generator().manual_seed(seed))
    assert_selection(picks, k, torch.ones(probs.shape[0], dtype=torch.bool))
    assert torch.equal(badge(probs, h, k, generator=torch.Generator().manual_seed(seed)), picks)
    norms = gradient_embeddings(probs, h).square().sum(dim=1)
    slack = (1 + float(norms.max())) * (1e-4 if torch.float32 in (probs.dtype, h.dtype) else 1e-9)
    assert float(norms[picks[0]]) >= float(norms.max()) - slack


@PROPERTY
@given(pool=badge_pools(), seed=SEEDS, data=st.data())
def test_badge_takes_a_point_on_a_chosen_gradient_only_when_every_point_is_on_one(pool, seed, data):
    probs, h = pool
    k = data.draw(st.integers(1, probs.shape[0]))
    picks = badge(probs, h, k, generator=torch.Generator().manual_seed(seed)).tolist()
    g = gradient_embeddings(probs, h)
    sq_norm = g.square().sum(dim=1)
    # float64 probabilities carry an absolute rounding of ~1e-16, which the squared gradient norms inherit
    floor = 1 + float(h.square().sum(dim=1).max())
    for step in range(1, k):
        chosen = picks[:step]
        dist = sq_dists(g, g[chosen])
        scale = sq_norm[:, None] + sq_norm[chosen][None, :]
        coincides = (dist <= 1e-9 * scale + 1e-13 * floor).any(dim=1)
        distinct = (dist > 1e-6 * scale + 1e-10 * floor).all(dim=1)
        unchosen = torch.ones(g.shape[0], dtype=torch.bool)
        unchosen[chosen] = False
        if coincides[picks[step]]:  # a repeat of a chosen gradient only once nothing clearly new is left
            assert not bool(distinct[unchosen].any())


@PROPERTY
@given(seed=SEEDS, n=st.integers(2, 8), c=st.integers(2, 4), d=st.integers(1, 3), data=st.data())
def test_badge_first_pick_follows_a_permutation_of_a_tie_free_pool(seed, n, c, d, data):
    probs, h = dirichlet(seed, n, c), normal(seed + 1, n, d)
    norms = gradient_embeddings(probs, h).square().sum(dim=1).sort(descending=True).values
    assume(float(norms[0] - norms[1]) > 1e-9)
    perm = permutation(data, n)
    first = badge(probs, h, 1)
    assert torch.equal(perm[badge(probs[perm], h[perm], 1)], first)


# ----- gradient: egl ----------------------------------------------------------------------------------


def egl_by_autograd(logits_N_C: torch.Tensor, h_N_D: torch.Tensor, bias: bool) -> torch.Tensor:
    """``sum_y p(y) ‖∇ CE(W h + b, y)‖`` by backpropagation through a linear layer reproducing ``logits``."""
    n, c = logits_N_C.shape
    scores = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        p = logits_N_C[i].softmax(dim=0)
        for y in range(c):
            weight = torch.zeros(c, h_N_D.shape[1], dtype=torch.float64, requires_grad=True)
            offset = torch.zeros(c, dtype=torch.float64, requires_grad=True)
            # the loss depends on the parameters only through z = W h + b; z is pinned to logits_N_C[i]
            z = weight @ h_N_D[i] + offset + logits_N_C[i]
            loss = torch.nn.functional.cross_entropy(z[None], torch.tensor([y]))
            grad_w, grad_b = torch.autograd.grad(loss, (weight, offset))
            norm_sq = grad_w.square().sum() + (grad_b.square().sum() if bias else 0.0)
            scores[i] += p[y] * norm_sq.sqrt()
    return scores


@PROPERTY
@given(
    data=st.data(),
    n=st.integers(1, 5),
    c=st.integers(2, 4),
    d=st.integers(1, 3),
    bias=st.booleans(),
)
def test_egl_equals_the_expected_norm_of_backpropagated_gradients(data, n, c, d, bias):
    logits = torch.tensor(data.draw(st.lists(st.floats(-8, 8), min_size=n * c, max_size=n * c))).reshape(n, c)
    h = data.draw(embeddings(n, d))
    expected = egl_by_autograd(logits.double(), h, bias)
    torch.testing.assert_close(egl(logits.double().softmax(dim=1), h, bias=bias), expected)


@PROPERTY
@given(probs=probs_n_c(), data=st.data())
def test_egl_is_finite_bounded_and_follows_sample_and_class_order(probs, data):
    n, c = probs.shape
    h = data.draw(embeddings(n, data.draw(st.integers(1, 3))))
    tol = tol_for(probs.dtype)
    score, with_bias = egl(probs, h).double(), egl(probs, h, bias=True).double()
    h_norm = h.norm(dim=1)
    assert bool(torch.isfinite(score).all()) and bool((score >= 0).all())
    assert bool((score <= math.sqrt(2) * h_norm * (1 + tol) + tol).all())  # ‖p - e_y‖ <= sqrt(2)
    assert bool((score <= with_bias + tol).all())
    assert bool((with_bias <= math.sqrt(2) * (h_norm.square() + 1).sqrt() * (1 + tol) + tol).all())
    samples, classes = permutation(data, n), permutation(data, c)
    torch.testing.assert_close(egl(probs[samples], h[samples]).double(), score[samples])
    torch.testing.assert_close(egl(probs[:, classes], h).double(), score, rtol=10 * tol, atol=10 * tol)
    one_hot = torch.nn.functional.one_hot(probs.argmax(dim=1), c).to(probs.dtype)
    torch.testing.assert_close(egl(one_hot, h), torch.zeros(n, dtype=probs.dtype))


# ----- clustering: weighted_kmeans, nearest_to_centres -------------------------------------------------


@st.composite
def weighted_points(draw, max_n: int = 8, max_d: int = 3):
    n, d = draw(st.integers(1, max_n)), draw(st.integers(1, max_d))
    x = draw(embeddings(n, d))
    weights = torch.tensor(draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=n, max_size=n)))
    if not (weights > 0).any():
        weights[draw(st.integers(0, n - 1))] = 1.0
    k = draw(st.integers(1, int((weights > 0).sum())))
    return x, weights, k


@PROPERTY
@given(pool=weighted_points(), seed=SEEDS)
def test_weighted_kmeans_assigns_every_point_to_a_nearest_centre_at_a_weighted_mean(pool, seed):
    x, weights, k = pool
    centres, assignment = weighted_kmeans(x, weights, k, generator=torch.Generator().manual_seed(seed), tol=0.0)
    assert centres.shape == (k, x.shape[1]) and centres.dtype == x.dtype and bool(torch.isfinite(centres).all())
    assert assignment.dtype == torch.long and assignment.shape == (x.shape[0],)
    assert bool(((assignment >= 0) & (assignment < k)).all())
    dist = sq_dists(x, centres)
    slack = 1e-9 * (1 + float(dist.max()))
    assert bool((dist.gather(1, assignment[:, None])[:, 0] <= dist.amin(dim=1) + slack).all())
    for cluster in range(k):
        members = assignment == cluster
        mass = weights[members].sum()
        if mass > 0:  # converged: each weighted cluster's centre is its members' weighted mean
            mean = (weights[members, None] * x[members]).sum(dim=0) / mass
            torch.testing.assert_close(centres[cluster], mean, rtol=1e-9, atol=1e-9)


@PROPERTY
@given(pool=weighted_points(), data=st.data())
def test_weighted_kmeans_never_ends_worse_than_its_starting_centres(pool, data):
    x, weights, k = pool
    start = data.draw(embeddings(k, x.shape[1]))
    centres, _ = weighted_kmeans(x, weights, k, init_centres_K_D=start)
    start_cost, end_cost = kmeans_objective(x, weights, start), kmeans_objective(x, weights, centres)
    assert end_cost <= start_cost * (1 + 1e-9) + 1e-9


@PROPERTY
@given(seed=SEEDS, k=st.integers(1, 3), per_blob=st.integers(1, 3), d=st.integers(1, 3), data=st.data())
def test_weighted_kmeans_from_given_centres_follows_a_permutation_of_separated_blobs(seed, k, per_blob, d, data):
    # blobs 10 apart with noise 0.1: every assignment is unambiguous, so the order of the points cannot matter
    rng = np.random.default_rng(seed)
    means = torch.arange(k, dtype=torch.float64)[:, None] * 10 + torch.zeros(k, d, dtype=torch.float64)
    x = means.repeat_interleave(per_blob, dim=0) + torch.from_numpy(rng.normal(scale=0.1, size=(k * per_blob, d)))
    weights = torch.from_numpy(rng.uniform(0.5, 2.0, size=k * per_blob))
    start = means + torch.from_numpy(rng.normal(scale=1.0, size=(k, d)))
    centres, assignment = weighted_kmeans(x, weights, k, init_centres_K_D=start)
    perm = permutation(data, x.shape[0])
    centres_perm, assignment_perm = weighted_kmeans(x[perm], weights[perm], k, init_centres_K_D=start)
    torch.testing.assert_close(centres_perm, centres, rtol=1e-9, atol=1e-9)
    assert torch.equal(assignment_perm, assignment[perm])
    assert torch.equal(assignment, torch.arange(k).repeat_interleave(per_blob))  # each blob is one cluster


@st.composite
def points_and_centres(draw):
    n, d = draw(st.integers(1, 8)), draw(st.integers(1, 3))
    return draw(embeddings(n, d)), draw(embeddings(draw(st.integers(1, n)), d))


@PROPERTY
@given(case=points_and_centres())
def test_nearest_to_centres_serves_each_centre_its_nearest_unused_point_up_to_ties(case):
    x, centres = case
    picks = nearest_to_centres(x, centres)
    assert_selection(picks, centres.shape[0], torch.ones(x.shape[0], dtype=torch.bool))
    dist = sq_dists(centres, x)
    slack = 1e-9 * (1 + float(dist.max()))
    unused = torch.ones(x.shape[0], dtype=torch.bool)
    for centre, pick in enumerate(picks.tolist()):
        assert float(dist[centre, pick]) <= float(dist[centre, unused].min()) + slack
        unused[pick] = False


@PROPERTY
@given(seed=SEEDS, n=st.integers(1, 8), d=st.integers(1, 3), data=st.data())
def test_nearest_to_centres_picks_follow_a_permutation_of_tie_free_points(seed, n, d, data):
    x = normal(seed, n, d)
    centres = normal(seed + 1, data.draw(st.integers(1, n)), d)
    picks = nearest_to_centres(x, centres)
    dist, unused = sq_dists(centres, x), torch.ones(n, dtype=torch.bool)
    for centre, pick in enumerate(picks.tolist()):
        best_two = dist[centre, unused].sort().values[:2]
        assume(best_two.numel() == 1 or float(best_two[1] - best_two[0]) > 1e-9)
        unused[pick] = False
    perm = permutation(data, n)
    assert torch.equal(perm[nearest_to_centres(x[perm], centres)], picks)


# ----- hybrid: cal_scores, max_cover_greedy -------------------------------------------------------------


def cal_by_definition(pool_p, pool_h, lab_p, lab_h, k_neighbours: int) -> torch.Tensor:
    """Mean ``KL(q_l ‖ p)`` over the nearest labelled points (ties to lower positions), ``p`` clamped at 1e-12."""
    k = min(k_neighbours, lab_p.shape[0])
    out = torch.empty(pool_p.shape[0], dtype=torch.float64)
    for i in range(pool_p.shape[0]):
        order = torch.sort(sq_dists(pool_h[i : i + 1], lab_h)[0], stable=True).indices[:k]
        p = pool_p[i].double().clamp_min(1e-12)
        kls = [float(torch.special.xlogy(q, q).sum() - (q * p.log()).sum()) for q in lab_p[order].double()]
        out[i] = sum(kls) / k
    return out


@st.composite
def cal_inputs(draw, dtypes=FLOAT64):
    pool_p = draw(probs_n_c(max_n=6, max_c=4, dtypes=dtypes))
    c, d = pool_p.shape[1], draw(st.integers(1, 3))
    m = draw(st.integers(1, 6))
    lab_p = torch.from_numpy(np.stack([draw(distributions(c)) for _ in range(m)])).to(pool_p.dtype)
    # integer-grid embeddings: distances are exact, so ties are real ties for kernel and reference alike
    grid = st.integers(-3, 3).map(float)
    pool_h = torch.tensor(draw(st.lists(grid, min_size=pool_p.shape[0] * d, max_size=pool_p.shape[0] * d)))
    lab_h = torch.tensor(draw(st.lists(grid, min_size=m * d, max_size=m * d)))
    return pool_p, pool_h.reshape(-1, d).double(), lab_p, lab_h.reshape(m, d).double(), draw(st.integers(1, 7))


@PROPERTY
@given(inputs=cal_inputs(dtypes=DTYPES))
def test_cal_scores_are_finite_non_negative_and_match_the_definition(inputs):
    pool_p, pool_h, lab_p, lab_h, k = inputs
    scores = cal_scores(pool_p, pool_h, lab_p, lab_h, k_neighbours=k)
    assert scores.dtype == torch.float64 and scores.shape == (pool_p.shape[0],)
    assert bool(torch.isfinite(scores).all()) and bool((scores >= -1e-9).all())
    torch.testing.assert_close(scores, cal_by_definition(pool_p, pool_h, lab_p, lab_h, k), rtol=1e-7, atol=1e-7)


@PROPERTY
@given(inputs=cal_inputs(), data=st.data())
def test_cal_scores_follow_pool_order_and_ignore_labelled_order_when_every_neighbour_counts(inputs, data):
    pool_p, pool_h, lab_p, lab_h, _ = inputs
    m = lab_p.shape[0]
    scores = cal_scores(pool_p, pool_h, lab_p, lab_h, k_neighbours=m)
    pool_perm, lab_perm = permutation(data, pool_p.shape[0]), permutation(data, m)
    torch.testing.assert_close(cal_scores(pool_p[pool_perm], pool_h[pool_perm], lab_p, lab_h, m), scores[pool_perm])
    torch.testing.assert_close(cal_scores(pool_p, pool_h, lab_p[lab_perm], lab_h[lab_perm], m), scores)
    # asking for more neighbours than there are labelled points uses them all
    torch.testing.assert_close(cal_scores(pool_p, pool_h, lab_p, lab_h, m + 3), scores)


@st.composite
def cover_inputs(draw, non_negative: bool = False):
    n, d = draw(st.integers(1, 7)), draw(st.integers(1, 3))
    x = draw(embeddings(n, d))
    if non_negative:
        x = x.abs()
    candidates = torch.tensor(draw(st.permutations(range(n))))[: draw(st.integers(1, n))]
    reference = None
    if draw(st.booleans()):
        reference = torch.tensor(draw(st.permutations(range(n))))[: draw(st.integers(1, n))]
    return x, candidates, reference, draw(st.integers(1, candidates.numel()))


@PROPERTY
@given(inputs=cover_inputs())
def test_max_cover_picks_candidates_greedily_up_to_ties_and_extends_by_prefix(inputs):
    x, candidates, reference, k = inputs
    picks = max_cover_greedy(x, candidates, k, reference_idx=reference)
    allowed = torch.zeros(x.shape[0], dtype=torch.bool)
    allowed[candidates] = True
    assert_selection(picks, k, allowed)
    full = max_cover_greedy(x, candidates, candidates.numel(), reference_idx=reference)
    assert torch.equal(full[:k], picks)
    unit, ref = unit_rows(x), (list(range(x.shape[0])) if reference is None else reference.tolist())
    chosen: list[int] = []
    for pick in picks.tolist():
        # the first gain is the plain sum of similarities, later ones count only improvements
        base = cover_value(unit, chosen, ref) if chosen else 0.0

        def gain(c: int, chosen=chosen, base=base) -> float:
            if not chosen:
                return float((unit[ref] @ unit[c]).sum())
            return cover_value(unit, [*chosen, c], ref) - base

        others = [gain(c) for c in candidates.tolist() if c not in chosen]
        assert gain(pick) >= max(others) - 1e-9
        chosen.append(pick)


@PROPERTY
@given(inputs=cover_inputs(non_negative=True))
def test_max_cover_reaches_one_minus_one_over_e_of_the_best_cover(inputs):
    # with non-negative features every cosine is >= 0: F is monotone submodular with F(empty) = 0
    x, candidates, reference, k = inputs
    unit, ref = unit_rows(x), (list(range(x.shape[0])) if reference is None else reference.tolist())
    greedy = cover_value(unit, max_cover_greedy(x, candidates, k, reference_idx=reference).tolist(), ref)
    best = max(cover_value(unit, list(s), ref) for s in itertools.combinations(candidates.tolist(), k))
    assert greedy >= (1 - 1 / math.e) * best - 1e-9


@PROPERTY
@given(seed=SEEDS, n=st.integers(1, 7), d=st.integers(2, 3), data=st.data())
def test_max_cover_picks_do_not_depend_on_candidate_order_when_tie_free(seed, n, d, data):
    x = normal(seed, n, d)
    candidates = torch.arange(n)
    k = data.draw(st.integers(1, n))
    picks = max_cover_greedy(x, candidates, k)
    unit, ref, chosen = unit_rows(x), list(range(n)), []
    for pick in picks.tolist():
        base = cover_value(unit, chosen, ref)
        if chosen:
            gains = [cover_value(unit, [*chosen, c], ref) - base for c in range(n) if c not in chosen]
        else:
            gains = [float((unit @ unit[c]).sum()) for c in range(n)]
        gains.sort()
        assume(len(gains) == 1 or gains[-1] - gains[-2] > 1e-9)
        chosen.append(pick)
    shuffled = candidates[permutation(data, n)]
    assert torch.equal(max_cover_greedy(x, shuffled, k), picks)


# ----- dynamics: forgetting_counts, label_dispersion -----------------------------------------------------


@st.composite
def correctness_histories(draw):
    e, n = draw(st.integers(1, 10)), draw(st.integers(1, 6))
    return torch.tensor(draw(st.lists(st.booleans(), min_size=e * n, max_size=e * n))).reshape(e, n)


@PROPERTY
@given(correct=correctness_histories(), data=st.data())
def test_forgetting_counts_are_bounded_and_balance_with_learning_events(correct, data):
    e, n = correct.shape
    counts = forgetting_counts(correct)
    assert counts.dtype == torch.long and counts.shape == (n,)
    assert bool((counts >= 0).all()) and bool((counts <= e // 2).all())
    expected = [sum(bool(correct[i, j]) and not bool(correct[i + 1, j]) for i in range(e - 1)) for j in range(n)]
    assert counts.tolist() == expected
    # forgetting minus learning events = correct at the start minus correct at the end
    learned = forgetting_counts(~correct)
    assert torch.equal(counts - learned, correct[0].long() - correct[-1].long())
    assert torch.equal(forgetting_counts(correct.flip(0)), learned)  # time reversed, forgetting is learning
    perm = permutation(data, n)
    assert torch.equal(forgetting_counts(correct[:, perm]), counts[perm])


@st.composite
def prediction_histories(draw):
    e, n, c = draw(st.integers(1, 10)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    labels = draw(st.lists(st.integers(0, c - 1), min_size=e * n, max_size=e * n))
    return torch.tensor(labels, dtype=torch.long).reshape(e, n), c


@PROPERTY
@given(history=prediction_histories(), data=st.data())
def test_label_dispersion_lies_in_zero_to_one_minus_one_over_e_in_whole_votes(history, data):
    preds, c = history
    e, n = preds.shape
    dispersion = label_dispersion(preds)
    assert dispersion.shape == (n,) and bool(torch.isfinite(dispersion).all())
    assert bool((dispersion >= 0).all()) and bool((dispersion <= 1 - 1 / e + 1e-6).all())
    distinct = torch.tensor([preds[:, j].unique().numel() for j in range(n)])
    assert bool((dispersion <= 1 - 1 / distinct + 1e-6).all())
    modal = torch.tensor([int(torch.bincount(preds[:, j]).max()) for j in range(n)])
    torch.testing.assert_close(dispersion, 1 - modal.float() / e)
    assert torch.equal(dispersion == 0, distinct == 1)
    # only how often labels repeat matters: not their names, the order of the epochs or of the samples
    rename = permutation(data, c)
    torch.testing.assert_close(label_dispersion(rename[preds]), dispersion)
    torch.testing.assert_close(label_dispersion(preds[permutation(data, e)]), dispersion)
    samples = permutation(data, n)
    torch.testing.assert_close(label_dispersion(preds[:, samples]), dispersion[samples])


# ----- ranking: loss_prediction_ranking_loss ----------------------------------------------------------------

LOSS_VALUES = st.floats(-100, 100, allow_subnormal=False)


@st.composite
def ranking_batches(draw, distinct_targets: bool = False):
    b = draw(st.integers(0, 9))
    predicted = torch.tensor(draw(st.lists(LOSS_VALUES, min_size=b, max_size=b)), dtype=torch.float64)
    # distinct as numbers (0.0 and -0.0 are one value)
    unique_by = (lambda v: v + 0.0) if distinct_targets else None
    target = torch.tensor(draw(st.lists(LOSS_VALUES, min_size=b, max_size=b, unique_by=unique_by)), dtype=torch.float64)
    return predicted, target, draw(st.floats(0, 5))


def ranking_by_definition(predicted, target, margin_: float) -> float:
    b = predicted.numel()
    pairs = [(i, b - 1 - i) for i in range(b // 2)]
    if not pairs:
        return 0.0
    terms = []
    for i, j in pairs:
        sign = 1.0 if float(target[i]) > float(target[j]) else -1.0
        terms.append(max(0.0, -sign * float(predicted[i] - predicted[j]) + margin_))
    return sum(terms) / len(terms)


@PROPERTY
@given(batch=ranking_batches())
def test_ranking_loss_matches_the_pairwise_hinge_and_is_bounded(batch):
    predicted, target, margin_ = batch
    loss = loss_prediction_ranking_loss(predicted, target, margin_)
    assert loss.shape == () and bool(torch.isfinite(loss)) and float(loss) >= 0
    assert math.isclose(float(loss), ranking_by_definition(predicted, target, margin_), rel_tol=1e-12, abs_tol=1e-12)
    spread = float(predicted.max() - predicted.min()) if predicted.numel() else 0.0
    assert float(loss) <= margin_ + spread + 1e-9
    assert float(loss_prediction_ranking_loss(predicted, target, margin_ + 1.0)) >= float(loss)  # monotone in margin


@PROPERTY
@given(batch=ranking_batches(distinct_targets=True), shift=st.floats(-10, 10))
def test_ranking_loss_depends_on_the_order_of_the_targets_only(batch, shift):
    predicted, target, margin_ = batch
    loss = float(loss_prediction_ranking_loss(predicted, target, margin_))
    assert float(loss_prediction_ranking_loss(predicted, 2 * target, margin_)) == loss
    assert math.isclose(float(loss_prediction_ranking_loss(predicted + shift, target, margin_)), loss, abs_tol=1e-9)
    # reversing the batch keeps the same pairs, each seen from the other side
    assert math.isclose(float(loss_prediction_ranking_loss(predicted.flip(0), target.flip(0), margin_)), loss)
    if predicted.numel() % 2:  # the middle sample of an odd batch is left out
        middle = predicted.numel() // 2
        predicted[middle], target[middle] = 1e3, -1e3
        assert float(loss_prediction_ranking_loss(predicted, target, margin_)) == loss


@PROPERTY
@given(batch=ranking_batches())
def test_ranking_loss_sends_no_gradient_to_the_targets(batch):
    predicted, target, margin_ = batch
    predicted.requires_grad_(True)
    target.requires_grad_(True)
    loss_prediction_ranking_loss(predicted, target, margin_).backward()
    assert target.grad is None and predicted.grad is not None and bool(torch.isfinite(predicted.grad).all())


# ----- mal: cosine_logits, mal_score ------------------------------------------------------------------------


@PROPERTY
@given(
    sizes=st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 3)),
    temperature=st.floats(0.05, 10),
    data=st.data(),
)
def test_cosine_logits_lie_within_one_over_t_and_ignore_lengths(sizes, temperature, data):
    b, c, d = sizes
    f, w = data.draw(embeddings(b, d)), data.draw(embeddings(c, d))
    logits = cosine_logits(f, w, temperature)
    assert logits.shape == (b, c) and bool(torch.isfinite(logits).all())
    assert bool((logits.abs() <= (1 + 1e-9) / temperature).all())
    # a norm below 1e-12 is clamped to 1e-12 before dividing, so only larger rows are true cosines
    rows_ok, cols_ok = f.norm(dim=1) > 1e-9, w.norm(dim=1) > 1e-9
    scaled = cosine_logits(f * 2.5, w * 0.5, temperature)
    torch.testing.assert_close(scaled[rows_ok][:, cols_ok], logits[rows_ok][:, cols_ok])
    torch.testing.assert_close(cosine_logits(f, w, 1.0) / temperature, logits)
    rows, cols = permutation(data, b), permutation(data, c)
    torch.testing.assert_close(cosine_logits(f[rows], w[cols], temperature), logits[rows][:, cols])
    assert bool((logits[(f == 0).all(dim=1)] == 0).all())  # a zero feature or prototype gives 0, not NaN
    assert bool((logits[:, (w == 0).all(dim=1)] == 0).all())


@PROPERTY
@given(probs=probs_n_c(), data=st.data())
def test_mal_score_ranks_every_sample_called_unlabelled_first_then_by_entropy(probs, data):
    n, c = probs.shape
    u = torch.tensor(data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)), dtype=torch.float64)
    threshold = data.draw(st.floats(0, 1))
    score = mal_score(probs, u, threshold)
    h = entropy(probs.double())
    assert score.dtype == torch.float64 and bool(torch.isfinite(score).all())
    called_unlabelled = u >= threshold
    torch.testing.assert_close(score[called_unlabelled], h[called_unlabelled])
    torch.testing.assert_close(score[~called_unlabelled], h[~called_unlabelled] - math.log(c) - 1)
    if called_unlabelled.any() and (~called_unlabelled).any():
        assert float(score[called_unlabelled].min()) > float(score[~called_unlabelled].max())
    torch.testing.assert_close(mal_score(probs, u, 0.0), h)
    perm = permutation(data, n)
    torch.testing.assert_close(mal_score(probs[perm], u[perm], threshold), score[perm])


# ----- precision on rows within 1e-8 of one-hot ----------------------------------------------------------------
# ‖p - e_y‖² formed as a difference of O(1) terms (‖p‖² - 2 p_y + 1, or ‖p‖² - p_ŷ²) cancels when the top
# probability is within ~1e-8 of 1; the kernels sum the off-top squares directly instead.


def test_egl_keeps_its_relative_precision_on_confident_rows():
    eps = 1e-10
    probs = torch.tensor([[1 - eps, eps]], dtype=torch.float64)
    # p_0 ‖p - e_0‖ + p_1 ‖p - e_1‖ = (1 - eps) sqrt(2) eps + eps sqrt(2) (1 - eps)
    expected = 2 * math.sqrt(2) * eps * (1 - eps)
    assert math.isclose(float(egl(probs, torch.ones(1, 1, dtype=torch.float64))), expected, rel_tol=1e-6)


def test_badge_starts_at_the_largest_gradient_among_confident_rows():
    probs = torch.tensor([[1 - 1e-9, 1e-9, 0.0], [1 - 1.1e-9, 0.55e-9, 0.55e-9]], dtype=torch.float64)
    norms = gradient_embeddings(probs, torch.ones(2, 1)).square().sum(dim=1)  # 2.0e-18 and 1.815e-18
    assert int(norms.argmax()) == 0
    assert int(badge(probs, torch.ones(2, 1, dtype=torch.float64), 1)) == 0
