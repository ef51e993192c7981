"""The BALD-family strategies: thin wrappers over the (N, T, C) kernels, their estimators, and a loop run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import FAST_TRAINER, TinyClassifier

import lightning_al as al
from lightning_al.estimators.base import Estimator, Softmax
from lightning_al.estimators.mc_dropout import MCDropout
from lightning_al.functional.bayesian import (
    bald,
    kl_to_consensus,
    mean_std,
    predictive_entropy,
    variation_ratio,
    vote_entropy,
)
from lightning_al.outputs import MC_PROBS, PROBS
from lightning_al.strategies.bayesian import BALD, QBC, MaxEntropy, MeanSTD, VariationRatios

STRATEGIES_AND_KERNELS = [
    (BALD, {}, bald),
    (VariationRatios, {}, variation_ratio),
    (MeanSTD, {}, mean_std),
    (MaxEntropy, {}, predictive_entropy),
    (QBC, {}, vote_entropy),
    (QBC, {"disagreement": "vote_entropy"}, vote_entropy),
    (QBC, {"disagreement": "kl"}, kl_to_consensus),
]


def outputs_with_mc_probs() -> al.PoolOutputs:
    """Hand-made rows (T = 4 members, C = 3 classes) followed by random ones."""
    hand = torch.tensor(
        [
            [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]],  # agree and confident
            [[1 / 3, 1 / 3, 1 / 3]] * 4,  # agree but unsure: top entropy, zero BALD
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],  # confident, split 2-2
            [[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.0, 0.1, 0.9], [0.9, 0.0, 0.1]],  # confident, split 2-1-1
            [[0.6, 0.4, 0.0], [0.4, 0.6, 0.0], [0.6, 0.4, 0.0], [0.4, 0.6, 0.0]],  # unsure, split 2-2
        ],
        dtype=torch.float64,
    )
    rng = np.random.default_rng(0)
    random = torch.as_tensor(rng.dirichlet(np.full(3, 0.5), size=(7, 4)))
    probs = torch.cat([hand, random]).float()
    return al.PoolOutputs(ids=torch.arange(100, 100 + probs.shape[0]), values={MC_PROBS: probs})


@pytest.mark.parametrize(("cls", "kwargs", "kernel"), STRATEGIES_AND_KERNELS)
@pytest.mark.parametrize("k", [1, 4, 12])
def test_selects_dataset_ids_of_the_top_scores(cls, kwargs, kernel, k):
    outputs = outputs_with_mc_probs()
    strategy = cls(**kwargs)
    selection = strategy.select(outputs, k)
    scores = kernel(outputs[MC_PROBS])
    expected = torch.sort(scores, descending=True, stable=True).indices[:k]
    assert torch.equal(selection.ids, outputs.ids[expected])
    assert torch.equal(selection.scores, scores[expected])
    assert strategy.requires == frozenset({MC_PROBS})


def test_strategies_rank_the_hand_made_rows_as_their_papers_intend():
    outputs = outputs_with_mc_probs()
    hand = al.PoolOutputs(ids=outputs.ids[:5], values={MC_PROBS: outputs[MC_PROBS][:5]})
    # BALD and KL prefer confident disagreement; max entropy prefers the uniform, agreeing row
    assert BALD().select(hand, 1).ids.tolist() == [103]
    assert QBC(disagreement="kl").select(hand, 1).ids.tolist() == [103]
    assert MaxEntropy().select(hand, 1).ids.tolist() == [101]
    # a 2-1-1 vote has more vote entropy than a 2-2 one; the 2-2 rows tie, earlier first
    assert QBC().select(hand, 3).ids.tolist() == [103, 102, 104]
    # ... but the same variation ratio (modal count 2 of 4): all three tie at 1/2
    assert VariationRatios().select(hand, 3).ids.tolist() == [102, 103, 104]
    assert VariationRatios().score(hand)[2:].tolist() == [0.5, 0.5, 0.5]
    # std per class: 2-2 split of one-hots (1/2, 1/2, 0); of 0.6/0.4 (0.1, 0.1, 0); the 2-1-1 row spreads over all three
    assert MeanSTD().select(hand, 3).ids.tolist() == [103, 102, 104]
    torch.testing.assert_close(MeanSTD().score(hand)[[2, 4]], torch.tensor([1 / 3, 0.2 / 3]))
    for strategy in (BALD(), QBC(disagreement="kl"), QBC(), VariationRatios(), MeanSTD()):
        # agreeing rows are the last picks for every disagreement score
        assert set(strategy.select(hand, 5).ids[-2:].tolist()) == {100, 101}, strategy
    torch.testing.assert_close(BALD().score(hand)[2], torch.tensor(math.log(2)))


@pytest.mark.parametrize("cls", [BALD, VariationRatios, MeanSTD, MaxEntropy, QBC])
def test_default_estimator_is_mc_dropout_with_mc_samples(cls):
    strategy = cls(mc_samples=7)
    assert isinstance(strategy.estimator, MCDropout) and strategy.estimator.mc_samples == 7
    assert cls().estimator.mc_samples == 20
    assert "mc_samples=7" in repr(strategy)


class FakeEnsemble(Estimator):
    """Stands in for a deep ensemble: each member is a fixed random linear map of the inputs."""

    provides = frozenset({MC_PROBS, PROBS})

    def __init__(self, members: int = 3, in_features: int = 4, num_classes: int = 3) -> None:
        generator = torch.Generator().manual_seed(0)
        self.weights = torch.randn(members, in_features, num_classes, generator=generator)

    def predict(self, model, inputs, needs):
        probs = torch.softmax(torch.einsum("bd,tdc->btc", inputs.float(), self.weights), dim=-1)
        return {MC_PROBS: probs, PROBS: probs.mean(dim=1)}


@pytest.mark.parametrize("cls", [BALD, VariationRatios, MeanSTD, MaxEntropy, QBC])
def test_any_estimator_providing_mc_probs_is_used(cls):
    ensemble = FakeEnsemble()
    strategy = cls(estimator=ensemble)
    assert strategy.estimator is ensemble
    assert "FakeEnsemble" in repr(strategy)


@pytest.mark.parametrize("cls", [BALD, VariationRatios, MeanSTD, MaxEntropy, QBC])
def test_bad_estimators_and_sample_counts_are_refused(cls):
    with pytest.raises(
        ValueError,
        match=r"`estimator` to provide 'mc_probs' .*but Softmax provides only \['embeddings', 'grad_embeddings'",
    ):
        cls(estimator=Softmax())
    with pytest.raises(TypeError, match="`estimator` to be a lightning_al Estimator or None, but got str"):
        cls(estimator="mc_dropout")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"`mc_samples` to be an int >= 1, but got {bad!r}"):
            cls(mc_samples=bad)


@pytest.mark.parametrize("bad", ["entropy", "KL", "", None, 1])
def test_qbc_refuses_unknown_disagreement_and_lists_the_allowed_ones(bad):
    with pytest.raises(ValueError, match=f"`disagreement` to be 'vote_entropy' or 'kl', but got {bad!r}"):
        QBC(disagreement=bad)


def test_qbc_measures_differ():
    outputs = outputs_with_mc_probs()
    assert not torch.equal(QBC(disagreement="kl").score(outputs), QBC(disagreement="vote_entropy").score(outputs))
    assert repr(QBC(disagreement="kl", mc_samples=3)) == "QBC(mc_samples=3, disagreement='kl')"


def test_missing_mc_probs_is_named():
    outputs = al.PoolOutputs(ids=torch.arange(3), values={PROBS: torch.full((3, 2), 0.5)})
    with pytest.raises(KeyError, match="'mc_probs', but only \\['probs'\\]"):
        BALD().select(outputs, 1)


def test_bald_loop_end_to_end(tiny_data):
    train, test = tiny_data
    dm = al.ActiveDataModule(train, test_set=test, initial_labelled=10, batch_size=8, seed=0)
    initial = set(dm.labelled_ids.tolist())
    strategy = BALD(mc_samples=5)
    torch.manual_seed(0)
    loop = al.ActiveLearningLoop(strategy=strategy, query_size=5, rounds=2, trainer_kwargs=FAST_TRAINER)
    assert loop.estimator is strategy.estimator
    history = loop.run(TinyClassifier(), dm)

    assert [row["num_labelled"] for row in history] == [10, 15, 20]
    selected = [row["selected_ids"] for row in history[:2]]
    flat = [i for ids in selected for i in ids]
    assert all(len(ids) == 5 for ids in selected)
    assert len(set(flat)) == 10 and not set(flat) & initial  # unique, never already labelled
    assert set(dm.labelled_ids.tolist()) == initial | set(flat)
    for row in history[:2]:
        scores = row["selected_scores"]
        assert scores == sorted(scores, reverse=True)
        # dropout makes the 5 passes differ, so the chosen samples have positive mutual information
        assert all(0 < s <= math.log(3) + 1e-6 for s in scores)
