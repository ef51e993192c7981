"""Learning loss for active learning (Yoo & Kweon 2019): ranking loss, head, callback, strategy."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import FAST_TRAINER, QUIET_TRAINER, TinyClassifier, blobs
from torch.utils.data import TensorDataset

import lightning_al as al
from lightning_al.callbacks.loss_prediction import LossPredictionCallback, LossPredictionHead
from lightning_al.functional.ranking import loss_prediction_ranking_loss
from lightning_al.strategies.loss_prediction import LossPrediction, LossPredictionEstimator

LAYERS = ["net.0", "net.1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_ranking_loss(predicted, target, margin):
    """Loop over the pairs (i, B-1-i) of the first half, with the paper's A(l_i, l_j)."""
    b = len(predicted)
    terms = []
    for i in range(b // 2):
        j = b - 1 - i
        a = 1.0 if target[i] > target[j] else -1.0
        terms.append(max(0.0, -a * (predicted[i] - predicted[j]) + margin))
    return sum(terms) / len(terms)


def test_ranking_loss_by_hand():
    # pairs (0, 3): l0 > l3, predicted 3 - 1 = 2 -> max(0, -2 + 0.5) = 0
    #       (1, 2): l1 < l2, predicted 0.5 - 0 = 0.5 -> max(0, 0.5 + 0.5) = 1
    predicted = torch.tensor([3.0, 0.5, 0.0, 1.0])
    target = torch.tensor([2.0, 0.1, 0.3, 1.0])
    assert loss_prediction_ranking_loss(predicted, target, margin=0.5).item() == pytest.approx(0.5)
    # odd batch: the middle sample (index 2, a huge outlier here) is left out
    predicted5 = torch.tensor([3.0, 0.5, 100.0, 0.0, 1.0])
    target5 = torch.tensor([2.0, 0.1, -100.0, 0.3, 1.0])
    assert loss_prediction_ranking_loss(predicted5, target5, margin=0.5).item() == pytest.approx(0.5)
    # a single sample has no pair: zero, but still differentiable
    single = torch.tensor([1.0], requires_grad=True)
    zero = loss_prediction_ranking_loss(single, torch.tensor([2.0]))
    zero.backward()
    assert zero.item() == 0.0 and single.grad is not None


def test_ranking_loss_matches_loop_reference_and_gradients():
    gen = torch.Generator().manual_seed(0)
    for b in (2, 7, 16):
        predicted = torch.randn(b, generator=gen, requires_grad=True)
        target = torch.rand(b, generator=gen, requires_grad=True)
        loss = loss_prediction_ranking_loss(predicted, target, margin=0.7)
        expected = reference_ranking_loss(predicted.tolist(), target.tolist(), 0.7)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        loss.backward()
        assert target.grad is None  # targets are detached
        assert predicted.grad is not None


def test_ranking_loss_refuses_bad_input():
    with pytest.raises(ValueError, match="`predicted_B` and `target_B` to have the same shape"):
        loss_prediction_ranking_loss(torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="`margin`"):
        loss_prediction_ranking_loss(torch.zeros(4), torch.zeros(4), margin=-1.0)
    with pytest.raises(ValueError, match="`target_B`"):
        loss_prediction_ranking_loss(torch.zeros(4), torch.zeros(4, 1))


def test_head_shapes_and_pooling():
    head = LossPredictionHead([3, 5], hidden=8)
    out = head([torch.randn(6, 3), torch.randn(6, 5, 4, 4)])
    assert out.shape == (6,)
    # 4-D features are global-average-pooled: a constant map equals the vector of its means
    vec = torch.randn(6, 5)
    same = head([torch.ones(6, 3), vec[:, :, None, None].expand(6, 5, 4, 4)])
    assert torch.allclose(same, head([torch.ones(6, 3), vec]), atol=1e-6)
    with pytest.raises(ValueError, match="feature 1"):
        head([torch.randn(6, 3), torch.randn(6, 4)])


def make_dm(n=120, initial=60, batch_size=16):
    return al.ActiveDataModule(blobs(n, seed=0), batch_size=batch_size, seed=0, initial_labelled=initial)


def fit(callback, model=None, max_epochs=3, dm=None):
    pl.seed_everything(0, verbose=False)
    model = model or TinyClassifier()
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        callbacks=[callback],
        **QUIET_TRAINER,
    )
    trainer.fit(model, datamodule=dm or make_dm())
    return model, trainer


def overlapping_blobs(n=240, seed=0):
    """Three classes that overlap, so per-sample losses vary with the position and can be ranked."""
    centres = torch.randn(3, 4, generator=torch.Generator().manual_seed(1234))
    y = torch.arange(n) % 3
    return TensorDataset(centres[y] + torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)), y)


def test_ranking_loss_falls_and_is_logged_and_step_restored():
    callback = LossPredictionCallback(LAYERS, hidden=16, lr=1e-2, detach_fraction=None)
    dm = al.ActiveDataModule(overlapping_blobs(960), batch_size=120, seed=0, initial_labelled=960)
    model, trainer = fit(callback, max_epochs=8, dm=dm)
    assert len(callback.epoch_losses) == 8
    first, last = sum(callback.epoch_losses[:3]) / 3, sum(callback.epoch_losses[-3:]) / 3
    assert last < 0.8 * first  # seen: 0.69
    assert trainer.callback_metrics["loss_prediction_loss"].item() == pytest.approx(callback.epoch_losses[-1], rel=1e-4)
    assert "training_step" not in model.__dict__  # the instance-level wrapper is gone
    assert model.training_step.__func__ is TinyClassifier.training_step


class ZeroLossClassifier(TinyClassifier):
    """Returns ``0 * CE``: every backbone gradient then comes from the ranking loss alone."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * 0.0


@pytest.mark.parametrize("own_optimizer", [True, False])
def test_detach_stops_gradient_into_backbone(own_optimizer):
    weights = {}
    for detach in (None, 0):
        callback = LossPredictionCallback(
            LAYERS, hidden=8, detach_fraction=None, detach_after_epoch=detach, own_optimizer=own_optimizer
        )
        pl.seed_everything(0, verbose=False)
        model = ZeroLossClassifier()
        before = model.net[0].weight.detach().clone()
        fit(callback, model=model, max_epochs=2)
        weights[detach] = (model.net[0].weight.detach() - before).abs().max().item()
        # the head trained either way (its initialisation is seeded, so compare with a fresh build)
        untrained = LossPredictionCallback(LAYERS, hidden=8)
        untrained._build_head([16, 16], torch.device("cpu"))
        assert not torch.equal(untrained.head.out.weight, callback.head.out.weight)
    assert weights[None] > 1e-4  # the ranking loss moves the backbone before detaching
    assert weights[0] == 0.0  # and not at all once detached


def test_wrong_layer_name_lists_the_available_ones():
    callback = LossPredictionCallback(["net.0", "nope"])
    model = TinyClassifier()
    with pytest.raises(ValueError, match=r"`layers`.*'net\.0'.*'net\.3'.*\['nope'\]"):
        fit(callback, model=model, max_epochs=1)
    assert "training_step" not in model.__dict__
    with pytest.raises(ValueError, match="`layers`"):
        LossPredictionCallback([])


def test_state_dict_round_trip_gives_identical_predictions(tmp_path):
    callback = LossPredictionCallback(LAYERS, hidden=8, lr=1e-2)
    model, trainer = fit(callback, max_epochs=2)
    x = blobs(10, seed=3).tensors[0]
    expected = callback.predict_loss(model, x)
    restored = LossPredictionCallback(LAYERS, hidden=8, lr=1e-2)
    restored.load_state_dict(callback.state_dict())
    assert torch.equal(restored.predict_loss(model, x), expected)
    saved_state, restored_state = callback.optimizer.state_dict()["state"], restored.optimizer.state_dict()["state"]
    assert torch.equal(restored_state[0]["momentum_buffer"], saved_state[0]["momentum_buffer"])
    # Lightning checkpoints hold it under the callback's state key
    path = tmp_path / "ckpt.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["callbacks"][callback.state_key]
    assert torch.equal(saved["head"]["out.weight"], callback.head.out.weight.detach())
    # a fresh fit re-initialises the head from the seed (reset_each_fit)
    fit(callback, max_epochs=1)
    assert callback.epoch_losses and len(callback.epoch_losses) == 1


def test_strategy_end_to_end_two_rounds():
    train, test = blobs(120, seed=0), blobs(60, seed=1)
    dm = al.ActiveDataModule(train, test_set=test, batch_size=8, seed=0, initial_labelled=10)
    initial = set(dm.labelled_ids.tolist())
    strategy = LossPrediction(LAYERS, hidden=8, detach_after_epoch=2)
    assert isinstance(strategy.estimator, LossPredictionEstimator)
    assert strategy.estimator.modules() == []  # no head before the first fit
    torch.manual_seed(0)
    history = al.ActiveLearningLoop(strategy, query_size=5, rounds=2, trainer_kwargs=FAST_TRAINER).run(
        TinyClassifier(), dm
    )
    picks = [i for row in history[:2] for i in row["selected_ids"]]
    assert all(len(row["selected_ids"]) == 5 for row in history[:2])
    assert len(set(picks)) == 10 and not set(picks) & initial
    for row in history[:2]:
        assert row["selected_scores"] == sorted(row["selected_scores"], reverse=True)
        assert "loss_prediction_loss" in row
    assert strategy.estimator.modules() == [strategy.callback.head]
