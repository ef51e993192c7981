"""BatchBALD: the greedy kernel against brute-force enumeration, its sampled regime, and the strategy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import FAST_TRAINER, TinyClassifier

import lightning_al as al
from lightning_al.estimators.base import Softmax
from lightning_al.estimators.mc_dropout import MCDropout
from lightning_al.functional import batch_bald as batchbald_module
from lightning_al.functional.batch_bald import batchbald, batchbald_with_gains
from lightning_al.outputs import PoolOutputs
from lightning_al.strategies.batchbald import BatchBALD


# ----- independent references (numpy, brute force) ---------------------------------------
def bald_reference(probs: np.ndarray) -> np.ndarray:
    """H[mean_t p_t] - mean_t H[p_t] per point, for probs of shape (N, T, C)."""
    mean = probs.mean(axis=1)
    marginal = -(mean * np.log(np.where(mean > 0, mean, 1))).sum(-1)
    conditional = -(probs * np.log(np.where(probs > 0, probs, 1))).sum(-1).mean(-1)
    return marginal - conditional


def batch_value_reference(probs: np.ndarray, chosen: list[int]) -> float:
    """a(chosen) by enumerating every joint label configuration with itertools.product."""
    num_members, num_classes = probs.shape[1:]
    joint_entropy = 0.0
    for labels in itertools.product(range(num_classes), repeat=len(chosen)):
        per_member = np.ones(num_members)
        for point, label in zip(chosen, labels, strict=True):
            per_member = per_member * probs[point, :, label]
        p = per_member.mean()
        if p > 0:
            joint_entropy -= p * math.log(p)
    conditional = sum(-(probs[i] * np.log(probs[i])).sum(-1).mean() for i in chosen)
    return joint_entropy - conditional


def greedy_reference(probs: np.ndarray, batch_size: int) -> tuple[list[int], list[float]]:
    """Plain greedy over brute-force values: picks and a(x_1..x_n) after each pick."""
    chosen, values = [], []
    for _ in range(batch_size):
        value, negative_position = max(
            (batch_value_reference(probs, [*chosen, x]), -x) for x in range(probs.shape[0]) if x not in chosen
        )
        chosen.append(-negative_position)
        values.append(value)
    return chosen, values


def random_probs(n: int, t: int, c: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Members that share a per-point tendency but disagree: the structure BatchBALD cares about."""
    g = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(n, 1, c, generator=g, dtype=torch.float64) + 1.5 * torch.randn(
        n, t, c, generator=g, dtype=torch.float64
    )
    return torch.softmax(logits, dim=-1).to(dtype)


def split_members(num_members: int, bit: int, confidence: float) -> torch.Tensor:
    """(T, C=2): member t predicts class ``bit``-th bit of t with probability ``confidence``."""
    labels = (torch.arange(num_members) >> bit) & 1
    probs = torch.full((num_members, 2), 1 - confidence, dtype=torch.float64)
    probs[torch.arange(num_members), labels] = confidence
    return probs


# ----- exact regime ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "t", "c", "batch_size", "seed"), [(8, 6, 3, 3, 0), (8, 6, 3, 3, 1), (7, 5, 2, 5, 2), (6, 4, 4, 3, 3)]
)
@pytest.mark.parametrize("chunk_elements", [2**20, 1, 10])
def test_exact_mode_matches_brute_force_greedy(monkeypatch, n, t, c, batch_size, seed, chunk_elements):
    monkeypatch.setattr(batchbald_module, "_CHUNK_ELEMENTS", chunk_elements)
    probs = random_probs(n, t, c, seed)
    picks, gains = batchbald_with_gains(probs, batch_size)
    expected_picks, expected_values = greedy_reference(probs.numpy(), batch_size)
    assert picks.tolist() == expected_picks
    assert gains.dtype == torch.float64
    np.testing.assert_allclose(gains.cumsum(0).numpy(), expected_values, rtol=0, atol=1e-10)
    assert torch.equal(batchbald(probs, batch_size), picks)
    assert (gains[1:] <= gains[:-1] + 1e-12).all()  # submodular: exact gains never increase


def test_lazy_evaluation_skips_candidates_and_still_matches_brute_force(monkeypatch):
    monkeypatch.setattr(batchbald_module, "_CHUNK_ELEMENTS", 1)  # one candidate per chunk
    visited = []
    original = batchbald_module._entropy_totals

    def counting(factor_T_M, probs_n_T_C):
        visited.append(probs_n_T_C.shape[0])
        return original(factor_T_M, probs_n_T_C)

    monkeypatch.setattr(batchbald_module, "_entropy_totals", counting)
    probs = random_probs(10, 6, 2, seed=4)
    picks = batchbald(probs, 4)
    assert picks.tolist() == greedy_reference(probs.numpy(), 4)[0]
    assert sum(visited) < 10 + 9 + 8 + 7  # fewer than every available candidate at every step
    assert sum(visited[:10]) == 10  # the first step has no bounds yet, so it visits everyone


@pytest.mark.parametrize("seed", range(5))
def test_batch_size_one_is_the_bald_argmax(seed):
    probs = random_probs(50, 8, 5, seed, dtype=torch.float32)
    picks, gains = batchbald_with_gains(probs, 1)
    reference = bald_reference(probs.double().numpy())
    assert picks.tolist() == [int(np.argmax(reference))]
    assert gains[0].item() == pytest.approx(reference.max(), abs=1e-6)


def test_hand_computable_values():
    # Two members that are certain and disagree: BALD = ln 2. A duplicate adds nothing once one is known.
    certain = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    coin = torch.full((2, 2), 0.5, dtype=torch.float64)  # both members say 50/50: BALD = 0
    picks, gains = batchbald_with_gains(torch.stack([coin, certain, certain]), 3)
    assert picks.tolist() == [1, 0, 2]  # after the first certain point every gain is 0: ties go to the lower position
    torch.testing.assert_close(gains, torch.tensor([math.log(2), 0.0, 0.0], dtype=torch.float64))


def test_points_are_never_chosen_twice_and_ties_go_to_lower_positions():
    probs = torch.softmax(torch.randn(9, 1, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    # one member: every gain is 0, so the whole pool comes back in position order
    assert batchbald(probs, 9).tolist() == list(range(9))
    picks = batchbald(random_probs(9, 5, 2, seed=7), 9, num_samples=4, generator=torch.Generator().manual_seed(0))
    assert sorted(picks.tolist()) == list(range(9))


def test_duplicates_are_not_picked_together_but_top_k_bald_picks_both():
    informative = split_members(4, bit=1, confidence=0.98)  # members {0,1} vs {2,3}
    other = split_members(4, bit=0, confidence=0.9)  # members {0,2} vs {1,3}: new information, lower BALD
    flat = torch.full((4, 2), 0.5, dtype=torch.float64) + torch.tensor([0.2, -0.2], dtype=torch.float64)
    probs = torch.stack([flat, informative, flat, informative, other, flat])
    bald = bald_reference(probs.numpy())
    top_two_bald = set(np.argsort(-bald, kind="stable")[:2].tolist())
    assert top_two_bald == {1, 3}  # top-k BALD takes the duplicated point twice
    picks, gains = batchbald_with_gains(probs, 2)
    assert picks.tolist() == [1, 4]
    # the duplicate's gain given its twin is far below its BALD score
    duplicate_gain = batch_value_reference(probs.numpy(), [1, 3]) - batch_value_reference(probs.numpy(), [1])
    assert duplicate_gain < 0.2 * bald[3] and gains[1].item() > duplicate_gain


# ----- sampled regime -----------------------------------------------------------------------
def test_sampled_mode_picks_like_exact_on_an_easy_pool():
    members = 8
    bits = [split_members(members, bit, conf) for bit, conf in [(0, 0.99), (1, 0.97), (2, 0.95)]]
    noise = torch.softmax(0.3 * torch.randn(4, members, 2, generator=torch.Generator().manual_seed(0)), dim=-1)
    probs = torch.cat([torch.stack(bits + bits), noise.double()])  # points 3..5 duplicate 0..2
    exact_picks, exact_gains = batchbald_with_gains(probs, 3)
    assert exact_picks.tolist() == [0, 1, 2]
    for seed in range(20):
        # num_samples=3 < 2^2 configurations of two chosen labels: the third step is sampled
        picks, gains = batchbald_with_gains(probs, 3, num_samples=3, generator=torch.Generator().manual_seed(seed))
        assert picks.tolist() == [0, 1, 2]
        torch.testing.assert_close(gains[:2], exact_gains[:2], rtol=0, atol=1e-12)  # steps 1-2 are still exact
        assert abs(gains[2].item() - exact_gains[2].item()) < 0.1


def correlated_pool() -> torch.Tensor:
    """Four points that split 4 members the same way; points 2 and 3 are twins."""
    twin = split_members(4, bit=1, confidence=0.8)
    return torch.stack([split_members(4, bit=1, confidence=0.98), split_members(4, bit=1, confidence=0.9), twin, twin])


def sampled_totals(sampling: str, num_samples: int, draws: int = 300) -> np.ndarray:
    """a(whole correlated pool) estimated by the summed gains, once per generator seed."""
    totals = []
    for seed in range(draws):
        generator = torch.Generator().manual_seed(seed)
        picks, gains = batchbald_with_gains(correlated_pool(), 4, num_samples, generator, sampling=sampling)
        assert picks.tolist() == [0, 1, 2, 3]
        totals.append(gains.sum().item())
    return np.array(totals)


@pytest.mark.parametrize("sampling", ["stratified", "sequential"])
def test_sampled_estimate_of_the_batch_value_is_unbiased(sampling):
    # N = batch_size, so the set is the whole pool; points 2 and 3 are twins, so the sampled
    # steps' order cannot depend on the draws, and the summed gains estimate a(whole pool).
    # All four split the members the same way, so their labels are strongly correlated: draws
    # that ignored the correlation (labels from the marginals) would be biased by ~18 standard errors.
    exact = batch_value_reference(correlated_pool().numpy(), [0, 1, 2, 3])
    totals = sampled_totals(sampling, num_samples=4)
    assert totals.std() > 1e-3  # the last two steps really were sampled
    assert abs(totals.mean() - exact) < 4 * totals.std() / math.sqrt(len(totals))


def test_stratified_draws_have_less_variance_than_random_members():
    # The same number of draws (4, one per member, vs 4 from members picked at random): fixing how many
    # configurations each member draws removes the variance of which members draw.
    stratified, sequential = sampled_totals("stratified", 4), sampled_totals("sequential", 4)
    assert stratified.var() < 0.75 * sequential.var()


def test_stratified_sampling_draws_evenly_per_member_and_redraws_after_every_pick():
    probs = random_probs(6, 4, 3, seed=2)
    draws = {}
    for sampling in ("stratified", "sequential"):
        joint = batchbald_module._JointLabels(4, 10, torch.device("cpu"), torch.Generator().manual_seed(0), sampling)
        joint.add(probs[0])
        joint.add(probs[1])  # 9 configurations: still exact
        assert joint.exact
        joint.add(probs[2])  # 27 > 10: sampled from here on
        first = joint.labels[0].clone()
        joint.add(probs[3])
        draws[sampling] = (joint, first)
    stratified, first = draws["stratified"]
    assert torch.bincount(stratified.member_S).tolist() == [2, 2, 2, 2]  # 10 // 4 draws per member
    assert stratified.width == 8 and len(stratified.labels) == 4
    assert not torch.equal(stratified.labels[0], first)  # every chosen label drawn afresh at the new pick
    sequential, first = draws["sequential"]
    assert sequential.width == 10 and torch.equal(sequential.labels[0], first)  # the draws were extended
    one_per_member = batchbald_module._JointLabels(4, 3, torch.device("cpu"), None, "stratified")
    for point in probs[:3]:
        one_per_member.add(point)
    assert torch.bincount(one_per_member.member_S).tolist() == [1, 1, 1, 1]  # fewer samples than members: one each


def test_sampled_mode_is_deterministic_given_the_generator():
    probs = random_probs(30, 6, 3, seed=5)
    seeds = (0, 0, 1)
    runs = [batchbald_with_gains(probs, 6, num_samples=5, generator=torch.Generator().manual_seed(s)) for s in seeds]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])  # another seed, other draws
    assert batchbald(probs, 6, num_samples=5).unique().numel() == 6  # generator=None uses torch's default RNG


def test_large_pool_runs_in_bounded_chunks(monkeypatch):
    # Budget: each candidate chunk's (n * C, M) float64 table holds at most _CHUNK_ELEMENTS = 2^20
    # entries (8 MiB), or one candidate's C * num_samples if that is larger. The full (N * C, S)
    # table here would be 20000 * 10 * 100 = 2e7 entries (160 MB).
    largest = []
    original = batchbald_module._entropy_totals

    def recording(factor_T_M, probs_n_T_C):
        largest.append(probs_n_T_C.shape[0] * probs_n_T_C.shape[2] * factor_T_M.shape[1])
        return original(factor_T_M, probs_n_T_C)

    monkeypatch.setattr(batchbald_module, "_entropy_totals", recording)
    probs = torch.softmax(2 * torch.randn(20_000, 10, 10, generator=torch.Generator().manual_seed(0)), dim=-1)
    picks = batchbald(probs, 5, num_samples=100, generator=torch.Generator().manual_seed(0))
    assert picks.unique().numel() == 5
    assert picks[0].item() == int(np.argmax(bald_reference(probs.double().numpy())))
    assert max(largest) <= batchbald_module._CHUNK_ELEMENTS
    assert len(largest) > 5  # candidates really went through in several chunks


# ----- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=5), ValueError, "batch_size"),
        (dict(batch_size=2.0), TypeError, "batch_size"),
        (dict(batch_size=True), TypeError, "batch_size"),
        (dict(batch_size=2, num_samples=0), ValueError, "num_samples"),
        (dict(batch_size=2, generator=0), TypeError, "generator"),
        (dict(batch_size=2, sampling="exact"), ValueError, r"`sampling` to be one of \['stratified', 'sequential'\]"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        batchbald(random_probs(4, 3, 2, seed=0), **kwargs)


def test_bad_probabilities_are_refused():
    probs = random_probs(4, 3, 2, seed=0)
    with pytest.raises(ValueError, match="probs_N_T_C"):
        batchbald(probs[:, 0], 1)  # (N, C): no member axis
    nan = probs.clone()
    nan[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        batchbald(nan, 1)
    with pytest.raises(ValueError, match="sum to 1"):
        batchbald(probs * 0.5, 1)
    with pytest.raises(TypeError, match="probs_N_T_C"):
        batchbald(probs.numpy(), 1)


# ----- the strategy --------------------------------------------------------------------------
def test_strategy_maps_picks_to_dataset_ids_with_the_gains_as_scores():
    probs = random_probs(12, 6, 3, seed=8, dtype=torch.float32)
    ids = torch.tensor([90, 3, 41, 17, 5, 66, 28, 70, 11, 52, 8, 33])
    outputs = PoolOutputs(ids=ids, values={"mc_probs": probs})
    strategy = BatchBALD(mc_samples=6)
    selection = strategy.select(outputs, 4, generator=torch.Generator().manual_seed(0))
    picks, gains = batchbald_with_gains(probs, 4)
    assert torch.equal(selection.ids, ids[picks])
    torch.testing.assert_close(selection.scores, gains)
    assert strategy.requires == frozenset({"mc_probs"})
    assert isinstance(strategy.estimator, MCDropout) and strategy.estimator.mc_samples == 6
    assert repr(strategy) == "BatchBALD(mc_samples=6, num_samples=10000, sampling='stratified')"


def test_strategy_avoids_the_duplicate_that_top_k_bald_would_take():
    informative = split_members(4, bit=1, confidence=0.98)
    other = split_members(4, bit=0, confidence=0.9)
    probs = torch.stack([informative, informative, other])
    outputs = PoolOutputs(ids=torch.tensor([7, 8, 9]), values={"mc_probs": probs})
    assert BatchBALD().select(outputs, 2).ids.tolist() == [7, 9]


def test_strategy_refuses_bad_arguments():
    with pytest.raises(ValueError, match="mc_probs"):
        BatchBALD(estimator=Softmax())
    with pytest.raises(TypeError, match="estimator"):
        BatchBALD(estimator="mc_dropout")
    with pytest.raises(ValueError, match="mc_samples"):
        BatchBALD(mc_samples=0)
    with pytest.raises(ValueError, match="num_samples"):
        BatchBALD(num_samples=0)
    with pytest.raises(ValueError, match=r"`sampling` to be one of .* but got 'random'"):
        BatchBALD(sampling="random")
    outputs = PoolOutputs(ids=torch.arange(3), values={"mc_probs": random_probs(3, 2, 2, seed=0)})
    for k in (0, 4):
        with pytest.raises(ValueError, match="`k`"):
            BatchBALD().select(outputs, k)
    with pytest.raises(KeyError, match="mc_probs"):
        BatchBALD().select(PoolOutputs(ids=torch.arange(3), values={"probs": torch.full((3, 2), 0.5)}), 1)


def test_strategy_in_the_loop_end_to_end(tiny_data):
    train, test = tiny_data
    dm = al.ActiveDataModule(train, test_set=test, initial_labelled=10, batch_size=8, seed=0)
    loop = al.ActiveLearningLoop(
        strategy=BatchBALD(mc_samples=4), query_size=3, rounds=1, trainer_kwargs=FAST_TRAINER, seed=0
    )
    initial = set(dm.labelled_ids.tolist())
    history = loop.run(TinyClassifier(), dm)
    selected = history[0]["selected_ids"]
    assert len(set(selected)) == 3 and not set(selected) & initial
    assert dm.num_labelled == 13
    scores = history[0]["selected_scores"]
    assert 0 <= scores[0] <= math.log(3) + 1e-6  # the first gain is a BALD score: at most ln C
