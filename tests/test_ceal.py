"""CEAL: pseudo-labels train one fit and never reach the labelled set, the pool's record or the oracle."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST_TRAINER, TinyClassifier

import lightning_al as al
from lightning_al.strategies import Entropy
from lightning_al.strategies.ceal import CEAL


def test_datamodule_trains_on_pseudo_labels_without_recording_them(tiny_data):
    dm = al.ActiveDataModule(tiny_data[0], initial_labelled=6, batch_size=64)
    pseudo = dm.unlabelled_ids[:4]
    before = dm.pool.state_dict()
    dm.set_pseudo_labels(pseudo, torch.tensor([2, 2, 2, 2]))
    (batch,) = list(dm.train_dataloader())
    _, y = batch
    by_id = dict(zip(batch.ids.tolist(), y.tolist(), strict=True))
    assert set(by_id) == set(dm.labelled_ids.tolist()) | set(pseudo.tolist())
    assert all(by_id[i] == 2 for i in pseudo.tolist())
    assert torch.equal(dm.pool.labels, before["labels"]) and dm.num_labelled == 6
    dm.clear_pseudo_labels()
    assert set(next(iter(dm.train_dataloader())).ids.tolist()) == set(dm.labelled_ids.tolist())
    with pytest.raises(ValueError, match="`ids` to be unlabelled"):
        dm.set_pseudo_labels(dm.labelled_ids[:1], torch.tensor([0]))


def test_ceal_pseudo_labels_the_confident_and_queries_the_uncertain():
    probs = torch.tensor([[0.999, 0.0005, 0.0005], [0.34, 0.33, 0.33], [0.0005, 0.999, 0.0005], [0.5, 0.5, 0.0]])
    outputs = al.PoolOutputs(ids=torch.tensor([10, 11, 12, 13]), values={"probs": probs})
    strategy = CEAL(Entropy(), threshold=0.05, decay=0.04)
    selection = strategy.select(outputs, 1)
    assert selection.ids.tolist() == [11]
    assert selection.pseudo_ids.tolist() == [10, 12] and selection.pseudo_labels.tolist() == [0, 1]
    assert strategy.current_threshold() == pytest.approx(0.01)  # decays by 0.04 per round
    strategy.select(outputs, 1)
    assert strategy.current_threshold() == 0.0
    assert strategy.select(outputs, 1).pseudo_ids.numel() == 0  # a threshold of 0 trusts nothing
    clone = CEAL()
    clone.load_state_dict(strategy.state_dict())
    assert clone.rounds_selected == 3


def test_defaults_are_the_papers_threshold_and_decay():
    strategy = CEAL()  # Wang et al. 2016: delta_0 = 0.005, dr = 0.00033
    assert (strategy.threshold, strategy.decay) == (0.005, 0.00033)
    assert isinstance(strategy.base, Entropy)
    strategy.rounds_selected = 10
    assert strategy.current_threshold() == pytest.approx(0.005 - 0.0033)


def test_pseudo_labels_never_leak_into_the_labelled_set(tiny_data):
    dm = al.ActiveDataModule(tiny_data[0], initial_labelled=12, batch_size=8, seed=0)
    initial = set(dm.labelled_ids.tolist())
    torch.manual_seed(0)
    model = TinyClassifier()
    fits = []

    loop = al.ActiveLearningLoop(CEAL(threshold=1.05, decay=0.0), query_size=4, rounds=2, trainer_kwargs=FAST_TRAINER)
    build = loop._fit_trainer

    def spy():
        fits.append(len(model.seen_ids))
        return build()

    loop._fit_trainer = spy
    history = loop.run(model, dm)
    queried = {i for row in history for i in row.get("selected_ids", [])}
    assert set(dm.labelled_ids.tolist()) == initial | queried  # only the oracle's labels are recorded
    assert history[0]["num_pseudo_labelled"] > 0
    # the second fit trained on ids that were never labelled: the pseudo-labelled ones
    second_fit = torch.cat(model.seen_ids[fits[1] : fits[2]]).unique().tolist()
    assert set(second_fit) - set(dm.labelled_ids.tolist())
    assert dm.pseudo_labelled_ids.numel() == 0  # cleared after the fit that used them
