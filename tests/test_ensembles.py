"""Committees: deep ensembles, snapshot ensembles and their stochastic variants."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from conftest import FAST_TRAINER, QUIET_TRAINER, TinyClassifier

import lightning_al as al
from lightning_al.callbacks import SnapshotCallback, cyclic_cosine_factor
from lightning_al.estimators import DeepEnsemble, SnapshotEnsemble
from lightning_al.estimators.ensembles import reinitialise
from lightning_al.strategies import ScoreStrategy


class Disagreement(ScoreStrategy):
    """Variance of the committee's probabilities, summed over classes (a test-local score)."""

    requires = frozenset({"mc_probs"})

    def __init__(self, estimator):
        self.estimator = estimator
        self.seen_shapes = []

    def score(self, outputs):
        probs = outputs["mc_probs"]
        self.seen_shapes.append(tuple(probs.shape))
        return probs.var(dim=1).sum(dim=1)


def test_cyclic_cosine_factor_by_hand():
    # 12 steps, 3 cycles: cycle length 4, factors 1, (cos(pi/4)+1)/2, 1/2, (cos(3pi/4)+1)/2, then 1 again
    expected = [1.0, (math.cos(math.pi / 4) + 1) / 2, 0.5, (math.cos(3 * math.pi / 4) + 1) / 2]
    assert [cyclic_cosine_factor(t, 12, 3) for t in range(8)] == pytest.approx(expected * 2)


def test_snapshot_callback_drives_the_learning_rate_and_keeps_one_snapshot_per_cycle(tiny_data):
    lrs = []

    class RecordLR(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    dm = al.ActiveDataModule(tiny_data[0], initial_labelled=24, batch_size=8)  # 3 steps per epoch
    snapshots = SnapshotCallback(cycles=3)
    trainer = pl.Trainer(
        max_epochs=4,
        callbacks=[snapshots, RecordLR()],
        **QUIET_TRAINER,
    )
    model = TinyClassifier()
    trainer.fit(model, datamodule=dm)
    assert lrs == pytest.approx([1e-2 * cyclic_cosine_factor(t, 12, 3) for t in range(12)])
    assert len(snapshots.snapshots) == 3
    first, second, last = (s["net.0.weight"] for s in snapshots.snapshots)
    assert not torch.equal(first, second) and torch.equal(last, model.net[0].weight.detach().cpu())


def test_reinitialise_is_seeded_and_independent():
    a, b, c = TinyClassifier(), TinyClassifier(), TinyClassifier()
    reinitialise(a, 7), reinitialise(b, 7), reinitialise(c, 8)
    assert torch.equal(a.net[0].weight, b.net[0].weight) and not torch.equal(a.net[0].weight, c.net[0].weight)
    with pytest.raises(ValueError, match="have layers with `reset_parameters`"):
        reinitialise(torch.nn.ReLU(), 0)


def run_one_round(estimator, tiny_data):
    strategy = Disagreement(estimator)
    dm = al.ActiveDataModule(tiny_data[0], test_set=tiny_data[1], initial_labelled=12, batch_size=8, seed=0)
    model = TinyClassifier()
    history = al.ActiveLearningLoop(strategy, query_size=4, rounds=1, trainer_kwargs=FAST_TRAINER).run(model, dm)
    return strategy, model, history


def test_deep_ensemble_trains_independent_members_every_round(tiny_data):
    ensemble = DeepEnsemble(members=3, seed=5)
    strategy, model, history = run_one_round(ensemble, tiny_data)
    assert strategy.seen_shapes == [(108, 3, 3)]  # 108 unlabelled samples, 3 members, 3 classes
    members = ensemble.members(model)
    weights = [m.net[0].weight.detach().cpu() for m in members]
    assert members[0] is model
    assert not torch.equal(weights[1], weights[2]) and not torch.equal(weights[0], weights[1])
    # each extra member was trained: its weights moved away from its seeded initialisation
    assert not torch.equal(weights[1], reinitialise(TinyClassifier(), 6).net[0].weight)
    assert all(score > 0 for score in history[0]["selected_scores"])


def test_stochastic_ensemble_stacks_members_and_dropout_samples(tiny_data):
    strategy, _, _ = run_one_round(DeepEnsemble(members=2, mc_samples_per_member=4), tiny_data)
    assert strategy.seen_shapes[0][1] == 8


def test_snapshot_ensemble_uses_the_snapshots_of_the_main_fit(tiny_data):
    ensemble = SnapshotEnsemble(cycles=3)
    strategy, model, _ = run_one_round(ensemble, tiny_data)
    assert strategy.seen_shapes[0][1] == 3
    members = ensemble.members(model)
    assert len(members) == 3 and not torch.equal(members[0].net[0].weight, members[1].net[0].weight)


def test_ensemble_arguments_are_checked():
    with pytest.raises(ValueError, match="`members` to be at least 2 for an ensemble, but got 1"):
        DeepEnsemble(members=1)
    with pytest.raises(ValueError, match="`cycles` to be an int >= 1, but got 0"):
        SnapshotEnsemble(cycles=0)
    with pytest.raises(ValueError, match="`mc_samples_per_member` to be an int >= 1, but got 0"):
        DeepEnsemble(mc_samples_per_member=0)


def test_train_dataloader_takes_a_bootstrap_multiset_of_labelled_ids(tiny_data):
    dm = al.ActiveDataModule(tiny_data[0], initial_labelled=6, batch_size=4)
    labelled = dm.labelled_ids
    resample = labelled[torch.tensor([0, 0, 0, 1, 2, 5])]
    seen = torch.cat([b.ids for b in dm.train_dataloader(resample)])
    assert sorted(seen.tolist()) == sorted(resample.tolist())
    with pytest.raises(ValueError, match="`ids` to be labelled, but got unlabelled ids"):
        dm.train_dataloader(dm.unlabelled_ids[:2])


def test_bootstrap_members_train_on_resamples_and_committees_give_embeddings(tiny_data):
    plain, bootstrapped = DeepEnsemble(members=2, seed=3), DeepEnsemble(members=2, seed=3, bootstrap=True)
    _, model_a, _ = run_one_round(plain, tiny_data)
    _, model_b, _ = run_one_round(bootstrapped, tiny_data)
    member_a, member_b = plain.members(model_a)[1], bootstrapped.members(model_b)[1]
    assert not torch.equal(member_a.net[0].weight, member_b.net[0].weight)  # same init and seed, other data
    x = torch.randn(5, 4)
    out = bootstrapped.predict(model_b, x, frozenset({"mc_probs", "embeddings"}))
    assert out["embeddings"].shape == (5, 16) and out["mc_probs"].shape == (5, 2, 3)
