"""The bad-input catalogue: every refusal names the argument and what it received, and changes nothing.

Run ``pytest tests/test_bad_inputs.py -s -k catalogue`` to print each input with the message it gets.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from conftest import FAST_TRAINER, TinyClassifier, blobs
from torch import nn
from torch.utils.data import Dataset

import lightning_al as al
from lightning_al.strategies import BALD, Entropy, Random


def make_dm(**kwargs) -> al.ActiveDataModule:
    kwargs.setdefault("initial_labelled", 10)
    kwargs.setdefault("num_classes", 3)
    kwargs.setdefault("test_set", blobs(30, seed=1))
    return al.ActiveDataModule(blobs(60, seed=0), batch_size=8, seed=0, **kwargs)


def make_loop(**kwargs) -> al.ActiveLearningLoop:
    kwargs.setdefault("strategy", Entropy())
    kwargs.setdefault("query_size", 5)
    kwargs.setdefault("rounds", 1)
    return al.ActiveLearningLoop(trainer_kwargs=FAST_TRAINER, progress=False, **kwargs)


class NaNForSomeIds(TinyClassifier):
    """Logits are NaN for inputs whose first feature is above 0.85 (a few pool samples)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return torch.where((x[:, :1] > 0.85).expand_as(logits), torch.nan, logits)


class NoDropout(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


class InputsOnly(Dataset):
    def __init__(self) -> None:
        self.x = blobs(60, seed=0).tensors[0]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return (self.x[index],)


@dataclass
class Case:
    """A bad input: what is tried, the error it must raise, and the pool that must stay as it was."""

    name: str
    attempt: Callable[[al.ActiveDataModule], object]
    error: type[Exception]
    message: str


def nan_scoring(dm: al.ActiveDataModule) -> None:
    dm.test_set = None  # the pool's outputs are the ones checked here (test-set outputs are checked alike)
    make_loop().run(NaNForSomeIds(), dm)


CASES = [
    Case("query_size = 0", lambda dm: make_loop(query_size=0), ValueError, "`query_size` to be an int >= 1"),
    Case("query_size = -3", lambda dm: make_loop(query_size=-3), ValueError, "but got -3"),
    Case(
        "query_size larger than the pool",
        lambda dm: make_loop(query_size=51).run(TinyClassifier(), dm),
        ValueError,
        "`query_size` to be at most the 50 unlabelled samples, but got 51",
    ),
    Case(
        "empty pool (everything labelled)",
        lambda dm: make_loop().run(TinyClassifier(), make_dm(initial_labelled=60)),
        ValueError,
        "Expected an unlabelled pool to query from, but every sample is already labelled",
    ),
    Case("budget = 0", lambda dm: make_loop(budget=0), ValueError, "`budget` to be an int >= 1 or None, but got 0"),
    Case(
        "NaN model outputs",
        nan_scoring,
        ValueError,
        "Expected finite model outputs, but 'probs' is NaN or inf for dataset ids",
    ),
    Case(
        "MCDropout on a model without dropout",
        lambda dm: make_loop(strategy=BALD()).run(NoDropout(), dm),
        ValueError,
        "Expected the model to contain a dropout module",
    ),
    Case(
        "embedding layer that does not exist",
        lambda dm: make_loop(strategy=al.strategies.CoreSet(), estimator=al.Softmax(embedding_layer="nett.9")).run(
            TinyClassifier(), dm
        ),
        ValueError,
        r"`embedding_layer` to name a layer of TinyClassifier, one of \[.*'net.0'.*\], but got 'nett.9'",
    ),
    Case(
        "dataset items without a target (simulated oracle)",
        lambda dm: al.DatasetOracle(InputsOnly()).label(torch.tensor([0, 1])),
        ValueError,
        "target",
    ),
    Case(
        "labels outside the class range",
        lambda dm: dm.label(dm.unlabelled_ids[:2], torch.tensor([0, 3])),
        ValueError,
        "labels",
    ),
    Case(
        "unknown ids",
        lambda dm: dm.label(torch.tensor([0, 600]), torch.tensor([0, 1])),
        ValueError,
        "600",
    ),
    Case(
        "already labelled ids",
        lambda dm: dm.label(dm.labelled_ids[:1], torch.tensor([0])),
        ValueError,
        str(int(make_dm().labelled_ids[0])),
    ),
    Case(
        "duplicate ids",
        lambda dm: dm.label(dm.unlabelled_ids[:1].repeat(2), torch.tensor([0, 0])),
        ValueError,
        r"`ids` to be unique, but ids \[\d+\] repeat",
    ),
    Case(
        "strategy given as a string",
        lambda dm: al.ActiveLearningLoop(strategy="entropy", query_size=1),
        TypeError,
        "`strategy` to be a lightning_al Strategy, but got str",
    ),
    Case(
        "initial_labelled larger than the dataset",
        lambda dm: make_dm(initial_labelled=61),
        ValueError,
        "`initial_labelled` to be at most the 60 samples of `train_set`, but got 61",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_bad_input_is_refused_and_changes_nothing(case: Case):
    dm = make_dm()
    before = copy.deepcopy(dm.state_dict())
    torch.manual_seed(0)
    with pytest.raises(case.error, match=case.message):
        case.attempt(dm)
    after = dm.state_dict()["pool"]
    assert all(torch.equal(after[key], before["pool"][key]) for key in ("labelled_round", "labels"))


def test_nan_outputs_name_the_offending_ids():
    dm = make_dm()
    x = dm.train_set.tensors[0]
    bad = sorted(set((x[:, 0] > 0.85).nonzero().flatten().tolist()) - set(dm.labelled_ids.tolist()))
    assert bad, "the fixture must put some NaN rows in the pool"
    with pytest.raises(ValueError) as info:
        nan_scoring(dm)
    named = [int(i) for i in re.findall(r"\d+", str(info.value).split("dataset ids", 1)[1])]
    assert named[: len(bad)] == bad[: len(named)]


def test_catalogue(capsys):
    """Prints the catalogue: each bad input and the message it gets."""
    lines = []
    for case in CASES:
        dm = make_dm()
        torch.manual_seed(0)
        try:
            case.attempt(dm)
        except case.error as error:
            lines.append(f"- {case.name}: {type(error).__name__}: {str(error).splitlines()[0]}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert len(lines) == len(CASES)


def test_random_needs_no_scoring_even_with_a_model_that_outputs_nan():
    dm = make_dm(test_set=None)
    history = make_loop(strategy=Random()).run(NaNForSomeIds(), dm)
    assert dm.num_labelled == 15 and len(history) == 2


def test_an_exhausted_budget_asks_for_nothing_more(tmp_path):
    dm = make_dm()
    loop = make_loop(budget=7, rounds=None, output_dir=str(tmp_path))
    history = loop.run(TinyClassifier(), dm)
    assert [row["num_labelled"] for row in history] == [10, 15, 17]  # the last query takes what is left
    before = dm.state_dict()["pool"]["labelled_round"].clone()
    assert loop.run(TinyClassifier(), dm) == history  # run again: nothing asked, no row added
    resumed = make_loop(budget=7, rounds=None, output_dir=str(tmp_path))
    assert resumed.run(TinyClassifier(), make_dm(), resume=True) == history
    assert torch.equal(dm.state_dict()["pool"]["labelled_round"], before)
