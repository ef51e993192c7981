"""Strategies as thin wrappers over the kernels; oracles."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import lightning_al as al
from lightning_al import functional as F
from lightning_al.strategies import Entropy, LeastConfidence, Margin, Random


def outputs_with_probs() -> al.PoolOutputs:
    probs = torch.tensor(
        [
            [0.98, 0.01, 0.01],  # confident
            [0.34, 0.33, 0.33],  # nearly uniform: top for every score
            [0.500, 0.495, 0.005],  # tiny margin, low entropy relative to uniform
            [0.60, 0.20, 0.20],
            [0.80, 0.10, 0.10],
        ]
    )
    return al.PoolOutputs(ids=torch.tensor([10, 11, 12, 13, 14]), values={"probs": probs})


@pytest.mark.parametrize(
    ("strategy", "kernel"), [(LeastConfidence(), F.least_confidence), (Margin(), F.margin), (Entropy(), F.entropy)]
)
def test_score_strategy_selects_dataset_ids_of_the_top_scores(strategy, kernel):
    outputs = outputs_with_probs()
    selection = strategy.select(outputs, 3)
    expected_positions = torch.argsort(kernel(outputs["probs"]), descending=True, stable=True)[:3]
    assert torch.equal(selection.ids, outputs.ids[expected_positions])
    assert torch.allclose(selection.scores, kernel(outputs["probs"])[expected_positions])
    assert strategy.requires == frozenset({"probs"})


def test_margin_and_entropy_disagree_where_they_should():
    outputs = outputs_with_probs()
    # the 0.50/0.49 row has the smallest margin but not the largest entropy
    assert Margin().select(outputs, 1).ids.tolist() == [12]
    assert Entropy().select(outputs, 1).ids.tolist() == [11]


def test_random_is_uniform_without_replacement_and_seeded():
    outputs = al.PoolOutputs(ids=torch.arange(100, 110))
    a = Random().select(outputs, 4, generator=torch.Generator().manual_seed(0))
    b = Random().select(outputs, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.ids, b.ids) and a.ids.unique().numel() == 4
    assert set(a.ids.tolist()) <= set(range(100, 110)) and a.scores is None
    counts = torch.zeros(10)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2000):
        counts[Random().select(outputs, 3, generator=generator).ids - 100] += 1
    assert (counts / 2000 - 0.3).abs().max() < 0.05  # each id picked with probability k/N


@pytest.mark.parametrize("k", [0, 6, 2.0, True])
def test_query_size_is_checked_against_the_scored_pool(k):
    outputs = outputs_with_probs()
    with pytest.raises((ValueError, TypeError), match="`k`"):
        Entropy().select(outputs, k)
    with pytest.raises((ValueError, TypeError), match="`k`"):
        Random().select(outputs, k)


def test_pool_outputs_checks_alignment_and_names_missing_outputs():
    with pytest.raises(ValueError, match="one row per id \\(3\\), but got shape \\(2, 4\\)"):
        al.PoolOutputs(ids=torch.arange(3), values={"probs": torch.rand(2, 4)})
    with pytest.raises(KeyError, match="'embeddings', but only \\['probs'\\]"):
        outputs_with_probs()["embeddings"]


class DictItems(Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return {"image": torch.zeros(2), "label": torch.tensor(4 - i)}


def test_dataset_oracle_reads_targets_by_dataset_id():
    dataset = TensorDataset(torch.zeros(6, 2), torch.tensor([5, 4, 3, 2, 1, 0]))
    assert al.DatasetOracle(dataset).label(torch.tensor([4, 0, 2])).tolist() == [1, 5, 3]
    assert al.DatasetOracle(DictItems(), target_key="label").label(torch.tensor([1, 3])).tolist() == [3, 1]
    assert isinstance(al.DatasetOracle(dataset), al.Oracle)


def test_dataset_oracle_without_targets_says_so():
    with pytest.raises(ValueError, match="item 0 to carry a target at key 'missing' for the simulated oracle"):
        al.DatasetOracle(DictItems(), target_key="missing").label(torch.tensor([0]))
    with pytest.raises(ValueError, match="item 2 to carry a target at key 1"):
        al.DatasetOracle(TensorDataset(torch.zeros(3, 2))).label(torch.tensor([2]))
