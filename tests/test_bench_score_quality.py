"""The score-quality benchmark: its rank statistics against hand-computed values, its tables, one tiny run."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package, from any working directory

from benchmarks import score_quality
from benchmarks.score_quality import auroc, average_ranks, expected_classes, spearman, summary_table
from benchmarks.settings import SETTINGS


def test_average_ranks_share_the_mean_rank_of_ties():
    ranks = average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0]))
    assert ranks.tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]  # the three 3s span ranks 3, 4, 5


def test_spearman_hand_computed():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, 10 * x + 1) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    # ranks differ by d = (0, 1, 1, 0): 1 - 6 · 2 / (4 · 15) = 0.8
    assert spearman(x, torch.tensor([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)
    # y's ranks (1.5, 1.5, 3.5, 3.5): centred x · y = 4, |x|² = 5, |y|² = 4 → 4 / sqrt(20)
    assert spearman(x, torch.tensor([1.0, 1.0, 2.0, 2.0])) == pytest.approx(4 / math.sqrt(20))
    assert math.isnan(spearman(x, torch.ones(4)))


def test_auroc_hand_computed():
    positive = torch.tensor([False, False, True, True])
    assert auroc(torch.tensor([0.1, 0.2, 0.3, 0.4]), positive) == pytest.approx(1.0)
    assert auroc(torch.tensor([0.4, 0.3, 0.2, 0.1]), positive) == pytest.approx(0.0)
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 beats one, 0.8 beats two → 3 / 4
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), positive) == pytest.approx(0.75)
    # a tie counts 1/2: positive 1 ties the negative, positive 2 beats it → 1.5 / 2
    assert auroc(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([True, False, True])) == pytest.approx(0.75)
    assert math.isnan(auroc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])))


def test_rank_statistics_match_pairwise_counting_and_scipy_on_random_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40,), generator=generator).double()  # many ties
    loss = torch.randint(0, 8, (40,), generator=generator).double()
    positive = torch.rand(40, generator=generator) < 0.3
    pos, neg = scores[positive], scores[~positive]
    pairwise = ((pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()).mean()
    assert auroc(scores, positive) == pytest.approx(float(pairwise))
    stats = pytest.importorskip("scipy.stats")
    assert spearman(scores, loss) == pytest.approx(stats.spearmanr(scores.numpy(), loss.numpy()).statistic)


def test_expected_classes_of_random_picks():
    labels = torch.tensor([0, 0, 1, 1])
    # 2 of 4: both from one class in 2 of the C(4, 2) = 6 pairs → 2 - 2 / 6
    assert expected_classes(labels, 2) == pytest.approx(2 - 2 / 6)
    assert expected_classes(labels, 3) == pytest.approx(2.0)


def test_summary_table_is_mean_and_sample_std_over_rows():
    rows = [
        {"arm": "A", "spearman": 0.2, "auroc": 0.6, "hit_rate": 0.1, "pool_error_rate": 0.3, "pick_classes": 4,
         "random_classes": 6.0},
        {"arm": "A", "spearman": 0.4, "auroc": 0.8, "hit_rate": 0.3, "pool_error_rate": 0.3, "pick_classes": 6,
         "random_classes": 6.0},
        {"arm": "B", "spearman": math.nan, "auroc": math.nan, "hit_rate": 0.5, "pool_error_rate": 0.2,
         "pick_classes": 5, "random_classes": 6.0},
    ]  # fmt: skip
    lines = summary_table(rows, ["A", "B"]).splitlines()
    assert lines[2] == (
        "| A | 0.300 ± 0.141 | 0.700 ± 0.141 | 0.200 ± 0.141 | 0.300 ± 0.000 | 5.00 ± 1.41 | 6.00 ± 0.00 | 2 |"
    )
    assert lines[3] == "| B | — | — | 0.500 ± 0.000 | 0.200 ± 0.000 | 5.00 ± 0.00 | 6.00 ± 0.00 | 1 |"


def test_arguments_are_validated():
    with pytest.raises(SystemExit):
        score_quality.parse_args(["--rounds", "0"])
    with pytest.raises(SystemExit):
        score_quality.parse_args(["--arms", "NoSuchStrategy"])
    args = score_quality.parse_args([])
    assert (args.arms, args.seeds, args.rounds, args.workers) == (list(score_quality.DEFAULT_ARMS), 3, 8, 2)


def test_one_round_of_entropy_on_digits_gives_values_in_range():
    setting = dataclasses.replace(SETTINGS["digits"], epochs=1, min_steps_per_epoch=1)
    (row,) = score_quality.measure_arm(setting, "Entropy", seed=0, rounds=1)
    assert (row["arm"], row["seed"], row["round"], row["num_labelled"]) == ("Entropy", 0, 0, setting.initial)
    assert -1 <= row["spearman"] <= 1 and 0 <= row["auroc"] <= 1
    assert 0 < row["pool_error_rate"] <= 1  # one epoch on 20 labels: far from perfect
    assert row["hit_rate"] * setting.query_size == pytest.approx(round(row["hit_rate"] * setting.query_size))
    assert 1 <= row["pick_classes"] <= setting.query_size
    assert 1 <= row["random_classes"] <= 10
    assert row["picks_are_top_scores"]  # softmax scoring is deterministic: the second pass ranks alike
