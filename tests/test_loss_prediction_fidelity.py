"""Learning loss (Yoo & Kweon 2019) against the paper and its reference code: candidate subset, detach point,
head optimiser and its learning-rate decay."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from conftest import FAST_TRAINER, QUIET_TRAINER, TinyClassifier, blobs

import lightning_al as al
from lightning_al.callbacks.loss_prediction import LossPredictionCallback, step_at_fraction
from lightning_al.oracles import DatasetOracle, Query
from lightning_al.outputs import PoolOutputs
from lightning_al.strategies.loss_prediction import PREDICTED_LOSS, LossPrediction

LAYERS = ["net.0", "net.1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----- defaults -------------------------------------------------------------------------------------
def test_defaults_are_the_papers_and_the_reference_codes():
    strategy = LossPrediction(LAYERS)
    callback = strategy.callback
    assert strategy.subset_factor == 10.0  # 10,000 candidates for 1,000 queried
    assert (callback.hidden, callback.margin, callback.weight) == (128, 1.0, 1.0)
    assert callback.detach_fraction == 0.6 and callback.detach_after_epoch is None  # 120 of 200 epochs
    assert (callback.head_optimizer, callback.head_lr, callback.momentum, callback.weight_decay) == (
        "sgd",
        0.1,
        0.9,
        5e-4,
    )
    assert (callback.lr_decay_fraction, callback.lr_decay) == (0.8, 0.1)  # MultiStepLR at 160 of 200, gamma 0.1
    assert LossPredictionCallback(LAYERS, head_optimizer="adam").head_lr == 1e-3


# ----- the candidate subset -------------------------------------------------------------------------
def reference_subset_top_k(ids, scores, k, factor, seed):
    """Sort by id, draw ``ceil(factor k)`` positions with ``randperm``, take the top ``k`` by a Python sort."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    size = math.ceil(factor * k)
    if size < len(ids):
        drawn = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))[:size].tolist()
        order = [order[i] for i in sorted(drawn)]
    ranked = sorted(order, key=lambda i: (-scores[i], ids[i]))  # highest first, ties to the lower id
    return [ids[i] for i in ranked[:k]]


def pool_outputs(n, seed, shuffle=True):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randperm(3 * n, generator=gen)[:n]  # sparse dataset ids, not in order
    if not shuffle:
        ids = ids.sort().values
    scores = torch.rand(n, generator=gen)
    scores[:4] = 0.5  # a few ties
    return PoolOutputs(ids=ids, values={PREDICTED_LOSS: scores})


@pytest.mark.parametrize(("n", "k", "factor"), [(200, 5, 10.0), (200, 7, 2.5), (30, 5, 10.0), (50, 10, 1.0)])
def test_subset_selection_matches_an_independent_reference(n, k, factor):
    outputs = pool_outputs(n, seed=n + k)
    strategy = LossPrediction(LAYERS, subset_factor=factor)
    selection = strategy.select(outputs, k, generator=torch.Generator().manual_seed(3))
    ids, scores = outputs.ids.tolist(), outputs[PREDICTED_LOSS].tolist()
    assert selection.ids.tolist() == reference_subset_top_k(ids, scores, k, factor, seed=3)
    position = {i: p for p, i in enumerate(ids)}
    assert selection.scores.tolist() == [scores[position[i]] for i in selection.ids.tolist()]


def test_the_subset_depends_on_the_generator_and_the_ids_not_on_their_order():
    outputs = pool_outputs(300, seed=0)
    strategy = LossPrediction(LAYERS, subset_factor=10.0)
    picks = [strategy.select(outputs, 5, generator=torch.Generator().manual_seed(s)).ids for s in range(4)]
    assert len({tuple(p.tolist()) for p in picks}) > 1  # the generator draws the subset
    permuted = outputs.subset(torch.randperm(300, generator=torch.Generator().manual_seed(9)))
    again = strategy.select(permuted, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.ids, picks[0])
    # with a 50-candidate subset the query is (for these scores) not the top 5 of the whole pool
    whole = LossPrediction(LAYERS, subset_factor=None).select(outputs, 5)
    assert whole.ids.tolist() == reference_subset_top_k(
        outputs.ids.tolist(), outputs[PREDICTED_LOSS].tolist(), 5, 1e9, 0
    )
    assert not torch.equal(picks[0], whole.ids)


def test_a_subset_covering_the_pool_scores_it_all_and_draws_nothing():
    outputs = pool_outputs(40, seed=1)
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    selection = LossPrediction(LAYERS, subset_factor=10.0).select(outputs, 4, generator=generator)
    assert torch.equal(generator.get_state(), state)
    assert torch.equal(selection.ids, LossPrediction(LAYERS, subset_factor=None).select(outputs, 4).ids)


def test_only_whole_pool_scoring_is_streamed():
    assert LossPrediction(LAYERS, subset_factor=None).streamable
    assert not LossPrediction(LAYERS).streamable  # the subset needs every predicted loss in one place


@pytest.mark.parametrize("bad", [0.5, 0, True, math.inf, "10"])
def test_bad_subset_factor_is_refused(bad):
    with pytest.raises(ValueError, match=r"`subset_factor`.*but got"):
        LossPrediction(LAYERS, subset_factor=bad)


class CrashingOracle:
    """Ground truth that records every query and raises at the ``fail_at``-th one."""

    def __init__(self, dm: al.ActiveDataModule, fail_at: int | None = None) -> None:
        self.truth, self.asked, self.fail_at = DatasetOracle(dm.train_set), [], fail_at

    def answer(self, query: Query) -> torch.Tensor:
        self.asked.append(query.ids.tolist())
        if self.fail_at is not None and len(self.asked) == self.fail_at:
            raise RuntimeError("the oracle crashed")
        return self.truth.label(query.ids)


def test_a_resumed_run_draws_the_same_subsets(tmp_path):
    def run(path, oracle_fail_at=None, resume=False):
        dm = al.ActiveDataModule(blobs(150, seed=0), initial_labelled=10, batch_size=8, seed=0)
        oracle = CrashingOracle(dm, oracle_fail_at)
        strategy = LossPrediction(LAYERS, subset_factor=3.0, hidden=8)
        loop = al.ActiveLearningLoop(
            strategy, query_size=4, rounds=3, oracle=oracle, trainer_kwargs=dict(FAST_TRAINER, max_epochs=2),
            output_dir=str(path), progress=False,
        )  # fmt: skip
        torch.manual_seed(0)
        return loop.run(TinyClassifier(), dm, resume=resume), oracle.asked

    reference, asked = run(tmp_path / "reference")
    with pytest.raises(RuntimeError, match="crashed"):
        run(tmp_path / "run", oracle_fail_at=2)
    resumed, resumed_asked = run(tmp_path / "run", resume=True)
    assert [row["selected_ids"] for row in resumed[:-1]] == [row["selected_ids"] for row in reference[:-1]]
    assert resumed_asked == asked[1:]  # the crashed round's query again, then the same later ones
    assert len({i for query in asked for i in query}) == 12


# ----- the detach point -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fraction", "total", "step"), [(0.6, 200, 120), (0.7, 10, 7), (0.6, 7, 5), (0.0, 50, 0), (1.0, 50, 50)]
)
def test_step_at_fraction_by_hand(fraction, total, step):
    assert step_at_fraction(fraction, total) == step


class ZeroLossClassifier(TinyClassifier):
    """Returns ``0 * CE``: every backbone gradient comes from the ranking loss alone."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * 0.0


class BackboneGradients(pl.Callback):
    """Per optimiser step: whether the first layer of the backbone received a gradient."""

    def __init__(self) -> None:
        self.flows: list[bool] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grad = pl_module.net[0].weight.grad
        self.flows.append(grad is not None and grad.abs().max().item() > 0)


def gradient_flow(callback: LossPredictionCallback, **trainer_kwargs) -> list[bool]:
    pl.seed_everything(0, verbose=False)
    probe = BackboneGradients()
    dm = al.ActiveDataModule(blobs(120, seed=0), batch_size=16, seed=0, initial_labelled=64)  # 4 steps an epoch
    pl.Trainer(accelerator="cpu", callbacks=[callback, probe], **QUIET_TRAINER, **trainer_kwargs).fit(
        ZeroLossClassifier(), datamodule=dm
    )
    return probe.flows


@pytest.mark.parametrize(
    ("kwargs", "trainer_kwargs", "joint_steps", "total"),
    [
        (dict(detach_fraction=0.5), dict(max_epochs=3), 6, 12),  # mid-epoch: step 6 is epoch 1's third batch
        (dict(detach_fraction=0.3), dict(max_steps=10), 3, 10),  # a fit bounded by steps
        (dict(detach_fraction=0.6), dict(max_epochs=10, max_steps=10), 6, 10),  # whichever ends the fit first
        (dict(detach_fraction=None), dict(max_epochs=2), 8, 8),  # never detached
        (dict(detach_fraction=0.0), dict(max_epochs=2), 0, 8),  # detached throughout
        (dict(detach_fraction=0.0, detach_after_epoch=1), dict(max_epochs=3), 4, 12),  # the epoch wins
    ],
)
def test_the_ranking_loss_reaches_the_backbone_until_the_detach_point(kwargs, trainer_kwargs, joint_steps, total):
    flows = gradient_flow(LossPredictionCallback(LAYERS, hidden=8, **kwargs), **trainer_kwargs)
    assert flows == [True] * joint_steps + [False] * (total - joint_steps)


def test_an_unbounded_fit_is_refused_for_a_fractional_setting():
    trainer = SimpleNamespace(estimated_stepping_batches=float("inf"))
    with pytest.raises(ValueError, match=r"`detach_fraction`.*inf"):
        LossPredictionCallback(LAYERS, lr_decay_fraction=None).on_train_start(trainer, None)
    with pytest.raises(ValueError, match=r"`lr_decay_fraction`"):
        LossPredictionCallback(LAYERS, detach_fraction=None).on_train_start(trainer, None)
    # an absolute epoch and no decay need no length
    LossPredictionCallback(LAYERS, detach_after_epoch=3, lr_decay_fraction=None).on_train_start(trainer, None)


@pytest.mark.parametrize(
    ("name", "value"),
    [("detach_fraction", 1.5), ("detach_fraction", -0.1), ("lr_decay_fraction", True), ("head_optimizer", "rmsprop")],
)
def test_bad_settings_are_refused_with_their_name(name, value):
    with pytest.raises(ValueError, match=f"`{name}`.*{value!r}"):
        LossPredictionCallback(LAYERS, **{name: value})


# ----- the head's optimiser -------------------------------------------------------------------------
def one_head_step(callback: LossPredictionCallback, global_step: int, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Parameters after one `on_before_optimizer_step` at ``global_step`` with the given gradients."""
    for p, g in zip(callback.head.parameters(), grads, strict=True):
        p.grad = g.clone()
    callback.on_before_optimizer_step(SimpleNamespace(global_step=global_step), None, callback.optimizer)
    return [p.detach().clone() for p in callback.head.parameters()]


@pytest.mark.parametrize(("global_step", "rate"), [(0, 0.1), (7, 0.1), (8, 0.01), (9, 0.01)])
def test_sgd_step_with_momentum_weight_decay_and_decay_by_hand(global_step, rate):
    callback = LossPredictionCallback(LAYERS, hidden=3)
    callback._build_head([2, 2], torch.device("cpu"))
    callback._decay_step = step_at_fraction(0.8, 10)  # 8
    before = [p.detach().clone() for p in callback.head.parameters()]
    grads = [torch.full_like(p, 0.5) for p in before]
    after = one_head_step(callback, global_step, grads)
    # first SGD step: buffer = g + wd p, p <- p - rate * buffer
    for p0, g, p1 in zip(before, grads, after, strict=True):
        assert torch.allclose(p1, p0 - rate * (g + 5e-4 * p0), atol=1e-7)
    # second step with the same gradient: buffer = 0.9 * buffer + g + wd p1
    buffers = [g + 5e-4 * p0 for p0, g in zip(before, grads, strict=True)]
    again = one_head_step(callback, global_step, grads)
    for p1, g, b, p2 in zip(after, grads, buffers, again, strict=True):
        assert torch.allclose(p2, p1 - rate * (0.9 * b + g + 5e-4 * p1), atol=1e-7)


def test_adam_head_optimiser_option():
    callback = LossPredictionCallback(LAYERS, hidden=3, head_optimizer="adam", weight_decay=0.0, lr_decay_fraction=None)
    callback._build_head([2, 2], torch.device("cpu"))
    assert isinstance(callback.optimizer, torch.optim.Adam)
    before = [p.detach().clone() for p in callback.head.parameters()]
    after = one_head_step(callback, 0, [torch.full_like(p, 0.5) for p in before])
    for p0, p1 in zip(before, after, strict=True):  # Adam's first step moves every weight by lr (sign of g)
        assert torch.allclose(p0 - p1, torch.full_like(p0, 1e-3), atol=1e-6)


def test_the_decay_step_follows_the_fit():
    callback = LossPredictionCallback(LAYERS, hidden=8)
    gradient_flow(callback, max_epochs=5)  # 20 steps: detached from 12, decayed from 16
    assert (callback._detach_step, callback._decay_step) == (12, 16)
    assert callback.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    no_decay = LossPredictionCallback(LAYERS, hidden=8, lr=0.05, lr_decay_fraction=None)
    gradient_flow(no_decay, max_epochs=1)
    assert no_decay._decay_step is None and no_decay.optimizer.param_groups[0]["lr"] == 0.05


@pytest.mark.parametrize(("lr", "expected"), [(None, 1e-2), (3e-3, 3e-3)])
def test_a_head_joining_the_models_optimiser_takes_its_settings(lr, expected):
    callback = LossPredictionCallback(LAYERS, hidden=8, own_optimizer=False, lr=lr)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", callbacks=[callback], **QUIET_TRAINER)
    dm = al.ActiveDataModule(blobs(60, seed=0), batch_size=16, seed=0, initial_labelled=32)
    trainer.fit(TinyClassifier(), datamodule=dm)  # TinyClassifier: Adam, lr 1e-2
    group = trainer.optimizers[0].param_groups[-1]
    assert group["params"][0] is next(callback.head.parameters())
    assert group["lr"] == expected and callback.optimizer is None
    assert group["betas"] == trainer.optimizers[0].defaults["betas"]
