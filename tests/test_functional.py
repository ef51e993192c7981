"""Tests of the pure tensor kernels in ``lightning_al.functional``."""

from __future__ import annotations

import doctest
import importlib
import math
import re

import numpy as np
import pytest
import torch

from lightning_al.functional import entropy, least_confidence, margin, topk_select

SCORES = {"least_confidence": least_confidence, "margin": margin, "entropy": entropy}


# ----- numpy references ------------------------------------------------------------------
def ref_least_confidence(p: np.ndarray) -> np.ndarray:
    return 1.0 - p.max(axis=1)


def ref_margin(p: np.ndarray) -> np.ndarray:
    s = np.sort(p, axis=1)
    return 1.0 - (s[:, -1] - s[:, -2])


def ref_entropy(p: np.ndarray) -> np.ndarray:
    safe = np.where(p > 0, p, 1.0)
    return -np.sum(np.where(p > 0, p * np.log(safe), 0.0), axis=1)


REFERENCES = {"least_confidence": ref_least_confidence, "margin": ref_margin, "entropy": ref_entropy}


def dirichlet_probs(n: int, c: int, dtype: torch.dtype, seed: int = 0, alpha: float = 1.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.dirichlet(np.full(c, alpha), size=n)).to(dtype)


# ----- hand-computed values --------------------------------------------------------------
def test_uniform_over_four_classes():
    p = torch.full((2, 4), 0.25, dtype=torch.float64)
    torch.testing.assert_close(entropy(p), torch.full((2,), math.log(4), dtype=torch.float64))
    torch.testing.assert_close(least_confidence(p), torch.full((2,), 0.75, dtype=torch.float64))
    torch.testing.assert_close(margin(p), torch.ones(2, dtype=torch.float64))


def test_one_hot_scores_zero():
    p = torch.eye(3)
    for name, fn in SCORES.items():
        out = fn(p)
        assert not out.isnan().any(), name
        torch.testing.assert_close(out, torch.zeros(3), msg=name)


def test_hand_computed_row():
    p = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    torch.testing.assert_close(least_confidence(p), torch.tensor([0.3], dtype=torch.float64))
    torch.testing.assert_close(margin(p), torch.tensor([0.5], dtype=torch.float64))
    # -(0.7 ln 0.7 + 0.2 ln 0.2 + 0.1 ln 0.1)
    torch.testing.assert_close(entropy(p), torch.tensor([0.8018185525433372], dtype=torch.float64))


def test_two_classes_tied_margin_is_one():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    torch.testing.assert_close(margin(p), torch.tensor([1.0, 0.2]))


@pytest.mark.parametrize("name", sorted(SCORES))
def test_output_shape_and_dtype(name):
    for dtype in (torch.float32, torch.float64):
        p = dirichlet_probs(5, 3, dtype)
        out = SCORES[name](p)
        assert out.shape == (5,)
        assert out.dtype == dtype


# ----- against numpy references ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(SCORES))
def test_matches_numpy_reference_on_dirichlet(name, dtype):
    p = dirichlet_probs(200, 7, dtype, seed=3)
    expected = torch.as_tensor(REFERENCES[name](p.double().numpy()))
    out = SCORES[name](p)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(SCORES))
def test_matches_numpy_reference_with_zero_probabilities(name):
    p = dirichlet_probs(50, 5, torch.float64, seed=4)
    p[::2, 0] = 0.0
    p[::3, 1:3] = 0.0
    p = p / p.sum(dim=1, keepdim=True)
    assert (p == 0).any()
    out = SCORES[name](p)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.as_tensor(REFERENCES[name](p.numpy())))


def test_entropy_zero_log_zero_is_zero():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    out = entropy(p)
    assert not out.isnan().any()
    torch.testing.assert_close(out, torch.tensor([math.log(2), 0.0]))


def test_scores_lie_in_documented_ranges():
    c = 6
    p = dirichlet_probs(300, c, torch.float64, seed=5, alpha=0.3)
    lc, m, h = least_confidence(p), margin(p), entropy(p)
    assert (lc >= 0).all() and (lc <= 1 - 1 / c + 1e-12).all()
    assert (m >= 0).all() and (m <= 1 + 1e-12).all()
    assert (h >= 0).all() and (h <= math.log(c) + 1e-12).all()


# ----- higher = query first --------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCORES))
def test_more_uniform_row_scores_higher(name):
    p = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.3, 0.2], [0.9, 0.05, 0.05], [1.0, 0.0, 0.0]])
    out = SCORES[name](p)
    assert out[0] > out[1] > out[2] > out[3], out


# ----- input validation ------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCORES))
def test_refuses_non_tensor(name):
    with pytest.raises(TypeError, match=r"Expected `probs_N_C` to be a torch.Tensor, but got list"):
        SCORES[name]([[0.5, 0.5]])


@pytest.mark.parametrize("name", sorted(SCORES))
@pytest.mark.parametrize("shape", [(4,), (2, 3, 4)])
def test_refuses_wrong_ndim(name, shape):
    p = torch.full(shape, 1.0 / shape[-1])
    with pytest.raises(
        ValueError, match=re.escape(f"Expected `probs_N_C` to have shape (N, C), but got a tensor of shape {shape}")
    ):
        SCORES[name](p)


@pytest.mark.parametrize("name", sorted(SCORES))
def test_refuses_integer_dtype(name):
    with pytest.raises(TypeError, match=r"`probs_N_C` to hold floating-point probabilities.*torch\.int64"):
        SCORES[name](torch.tensor([[1, 0], [0, 1]]))


@pytest.mark.parametrize("name", sorted(SCORES))
def test_refuses_rows_not_summing_to_one(name):
    p = torch.tensor([[0.5, 0.5], [0.2, 0.3], [0.6, 0.4]])
    with pytest.raises(ValueError, match=r"each distribution in `probs_N_C` to sum to 1, but row 1 .*summing to 0\.5"):
        SCORES[name](p)


@pytest.mark.parametrize("name", sorted(SCORES))
def test_refuses_logits(name):
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    with pytest.raises(ValueError, match=r"`probs_N_C`.*Apply softmax to logits first"):
        SCORES[name](logits)


@pytest.mark.parametrize("name", sorted(SCORES))
def test_refuses_negative_values(name):
    p = torch.tensor([[0.5, 0.5], [1.25, -0.25]])
    with pytest.raises(
        ValueError, match=r"`probs_N_C` to hold probabilities in \[0, 1\], but got values in \[-0\.25, 1\.25\]"
    ):
        SCORES[name](p)


def test_accepts_float32_softmax_rounding():
    p = torch.softmax(torch.randn(64, 10, generator=torch.Generator().manual_seed(0)), dim=1)
    assert torch.isfinite(entropy(p)).all()


@pytest.mark.parametrize("name", sorted(SCORES))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_refuses_non_finite_and_names_row(name, bad):
    p = torch.full((4, 2), 0.5)
    p[2, 1] = bad
    with pytest.raises(
        ValueError, match=re.escape("Expected `probs_N_C` to be finite, but rows [2] contain NaN or inf")
    ):
        SCORES[name](p)


def test_non_finite_message_truncates_long_row_lists():
    p = torch.full((15, 2), 0.5)
    p[:, 0] = float("nan")
    with pytest.raises(ValueError, match=re.escape("rows [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] (and 5 more) contain NaN")):
        entropy(p)


def test_margin_refuses_single_class():
    with pytest.raises(ValueError, match=r"`probs_N_C` to have at least 2 classes, but got shape \(3, 1\)"):
        margin(torch.ones(3, 1))
    # the other scores are defined (and zero) for a single class
    torch.testing.assert_close(entropy(torch.ones(3, 1)), torch.zeros(3))
    torch.testing.assert_close(least_confidence(torch.ones(3, 1)), torch.zeros(3))


def test_empty_batch_gives_empty_scores():
    p = torch.empty(0, 3)
    for name, fn in SCORES.items():
        assert fn(p).shape == (0,), name


# ----- topk_select -----------------------------------------------------------------------
def test_topk_highest_first():
    out = topk_select(torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7]), 3)
    assert out.dtype == torch.long
    assert out.tolist() == [1, 4, 2]


def test_topk_ties_go_to_lower_index():
    assert topk_select(torch.tensor([0.1, 0.9, 0.5, 0.9]), 3).tolist() == [1, 3, 2]
    assert topk_select(torch.zeros(10), 4).tolist() == [0, 1, 2, 3]


def test_topk_ties_on_large_input_match_reference_and_are_deterministic():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (5000,), generator=g).float()
    expected = sorted(range(5000), key=lambda i: (-scores[i].item(), i))[:1000]
    first = topk_select(scores, 1000)
    assert first.tolist() == expected
    for _ in range(3):
        assert torch.equal(topk_select(scores.clone(), 1000), first)


def test_topk_k_equal_n_is_full_ordering():
    scores = torch.tensor([3.0, 1.0, 2.0])
    assert topk_select(scores, 3).tolist() == [0, 2, 1]


def test_topk_integer_scores():
    assert topk_select(torch.tensor([3, 1, 2, 3]), 2).tolist() == [0, 3]


@pytest.mark.parametrize("k", [0, -1, 5])
def test_topk_refuses_k_out_of_bounds(k):
    with pytest.raises(ValueError, match=rf"Expected `k` to be in \[1, 4\] \(the number of scores\), but got {k}\."):
        topk_select(torch.rand(4), k)


@pytest.mark.parametrize(("k", "typename"), [(2.0, "float"), (True, "bool"), ("2", "str"), (None, "NoneType")])
def test_topk_refuses_non_int_k(k, typename):
    with pytest.raises(TypeError, match=rf"Expected `k` to be an int, but got {typename}\."):
        topk_select(torch.rand(4), k)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_topk_refuses_non_finite_scores(bad):
    scores = torch.tensor([0.1, bad, 0.3])
    with pytest.raises(
        ValueError, match=re.escape("Expected `scores_N` to be finite, but rows [1] contain NaN or inf")
    ):
        topk_select(scores, 1)


@pytest.mark.parametrize("shape", [(), (2, 3)])
def test_topk_refuses_wrong_ndim(shape):
    with pytest.raises(
        ValueError, match=re.escape(f"Expected `scores_N` to have shape (N,), but got a tensor of shape {shape}")
    ):
        topk_select(torch.zeros(shape), 1)


def test_topk_refuses_non_tensor():
    with pytest.raises(TypeError, match=r"`scores_N` to be a torch.Tensor, but got list"):
        topk_select([0.1, 0.2], 1)


# ----- docstring examples ----------------------------------------------------------------
@pytest.mark.parametrize("module_name", ["lightning_al.functional.uncertainty", "lightning_al.functional.selection"])
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, report=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_topk_select_accepts_integer_types_other_than_int():
    scores = torch.tensor([0.2, 0.9, 0.5])
    assert topk_select(scores, np.int64(2)).tolist() == [1, 2]
    assert topk_select(scores, torch.tensor(1)).tolist() == [1]
