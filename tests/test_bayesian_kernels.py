"""Tests of the (N, T, C) kernels in ``lightning_al.functional.bayesian``."""

from __future__ import annotations

import doctest
import math
import re
from collections import Counter

import numpy as np
import pytest
import torch

import lightning_al.functional.bayesian as bayesian
from lightning_al.functional.bayesian import (
    bald,
    expected_entropy,
    kl_to_consensus,
    mean_std,
    predictive_entropy,
    variation_ratio,
    vote_entropy,
)

KERNELS = {
    "predictive_entropy": predictive_entropy,
    "expected_entropy": expected_entropy,
    "bald": bald,
    "variation_ratio": variation_ratio,
    "mean_std": mean_std,
    "vote_entropy": vote_entropy,
    "kl_to_consensus": kl_to_consensus,
}


# ----- numpy references (one sample at a time, loops where it keeps them obvious) ---------
def ref_entropy(p: np.ndarray) -> float:
    nonzero = p[p > 0]
    return float(-(nonzero * np.log(nonzero)).sum())


def ref_predictive_entropy(s: np.ndarray) -> float:
    return ref_entropy(s.mean(axis=0))


def ref_expected_entropy(s: np.ndarray) -> float:
    return float(np.mean([ref_entropy(member) for member in s]))


def ref_bald(s: np.ndarray) -> float:
    return max(0.0, ref_predictive_entropy(s) - ref_expected_entropy(s))


def ref_votes(s: np.ndarray) -> Counter:
    return Counter(int(np.argmax(member)) for member in s)  # np.argmax: first maximum, like torch


def ref_variation_ratio(s: np.ndarray) -> float:
    return 1.0 - max(ref_votes(s).values()) / s.shape[0]


def ref_mean_std(s: np.ndarray) -> float:
    return float(np.std(s, axis=0, ddof=0).mean())


def ref_vote_entropy(s: np.ndarray) -> float:
    counts = np.array(list(ref_votes(s).values()), dtype=np.float64)
    return ref_entropy(counts / s.shape[0])


def ref_kl_to_consensus(s: np.ndarray) -> float:
    consensus = s.mean(axis=0)
    total = 0.0
    for member in s:
        for p, q in zip(member, consensus, strict=True):
            if p > 0:
                total += p * math.log(p / q)
    return total / s.shape[0]


REFERENCES = {
    "predictive_entropy": ref_predictive_entropy,
    "expected_entropy": ref_expected_entropy,
    "bald": ref_bald,
    "variation_ratio": ref_variation_ratio,
    "mean_std": ref_mean_std,
    "vote_entropy": ref_vote_entropy,
    "kl_to_consensus": ref_kl_to_consensus,
}


def dirichlet_mc_probs(n: int, t: int, c: int, dtype: torch.dtype, seed: int = 0, alpha: float = 0.5) -> torch.Tensor:
    """Random (N, T, C) probabilities with exact zeros and some one-hot members."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(c, alpha), size=(n, t))
    p[rng.random((n, t, c)) < 0.2] = 0.0  # knock out entries, then renormalise
    p[p.sum(axis=-1) == 0, 0] = 1.0
    p /= p.sum(axis=-1, keepdims=True)
    one_hot = rng.random((n, t)) < 0.1
    p[one_hot] = np.eye(c)[rng.integers(0, c, size=int(one_hot.sum()))]
    return torch.as_tensor(p).to(dtype)


# ----- hand-computable fixtures -----------------------------------------------------------
@pytest.mark.parametrize("c", [2, 3, 5])
def test_agreeing_members_score_zero_disagreement(c):
    member = torch.as_tensor(np.random.default_rng(c).dirichlet(np.ones(c), size=4))  # 4 samples
    probs = member[:, None, :].expand(4, 6, c).contiguous()
    zeros = torch.zeros(4, dtype=torch.float64)
    for fn in (bald, vote_entropy, variation_ratio, kl_to_consensus, mean_std):
        torch.testing.assert_close(fn(probs), zeros, atol=1e-12, rtol=0, msg=fn.__name__)
    # entropy of agreeing members is the entropy of any one of them
    expected = torch.tensor([ref_entropy(row.numpy()) for row in member], dtype=torch.float64)
    torch.testing.assert_close(predictive_entropy(probs), expected)
    torch.testing.assert_close(expected_entropy(probs), expected)


@pytest.mark.parametrize("c", [2, 3, 5])
def test_two_confident_members_disagreeing(c):
    probs = torch.zeros(1, 2, c, dtype=torch.float64)
    probs[0, 0, 0] = probs[0, 1, c - 1] = 1.0
    ln2 = torch.tensor([math.log(2)], dtype=torch.float64)
    torch.testing.assert_close(bald(probs), ln2)
    torch.testing.assert_close(kl_to_consensus(probs), ln2)
    torch.testing.assert_close(vote_entropy(probs), ln2)
    torch.testing.assert_close(predictive_entropy(probs), ln2)
    torch.testing.assert_close(expected_entropy(probs), torch.zeros(1, dtype=torch.float64))
    torch.testing.assert_close(variation_ratio(probs), torch.tensor([0.5], dtype=torch.float64))
    # two classes with std 1/2, the other c - 2 with std 0
    torch.testing.assert_close(mean_std(probs), torch.tensor([1.0 / c], dtype=torch.float64))


@pytest.mark.parametrize("c", [2, 3, 4, 10])
def test_uniform_disagreement_of_c_confident_members(c):
    probs = torch.eye(c, dtype=torch.float64)[None]  # member t is one-hot on class t
    ln_c = torch.tensor([math.log(c)], dtype=torch.float64)
    torch.testing.assert_close(bald(probs), ln_c)
    torch.testing.assert_close(kl_to_consensus(probs), ln_c)
    torch.testing.assert_close(vote_entropy(probs), ln_c)
    torch.testing.assert_close(variation_ratio(probs), torch.tensor([1 - 1 / c], dtype=torch.float64))
    # each class probability is 1 with odds 1/c: std sqrt(1/c - 1/c^2)
    torch.testing.assert_close(mean_std(probs), torch.tensor([math.sqrt(1 / c - 1 / c**2)], dtype=torch.float64))


def test_agreeing_uncertain_members_have_entropy_but_no_bald():
    probs = torch.full((1, 5, 4), 0.25, dtype=torch.float64)
    torch.testing.assert_close(predictive_entropy(probs), torch.tensor([math.log(4)], dtype=torch.float64))
    torch.testing.assert_close(expected_entropy(probs), torch.tensor([math.log(4)], dtype=torch.float64))
    assert bald(probs).item() == 0.0


def test_argmax_ties_vote_for_the_lowest_class():
    # votes: 0 (tie between 0 and 1 goes to 0), 1, 1 -> modal count 2 of 3
    probs = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.4, 0.6, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(variation_ratio(probs), torch.tensor([1 / 3], dtype=torch.float64))
    expected = -(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3)
    torch.testing.assert_close(vote_entropy(probs), torch.tensor([expected], dtype=torch.float64))


def test_a_single_member_has_no_disagreement():
    probs = dirichlet_mc_probs(8, 1, 4, torch.float64)
    for fn in (bald, vote_entropy, variation_ratio, kl_to_consensus, mean_std):
        torch.testing.assert_close(fn(probs), torch.zeros(8, dtype=torch.float64), atol=1e-12, rtol=0)


# ----- against the numpy references -------------------------------------------------------
@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 2e-6)])
@pytest.mark.parametrize(("t", "c", "alpha"), [(7, 5, 0.5), (3, 10, 0.1), (20, 2, 1.0)])
def test_matches_numpy_reference(name, dtype, atol, t, c, alpha):
    probs = dirichlet_mc_probs(40, t, c, dtype, seed=t * c, alpha=alpha)
    assert (probs == 0).any()
    out = KERNELS[name](probs)
    assert out.shape == (40,) and out.dtype == dtype
    expected = torch.tensor([REFERENCES[name](s) for s in probs.double().numpy()], dtype=torch.float64)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=0)


def test_bald_is_predictive_minus_expected_entropy_and_the_mean_kl_to_consensus():
    probs = dirichlet_mc_probs(200, 9, 6, torch.float64, seed=3)
    b = bald(probs)
    assert (b > 1e-3).all()  # random members disagree, so the identity is not 0 == 0
    torch.testing.assert_close(b, predictive_entropy(probs) - expected_entropy(probs), atol=1e-12, rtol=0)
    torch.testing.assert_close(b, kl_to_consensus(probs), atol=1e-12, rtol=0)


@pytest.mark.parametrize(("t", "c"), [(3, 10), (10, 3), (6, 6)])
def test_scores_lie_in_their_ranges(t, c):
    probs = dirichlet_mc_probs(300, t, c, torch.float64, seed=t + c, alpha=0.2)
    cap = math.log(min(t, c)) + 1e-12
    for fn in (bald, kl_to_consensus, vote_entropy):
        out = fn(probs)
        assert (out >= 0).all() and (out <= cap).all(), fn.__name__
    for fn in (predictive_entropy, expected_entropy):
        out = fn(probs)
        assert (out >= 0).all() and (out <= math.log(c) + 1e-12).all(), fn.__name__
    assert (bald(probs) <= predictive_entropy(probs) + 1e-12).all()
    vr = variation_ratio(probs)
    assert (vr >= 0).all() and (vr <= 1 - 1 / min(t, c) + 1e-12).all()
    ms = mean_std(probs)
    assert (ms >= 0).all() and (ms <= 0.5).all()


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_scores_do_not_depend_on_member_or_sample_order(name):
    probs = dirichlet_mc_probs(30, 8, 4, torch.float64, seed=11)
    generator = torch.Generator().manual_seed(0)
    members = torch.randperm(8, generator=generator)
    samples = torch.randperm(30, generator=generator)
    out = KERNELS[name](probs)
    if name not in ("variation_ratio", "vote_entropy"):  # votes are exact; sums may differ in the last bit
        torch.testing.assert_close(KERNELS[name](probs[:, members]), out, atol=1e-12, rtol=0)
    else:
        assert torch.equal(KERNELS[name](probs[:, members]), out)
    torch.testing.assert_close(KERNELS[name](probs[samples]), out[samples], atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_chunked_rows_give_the_same_scores(name, monkeypatch):
    probs = dirichlet_mc_probs(37, 5, 3, torch.float32, seed=5)
    whole = KERNELS[name](probs)
    monkeypatch.setattr(bayesian, "_CHUNK_ELEMENTS", 4 * 5 * 3)  # 4 rows at a time: 10 chunks, the last short
    chunked = KERNELS[name](probs)
    assert torch.equal(chunked, whole)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_half_precision_input_is_scored_in_float64_and_returned_in_its_dtype(name):
    probs64 = dirichlet_mc_probs(20, 6, 4, torch.float64, seed=2)
    probs16 = probs64.to(torch.float16)
    out = KERNELS[name](probs16)
    assert out.dtype == torch.float16 and out.shape == (20,)
    expected = KERNELS[name](probs16.double())  # the same (rounded) inputs, scored in float64
    torch.testing.assert_close(out.double(), expected, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_empty_pool_gives_empty_scores(name):
    out = KERNELS[name](torch.empty(0, 4, 3))
    assert out.shape == (0,) and out.dtype == torch.float32


# ----- validation -------------------------------------------------------------------------
def bad_inputs() -> list[tuple[object, type[Exception], str]]:
    good = dirichlet_mc_probs(3, 4, 3, torch.float32)
    nan = good.clone()
    nan[1, 2, 0] = float("nan")
    negative = good.clone()
    negative[0, 0] = torch.tensor([1.5, -0.5, 0.0])
    unnormalised = good.clone()
    unnormalised[2, 1] *= 0.5
    return [
        (good[:, 0], ValueError, "Expected `probs_N_T_C` to have shape (N, T, C), but got a tensor of shape (3, 3)"),
        (
            good[None],
            ValueError,
            "Expected `probs_N_T_C` to have shape (N, T, C), but got a tensor of shape (1, 3, 4, 3)",
        ),
        (good.tolist(), TypeError, "Expected `probs_N_T_C` to be a torch.Tensor, but got list"),
        (torch.ones(2, 3, 1, dtype=torch.long), TypeError, "`probs_N_T_C` to hold floating-point probabilities"),
        (nan, ValueError, "Expected `probs_N_T_C` to be finite, but rows [1] contain NaN or inf"),
        (negative, ValueError, "Expected `probs_N_T_C` to hold probabilities in [0, 1]"),
        (unnormalised, ValueError, "Expected each distribution in `probs_N_T_C` to sum to 1, but row 2"),
        (torch.empty(3, 0, 4), ValueError, "Expected `probs_N_T_C` to hold at least one pass or member (T >= 1)"),
    ]


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("case", range(len(bad_inputs())))
def test_bad_input_is_refused(name, case):
    value, error, message = bad_inputs()[case]
    with pytest.raises(error, match=re.escape(message)):
        KERNELS[name](value)


# ----- docstring examples -----------------------------------------------------------------
def test_docstring_examples():
    result = doctest.testmod(bayesian, optionflags=doctest.NORMALIZE_WHITESPACE, report=False)
    assert result.attempted >= len(KERNELS) * 2
    assert result.failed == 0
