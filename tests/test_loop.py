"""The active-learning loop end to end on a tiny model, and its refusals of bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST_TRAINER, TinyClassifier

import lightning_al as al
from lightning_al.strategies import Entropy, LeastConfidence, Margin, Random


def make_loop(strategy, **kwargs) -> al.ActiveLearningLoop:
    kwargs.setdefault("query_size", 5)
    kwargs.setdefault("rounds", 2)
    kwargs.setdefault("trainer_kwargs", FAST_TRAINER)
    return al.ActiveLearningLoop(strategy=strategy, **kwargs)


def make_dm(tiny_data, **kwargs) -> al.ActiveDataModule:
    train, test = tiny_data
    kwargs.setdefault("initial_labelled", 10)
    return al.ActiveDataModule(train, test_set=test, batch_size=8, seed=0, **kwargs)


@pytest.mark.parametrize("strategy_cls", [Random, LeastConfidence, Margin, Entropy])
def test_two_rounds_end_to_end(tiny_data, tmp_path, strategy_cls):
    dm = make_dm(tiny_data)
    initial = set(dm.labelled_ids.tolist())
    torch.manual_seed(0)
    history = make_loop(strategy_cls(), output_dir=str(tmp_path)).run(TinyClassifier(), dm)

    assert [row["round"] for row in history] == [0, 1, 2]
    assert [row["num_labelled"] for row in history] == [10, 15, 20]
    selected = [row["selected_ids"] for row in history[:2]]
    assert "selected_ids" not in history[2]
    flat = [i for ids in selected for i in ids]
    assert all(len(ids) == 5 for ids in selected)
    assert len(set(flat)) == 10 and not set(flat) & initial  # unique, and never an initially labelled id
    assert set(dm.labelled_ids.tolist()) == initial | set(flat)
    # the pool remembers the round at which each query was labelled
    for round_, ids in enumerate(selected, start=1):
        assert (dm.pool.labelled_round[ids] == round_).all()
    # the oracle's labels are the dataset's targets
    assert torch.equal(dm.pool.labels[flat], tiny_data[0].tensors[1][flat])
    for row in history:
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert row["train_seconds"] > 0 and "train_loss" in row
    # history is plain data, and the same on disk
    assert json.loads((tmp_path / "history.json").read_text()) == json.loads(json.dumps(history))


def test_score_strategies_select_the_top_scores(tiny_data):
    dm = make_dm(tiny_data)
    history = make_loop(Entropy(), rounds=1).run(TinyClassifier(), dm)
    scores = history[0]["selected_scores"]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= s <= torch.log(torch.tensor(3.0)).item() + 1e-6 for s in scores)


@pytest.mark.parametrize("strategy_cls", [Random, Entropy])
def test_seeded_runs_pick_the_same_samples(tiny_data, strategy_cls):
    def picks(seed):
        torch.manual_seed(0)
        history = make_loop(strategy_cls(), seed=seed).run(TinyClassifier(), make_dm(tiny_data))
        return [row.get("selected_ids") for row in history]

    first = picks(seed=3)
    assert picks(seed=3) == first
    if strategy_cls is Random:
        assert picks(seed=4) != first


def test_trains_only_on_labelled_ids_with_their_pool_labels(tiny_data):
    dm = make_dm(tiny_data)
    model = TinyClassifier()
    history = make_loop(Random(), rounds=1).run(model, dm)
    last_fit_ids = torch.cat(model.seen_ids[-3:]).unique()  # one step per epoch is not guaranteed: check all
    assert set(torch.cat(model.seen_ids).tolist()) <= set(dm.labelled_ids.tolist())
    assert set(last_fit_ids.tolist()) <= set(dm.labelled_ids.tolist())
    assert len(history) == 2


def test_stops_on_budget_and_takes_the_rest(tiny_data):
    dm = make_dm(tiny_data)
    history = make_loop(Random(), query_size=4, rounds=None, budget=10).run(TinyClassifier(), dm)
    assert [len(row.get("selected_ids", [])) for row in history] == [4, 4, 2, 0]
    assert dm.num_labelled == 20


def test_stops_when_the_pool_is_exhausted(tiny_data):
    train, test = tiny_data
    dm = al.ActiveDataModule(train, test_set=test, initial_labelled=110, batch_size=16)
    history = make_loop(Random(), query_size=4, rounds=None).run(TinyClassifier(), dm)
    assert [len(row.get("selected_ids", [])) for row in history] == [4, 4, 2, 0]
    assert dm.pool.num_unlabelled == 0


def weights_at_each_fit(reset_weights: bool, tiny_data) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model = TinyClassifier()
    initial = model.net[0].weight.detach().clone()
    loop = make_loop(Random(), rounds=2, reset_weights=reset_weights)
    seen = []
    build = loop._fit_trainer

    def spy():
        seen.append(model.net[0].weight.detach().clone())
        return build()

    loop._fit_trainer = spy
    loop.run(model, make_dm(tiny_data))
    assert not torch.equal(model.net[0].weight, initial)  # training did change the weights
    return initial, seen


def test_reset_weights_starts_every_fit_from_the_initial_weights(tiny_data):
    initial, seen = weights_at_each_fit(True, tiny_data)
    assert len(seen) == 3 and all(torch.equal(w, initial) for w in seen)


def test_continue_training_keeps_the_previous_weights(tiny_data):
    initial, seen = weights_at_each_fit(False, tiny_data)
    assert len(seen) == 3 and torch.equal(seen[0], initial)
    assert not torch.equal(seen[1], initial) and not torch.equal(seen[2], seen[1])


def test_loop_state_round_trip(tiny_data):
    loop = make_loop(Random(), rounds=1)
    loop.run(TinyClassifier(), make_dm(tiny_data))
    clone = make_loop(Random(), rounds=1)
    clone.load_state_dict(loop.state_dict())
    assert clone.history == loop.history and clone.round == loop.round and clone.acquired == loop.acquired
    assert torch.equal(clone.generator.get_state(), loop.generator.get_state())
    assert torch.equal(torch.randperm(50, generator=clone.generator), torch.randperm(50, generator=loop.generator))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(query_size=0), "`query_size` to be an int >= 1, but got 0"),
        (dict(query_size=2.5), "`query_size` to be an int >= 1, but got 2.5"),
        (dict(rounds=-1), "`rounds` to be an int >= 0 or None, but got -1"),
        (dict(budget=0), "`budget` to be an int >= 1 or None, but got 0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_loop(Random(), **kwargs)


def test_bad_strategy_and_oracle_are_refused():
    with pytest.raises(TypeError, match="`strategy` to be a lightning_al Strategy, but got str"):
        al.ActiveLearningLoop(strategy="entropy", query_size=1)
    with pytest.raises(TypeError, match=r"`oracle` to have a `label\(ids\)` or `answer\(query\)` method, but got int"):
        al.ActiveLearningLoop(strategy=Random(), query_size=1, oracle=3)


def test_query_larger_than_the_pool_is_refused(tiny_data):
    dm = make_dm(tiny_data, initial_labelled=115)
    with pytest.raises(ValueError, match="`query_size` to be at most the 5 unlabelled samples, but got 6"):
        make_loop(Random(), query_size=6).run(TinyClassifier(), dm)
    assert dm.num_labelled == 115


def test_empty_pool_is_refused(tiny_data):
    dm = make_dm(tiny_data, initial_labelled=120)
    with pytest.raises(ValueError, match="unlabelled pool to query from, but every sample is already labelled"):
        make_loop(Random(), query_size=1).run(TinyClassifier(), dm)


def test_nan_model_outputs_name_the_sample_ids(tiny_data):
    class NaNOnSome(TinyClassifier):
        def forward(self, x):
            logits = super().forward(x)
            return torch.where((x[:, :1] > 2.0), torch.full_like(logits, float("nan")), logits)

    dm = make_dm(tiny_data)
    before = dm.pool.state_dict()
    with pytest.raises(ValueError, match="'probs' is NaN or inf for dataset ids"):
        make_loop(Entropy(), rounds=1).run(NaNOnSome(), dm)
    assert torch.equal(dm.pool.labelled_round, before["labelled_round"])  # nothing labelled


def test_strategy_selecting_labelled_ids_is_refused(tiny_data):
    class Cheat(al.Strategy):
        def select(self, outputs, k, generator=None):
            return al.Selection(ids=dm.labelled_ids[:k])

    dm = make_dm(tiny_data)
    with pytest.raises(ValueError, match=r"`selection\.ids` to be unlabelled"):
        make_loop(Cheat(), rounds=1).run(TinyClassifier(), dm)
    assert dm.num_labelled == 10


def test_estimator_that_cannot_provide_the_requirement_is_refused(tiny_data):
    class NoProbs(al.Estimator):
        provides = frozenset({"embeddings"})

    with pytest.raises(ValueError, match=r"Entropy\(\) requires, \['probs'\], but it provides only \['embeddings'\]"):
        make_loop(Entropy(), estimator=NoProbs(), rounds=1)


def test_random_needs_no_model_outputs(tiny_data):
    calls = []

    class Counting(al.Softmax):
        def predict(self, model, inputs, needs):
            calls.append(1)
            return super().predict(model, inputs, needs)

    make_loop(Random(), estimator=Counting(), rounds=1).run(TinyClassifier(), make_dm(tiny_data))
    assert calls == []


def test_user_oracle_labels_are_recorded(tiny_data):
    class AlwaysZero:
        def __init__(self):
            self.asked = []

        def label(self, ids):
            self.asked.append(ids.clone())
            return torch.zeros_like(ids)

    oracle = AlwaysZero()
    dm = make_dm(tiny_data)
    make_loop(Random(), oracle=oracle, rounds=2).run(TinyClassifier(), dm)
    asked = torch.cat(oracle.asked)
    assert asked.numel() == 10 and (dm.pool.labels[asked] == 0).all()


def test_user_callbacks_keep_state_and_logged_metrics_reach_the_history(tiny_data):
    import pytorch_lightning as pl

    class CountFits(pl.Callback):
        def __init__(self):
            self.fits = 0
            self.ids_seen: set[int] = set()

        def on_fit_start(self, trainer, pl_module):
            self.fits += 1

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ids_seen.update(al.batch_ids(batch).tolist())

    class WithEval(TinyClassifier):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_acc", (self(x).argmax(1) == y).float().mean())

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", torch.nn.functional.cross_entropy(self(x), y))

    train, test = tiny_data
    dm = al.ActiveDataModule(train, val_set=test, test_set=test, initial_labelled=10, batch_size=8)
    counter = CountFits()
    history = make_loop(Random(), trainer_kwargs={**FAST_TRAINER, "callbacks": [counter]}).run(WithEval(), dm)
    assert counter.fits == 3
    assert counter.ids_seen == set(dm.labelled_ids.tolist()) - set(history[-1].get("selected_ids", []))
    assert all({"val_acc", "test_loss", "test_accuracy"} <= set(row) for row in history)


def test_without_test_set_the_loop_still_runs(tiny_data):
    dm = al.ActiveDataModule(tiny_data[0], initial_labelled=10, batch_size=8)
    history = make_loop(Entropy(), rounds=1).run(TinyClassifier(), dm)
    assert len(history) == 2 and "test_accuracy" not in history[0] and dm.num_labelled == 15
