"""The BatchBALD benchmark: its naive reference against hand-computed values and the library, and its suite rows."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from benchmarks import batchbald as bench
from lightning_al.functional import batchbald_with_gains


def binary_entropy(p: float) -> float:
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs)


# Two members, two classes: x0 and x1 are the same point (members split 0.9 / 0.1 against 0.1 / 0.9),
# x2 splits the same way but less sharply (0.8 / 0.2).
SPLIT_09 = [[0.9, 0.1], [0.1, 0.9]]
SPLIT_08 = [[0.8, 0.2], [0.2, 0.8]]
TINY_LISTS = [SPLIT_09, SPLIT_09, SPLIT_08]  # [point][member][class]
TINY_PROBS = torch.tensor(TINY_LISTS, dtype=torch.float64)


def test_naive_matches_hand_computed_values_on_a_tiny_pool():
    picks, values, gaps = bench.naive_batchbald(TINY_PROBS, 3)

    # Step 1: BALD = H[mean] - mean H = ln 2 - H_b(0.1) for x0 and x1 (tied, lowest wins), ln 2 - H_b(0.2) for x2.
    bald_x0 = math.log(2) - binary_entropy(0.1)
    # Step 2, joint with x0: p(y0, y1) = 0.5 (0.9*0.9 + 0.1*0.1) = 0.41 on the diagonal, 0.5 (2*0.9*0.1) = 0.09 off it;
    # p(y0, y2) = 0.5 (0.9*0.8 + 0.1*0.2) = 0.37 on the diagonal, 0.5 (0.9*0.2 + 0.1*0.8) = 0.13 off it.
    a_x0_x1 = entropy([0.41, 0.09, 0.09, 0.41]) - 2 * binary_entropy(0.1)
    a_x0_x2 = entropy([0.37, 0.13, 0.13, 0.37]) - binary_entropy(0.1) - binary_entropy(0.2)
    assert a_x0_x1 > a_x0_x2  # the duplicate still adds more here: with T = 2 every point splits the same members
    # Step 3: all 8 configurations, p(y) = 0.5 (prod_i p_1(y_i) + prod_i p_2(y_i)).
    joint = [
        sum(math.prod(TINY_LISTS[i][t][y] for i, y in enumerate(ys)) for t in range(2)) / 2
        for ys in itertools.product(range(2), repeat=3)
    ]
    a_all = entropy(joint) - 2 * binary_entropy(0.1) - binary_entropy(0.2)

    assert picks.tolist() == [0, 1, 2]
    torch.testing.assert_close(values, torch.tensor([bald_x0, a_x0_x1, a_all], dtype=torch.float64))
    assert gaps[0] == 0  # x0 and x1 tie exactly
    assert gaps[1] == pytest.approx(a_x0_x1 - a_x0_x2, rel=1e-12)
    assert gaps[2] == math.inf


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_naive_agrees_with_the_library_on_small_random_pools(seed):
    probs = bench.make_probs(40, members=6, classes=3, seed=seed)
    naive_picks, naive_values, _ = bench.naive_batchbald(probs, 4)
    library_picks, library_gains = batchbald_with_gains(probs, 4)  # C^3 = 27 configurations: exact

    assert naive_picks.tolist() == library_picks.tolist()
    torch.testing.assert_close(library_gains.cumsum(0), naive_values, rtol=1e-10, atol=1e-12)


def test_quick_suite_rows_have_times_and_identical_picks():
    rows = bench.suite_rows(quick=True)

    assert [row.case for row in rows[:2]] == [f"{bench.LIBRARY} (exact)", bench.NAIVE]
    assert len(rows) == (3 if bench.load_redux()[0] is not None else 2)
    assert rows[0].reference == "" and rows[0].ratio is None
    for row in rows:
        assert row.seconds > 0
    for row in rows[1:]:
        assert row.reference == bench.LIBRARY
        assert row.ratio == pytest.approx(row.seconds / rows[0].seconds)
        assert row.note == "identical picks"


def test_cli_prints_identical_picks_and_skips_a_missing_reference(monkeypatch, capsys):
    monkeypatch.setattr(bench, "load_redux", lambda: (None, "not importable (absent)"))
    bench.main(["--n", "30", "--mc-samples", "4", "--classes", "3", "--k", "3", "--repeats", "1"])
    out = capsys.readouterr().out

    assert "naive greedy (definition) / library time" in out
    assert "identical picks: yes" in out
    assert "batchbald_redux: skipped, not importable (absent)" in out


@pytest.mark.parametrize(
    "argv",
    [["--n", "0"], ["--classes", "1"], ["--k", "0"], ["--n", "3", "--k", "4"], ["--k", "6"], ["--repeats", "0"]],
)
def test_cli_rejects_bad_values(argv, capsys):
    with pytest.raises(SystemExit):
        bench.main(argv)
    err = capsys.readouterr().err
    assert "must be" in err or "exact regime" in err
