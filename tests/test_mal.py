"""MAL: cosine logits, the selection score, the minimax entropy, the callback's state and the loop."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import FAST_TRAINER, QUIET_TRAINER, TinyClassifier, blobs
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

import lightning_al as al
from lightning_al.callbacks.mal import (
    CosineClassifier,
    MALCallback,
    entropy_of_logits,
    minimax_entropy,
    reverse_gradient,
)
from lightning_al.functional.mal import cosine_logits, mal_score
from lightning_al.outputs import PROBS, PoolOutputs
from lightning_al.strategies.mal import MAL, MAL_UNLABELLED_SCORE, MALEstimator

ENCODER = "net.1"  # the ReLU after TinyClassifier's first layer


class CosineTiny(TinyClassifier):
    """TinyClassifier whose last layer is MAL's cosine classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.net[3] = CosineClassifier(16, 3, temperature=0.1)


def labelled_dm(min_steps: int = 0, without_class_2: bool = False) -> al.ActiveDataModule:
    """90 blobs, 12 labelled: every class, or only classes 0 and 1 (then the unlabelled set differs visibly)."""
    data = blobs(90, seed=0)
    dm = al.ActiveDataModule(data, batch_size=8, eval_batch_size=16, min_steps_per_epoch=min_steps, seed=0)
    ids = torch.tensor([i for i in range(18) if i % 3 != 2]) if without_class_2 else torch.arange(12)  # class = id % 3
    dm.label(ids, data.tensors[1][ids], round=0)
    return dm


def trainer(callbacks: list[pl.Callback], epochs: int = 2, **overrides) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", callbacks=callbacks, **{**QUIET_TRAINER, **overrides})


def features(model: TinyClassifier, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.net[1](model.net[0](x))


# ----- kernels ----------------------------------------------------------------------------------


def test_cosine_logits_match_a_hand_computation():
    f = torch.tensor([[3.0, 4.0], [0.0, -2.0], [0.0, 0.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    r = 1 / math.sqrt(2)
    # cosines of (0.6, 0.8) and (0, -1) with the unit prototypes (1, 0), (0, 1), (r, r); divided by T = 0.5
    expected = torch.tensor([[0.6, 0.8, 1.4 * r], [0.0, -1.0, -r], [0.0, 0.0, 0.0]]) / 0.5
    torch.testing.assert_close(cosine_logits(f, w, 0.5), expected)
    head = CosineClassifier(2, 3, temperature=0.5)
    with torch.no_grad():
        head.weight.copy_(w)
    torch.testing.assert_close(head(f), expected)
    torch.testing.assert_close(head(7 * f), expected)  # invariant to the feature's scale
    assert head(torch.randn(4, 2, 1)).shape == (4, 3)  # trailing axes flattened
    with pytest.raises(ValueError, match="`temperature`"):
        cosine_logits(f, w, 0.0)
    with pytest.raises(ValueError, match="`weight_C_D`"):
        cosine_logits(f, torch.ones(3, 5), 1.0)


def test_mal_score_ranks_like_a_direct_reference():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(40, 5, generator=g, dtype=torch.float64), dim=1)
    u = torch.rand(40, generator=g, dtype=torch.float64)
    scores = mal_score(probs, u, threshold=0.5)
    p = probs.numpy()
    h = -(p * np.log(p)).sum(axis=1)
    # reference: sort by (discriminator says "unlabelled", entropy), both descending
    reference = sorted(range(40), key=lambda i: (u[i].item() >= 0.5, h[i]), reverse=True)
    assert torch.argsort(scores, descending=True).tolist() == reference
    called_unlabelled = (u >= 0.5).numpy()
    np.testing.assert_allclose(scores.numpy()[called_unlabelled], h[called_unlabelled], rtol=1e-12)
    assert scores[~torch.from_numpy(called_unlabelled)].max() < scores[torch.from_numpy(called_unlabelled)].min()
    np.testing.assert_allclose(mal_score(probs, u, threshold=0.0).numpy(), h, rtol=1e-12)  # entropy sampling
    # extreme case: a certain candidate still beats a uniform non-candidate
    edge = mal_score(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([0.5, 0.49]))
    assert edge[0] > edge[1] and edge.tolist() == pytest.approx([0.0, -1.0])
    with pytest.raises(ValueError, match="`unlabelled_prob_N`"):
        mal_score(probs, u + 1)
    with pytest.raises(ValueError, match="`threshold`"):
        mal_score(probs, u, threshold=2.0)


# ----- the minimax game --------------------------------------------------------------------------


def test_reverse_gradient_is_identity_forward_and_negates_backward():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = reverse_gradient(x)
    assert torch.equal(y, x)
    (y * torch.tensor([3.0, 5.0])).sum().backward()
    assert x.grad.tolist() == [-3.0, -5.0]


def test_minimax_entropy_moves_the_encoder_down_and_the_classifier_up():
    torch.manual_seed(0)
    encoder, head = nn.Linear(4, 8), CosineClassifier(8, 3, temperature=0.5)
    model = nn.Sequential(encoder, head)
    x = torch.randn(32, 4)
    entropy, feats = minimax_entropy(model, encoder, x)
    torch.testing.assert_close(feats, encoder(x).detach())
    plain = entropy_of_logits(model(x)).mean()
    torch.testing.assert_close(entropy, plain)
    grad_enc, grad_head = torch.autograd.grad(plain, [encoder.weight, head.weight])
    (-entropy).backward()  # the MAL term of the loss with weight 1
    torch.testing.assert_close(head.weight.grad, -grad_head)  # the classifier descends -H: ascends H
    torch.testing.assert_close(encoder.weight.grad, grad_enc)  # reversed: the encoder descends H

    def entropy_after_step(module: nn.Module) -> float:
        saved = [p.detach().clone() for p in module.parameters()]
        with torch.no_grad():
            for p in module.parameters():
                p -= 1e-2 * p.grad
            value = entropy_of_logits(model(x)).mean().item()
            for p, s in zip(module.parameters(), saved, strict=True):
                p.copy_(s)
        return value

    assert entropy_after_step(head) > plain.item() + 1e-4
    assert entropy_after_step(encoder) < plain.item() - 1e-4


def test_fit_lowers_the_losses_and_restores_the_training_step():
    dm = labelled_dm(min_steps=40, without_class_2=True)
    x, y = dm.train_set.tensors
    pl.seed_everything(0, verbose=False)
    model = CosineTiny()
    lab, unl = dm.labelled_ids, dm.unlabelled_ids
    with torch.no_grad():
        model.eval()
        ce_before = nn.functional.cross_entropy(model(x[lab]), y[lab]).item()
        h_before = entropy_of_logits(model(x[unl])).mean().item()
    model.train()
    callback = MALCallback(ENCODER, lr=1e-2)
    trainer([callback]).fit(model, datamodule=dm)
    assert "training_step" not in model.__dict__  # the patch is gone
    assert len(callback.entropies) == len(callback.discriminator_losses) == 80
    disc, ent = callback.discriminator_losses, callback.entropies
    assert np.mean(disc[-10:]) < 0.9 * np.mean(disc[:10])
    assert np.mean(ent[-10:]) < 0.8 * np.mean(ent[:10])
    with torch.no_grad():
        model.eval()
        assert nn.functional.cross_entropy(model(x[lab]), y[lab]).item() < 0.5 * ce_before
        assert entropy_of_logits(model(x[unl])).mean().item() < 0.8 * h_before
    u = callback.unlabelled_prob(features(model, x))
    assert ((u > 0) & (u < 1)).all() and u[unl].mean() > u[lab].mean()


class _LossProbe(pl.Callback):
    """Records, per batch, the loss Lightning optimised and the user's own logged loss."""

    def __init__(self) -> None:
        self.pairs: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.pairs.append((float(outputs["loss"]), float(trainer.callback_metrics["train_loss"])))


def test_the_optimised_loss_is_the_model_loss_minus_the_weighted_entropy():
    dm = labelled_dm(min_steps=3)
    callback, probe = MALCallback(ENCODER, entropy_weight=0.5), _LossProbe()
    trainer([callback, probe], epochs=1).fit(CosineTiny(), datamodule=dm)
    assert len(probe.pairs) == len(callback.entropies) == 3
    for (optimised, user), entropy in zip(probe.pairs, callback.entropies, strict=True):
        assert entropy > 0.01 and optimised == pytest.approx(user - 0.5 * entropy, abs=1e-5)


def test_the_minimax_term_changes_the_trained_model():
    dm = labelled_dm()

    def fitted(weight: float | None) -> dict[str, torch.Tensor]:
        pl.seed_everything(3, verbose=False)
        model = CosineTiny()
        trainer([MALCallback(ENCODER, entropy_weight=weight)] if weight is not None else []).fit(model, datamodule=dm)
        return model.state_dict()

    plain, mal = fitted(None), fitted(1.0)
    assert any(not torch.equal(plain[k], mal[k]) for k in plain)


def test_warns_without_a_cosine_classifier_and_refuses_bad_arguments():
    with pytest.warns(UserWarning, match="CosineClassifier"):
        trainer([MALCallback(ENCODER)], epochs=1).fit(TinyClassifier(), datamodule=labelled_dm())
    with pytest.raises(ValueError, match="`encoder_layer`"):
        trainer([MALCallback("nope")], epochs=1).fit(CosineTiny(), datamodule=labelled_dm())
    with pytest.raises(ValueError, match="`encoder_layer`"):
        MALCallback("")
    with pytest.raises(ValueError, match="`entropy_weight`"):
        MALCallback(ENCODER, entropy_weight=-1.0)
    with pytest.raises(ValueError, match="`lr`"):
        MALCallback(ENCODER, lr=0)
    with pytest.raises(ValueError, match="`threshold`"):
        MAL(ENCODER, threshold=1.5)
    with pytest.raises(TypeError, match="`callback`"):
        MALEstimator(object())
    with pytest.raises(RuntimeError, match="trained"):
        MALCallback(ENCODER).unlabelled_prob(torch.randn(2, 16))


# ----- state -------------------------------------------------------------------------------------


def test_state_round_trip_gives_identical_modules():
    dm = labelled_dm()
    pl.seed_everything(0, verbose=False)
    model, callback = CosineTiny(), MALCallback(ENCODER)
    trainer([callback]).fit(model, datamodule=dm)
    buffer = io.BytesIO()
    torch.save(callback.state_dict(), buffer)
    buffer.seek(0)
    restored = MALCallback(ENCODER)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    assert restored.state_key == callback.state_key
    for (name, a), (_, b) in zip(
        callback.discriminator.state_dict().items(), restored.discriminator.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    for a, b in zip(
        callback.optimizer.state_dict()["state"].values(),
        restored.optimizer.state_dict()["state"].values(),
        strict=True,
    ):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert restored.entropies == callback.entropies and restored.discriminator_losses == callback.discriminator_losses
    assert torch.equal(restored._batches.generator.get_state(), callback._batches.generator.get_state())
    f = features(model, dm.train_set.tensors[0])
    assert torch.equal(restored.unlabelled_prob(f), callback.unlabelled_prob(f))
    assert callback.state_dict()["in_fit"] is False  # a state saved between fits: the next fit starts afresh
    empty = MALCallback(ENCODER)
    empty.load_state_dict(MALCallback(ENCODER).state_dict())
    assert empty.discriminator is None


class _Probe(pl.Callback):
    """Records MAL's discriminator and entropies as training starts."""

    def __init__(self, mal: MALCallback) -> None:
        self.mal = mal
        self.seen: dict | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen = {
            "discriminator": {k: v.clone() for k, v in self.mal.discriminator.state_dict().items()},
            "entropies": list(self.mal.entropies),
        }


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_checkpoint_resume_restores_the_discriminator(tmp_path):
    dm = labelled_dm(min_steps=5)
    pl.seed_everything(0, verbose=False)
    first = MALCallback(ENCODER)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer([first, ckpt], enable_checkpointing=True).fit(CosineTiny(), datamodule=dm)
    path = tmp_path / "epoch=0.ckpt"
    saved = torch.load(path, weights_only=False)["callbacks"][first.state_key]
    assert saved["in_fit"] is True and len(saved["entropies"]) == 5

    resumed = MALCallback(ENCODER)  # reset_each_fit=True, yet the loaded state must survive the fit start
    probe = _Probe(resumed)
    trainer([resumed, probe]).fit(CosineTiny(), datamodule=dm, ckpt_path=str(path))
    for name, value in saved["discriminator"].items():
        assert torch.equal(probe.seen["discriminator"][name], value), name
    assert probe.seen["entropies"] == saved["entropies"] == first.entropies[:5]
    assert len(resumed.entropies) == 10  # the second epoch appended to the restored record


# ----- strategy and loop -------------------------------------------------------------------------


def test_strategy_selects_the_expected_ids_for_hand_made_outputs():
    uniform, peaked, mild = [0.5, 0.5], [0.99, 0.01], [0.8, 0.2]
    outputs = PoolOutputs(
        ids=torch.tensor([10, 11, 12, 13, 14]),
        values={
            PROBS: torch.tensor([uniform, peaked, mild, uniform, mild]),
            MAL_UNLABELLED_SCORE: torch.tensor([0.2, 0.9, 0.7, 0.6, 0.1]),
        },
    )
    # "unlabelled" by the discriminator: 11, 12, 13 -> by entropy 13, 12, 11; then 10 (uniform) before 14
    strategy = MAL(ENCODER)
    assert strategy.select(outputs, 5).ids.tolist() == [13, 12, 11, 10, 14]
    selection = strategy.select(outputs, 2)
    assert selection.ids.tolist() == [13, 12]
    assert selection.scores.tolist() == pytest.approx([math.log(2), -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))])
    assert MAL(ENCODER, threshold=0.0).select(outputs, 2).ids.tolist() == [10, 13]  # pure entropy


def test_strategy_end_to_end_in_the_loop(tiny_data):
    train, test = tiny_data
    dm = al.ActiveDataModule(train, test_set=test, initial_labelled=10, batch_size=8, seed=0)
    initial = set(dm.labelled_ids.tolist())
    strategy = MAL(ENCODER)
    assert strategy.callbacks() == [strategy.callback] and strategy.estimator.callback is strategy.callback
    torch.manual_seed(0)
    history = al.ActiveLearningLoop(strategy, query_size=5, rounds=2, trainer_kwargs=FAST_TRAINER).run(CosineTiny(), dm)
    picks = [row["selected_ids"] for row in history[:2]]
    flat = [i for ids in picks for i in ids]
    assert all(len(ids) == 5 for ids in picks) and len(set(flat)) == 10 and not set(flat) & initial
    assert dm.num_labelled == 20 and history[-1]["num_labelled"] == 20
    assert history[0]["selected_scores"] == sorted(history[0]["selected_scores"], reverse=True)
    assert "mal_entropy" in history[0] and "mal_discriminator_loss" in history[0]
    assert len(strategy.estimator.modules()) == 1
    assert MALEstimator(strategy.callback).predict(CosineTiny(), train.tensors[0][:4], frozenset({PROBS}))[PROBS].sum(
        1
    ).tolist() == pytest.approx([1.0] * 4)
