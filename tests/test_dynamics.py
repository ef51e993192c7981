"""Forgetting events and label dispersion: kernels, callbacks in a real fit, and the strategy in the loop."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import FAST_TRAINER, QUIET_TRAINER, TinyClassifier, blobs
from torch import nn

import lightning_al as al
from lightning_al.callbacks.dispersion import LabelDispersionCallback
from lightning_al.callbacks.forgetting import ForgettingCallback, merge_rank_statistics
from lightning_al.functional.dynamics import forgetting_counts, label_dispersion
from lightning_al.strategies.dynamics import LabelDispersion


# ----- kernels ----------------------------------------------------------------------------
def _ref_forgetting(seq: list[bool]) -> int:
    return sum(1 for a, b in itertools.pairwise(seq) if a and not b)


def _ref_dispersion(seq: list[int]) -> float:
    _, counts = np.unique(np.array(seq), return_counts=True)
    return 1 - counts.max() / len(seq)


def test_forgetting_counts_hand_worked():
    correct = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]]).bool()
    assert forgetting_counts(correct.T).tolist() == [2, 0, 0, 1]
    assert forgetting_counts(correct.T).dtype == torch.long
    assert forgetting_counts(torch.ones(1, 3, dtype=torch.bool)).tolist() == [0, 0, 0]


def test_forgetting_counts_match_python_reference():
    g = torch.Generator().manual_seed(0)
    correct_E_N = torch.rand(30, 50, generator=g) < 0.6
    expected = [_ref_forgetting(correct_E_N[:, n].tolist()) for n in range(50)]
    assert forgetting_counts(correct_E_N).tolist() == expected


def test_label_dispersion_hand_worked_and_reference():
    preds = torch.tensor([[0, 0, 0, 0], [1, 2, 1, 2], [0, 1, 2, 3]])
    assert torch.allclose(label_dispersion(preds.T), torch.tensor([0.0, 0.5, 0.75]))
    g = torch.Generator().manual_seed(1)
    preds_E_N = torch.randint(0, 4, (7, 40), generator=g)
    expected = torch.tensor([_ref_dispersion(preds_E_N[:, n].tolist()) for n in range(40)])
    assert torch.allclose(label_dispersion(preds_E_N), expected.float())


def test_kernels_refuse_bad_input():
    with pytest.raises(TypeError, match="correct_E_N"):
        forgetting_counts(torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\(E, N\)"):
        forgetting_counts(torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="integer labels"):
        label_dispersion(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="E >= 1"):
        label_dispersion(torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        label_dispersion(torch.tensor([[0, -1]]))


# ----- ForgettingCallback in a real fit --------------------------------------------------
class SpyClassifier(TinyClassifier):
    """Records (ids, correct) of the prediction made at each presentation, inside the training step."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        self.records.append((batch.ids.cpu(), (logits.argmax(-1) == y).cpu()))
        return nn.functional.cross_entropy(logits, y)


def _reference_from_records(records, size):
    sequences: dict[int, list[bool]] = {}
    for ids, correct in records:
        for i, c in zip(ids.tolist(), correct.tolist(), strict=True):
            sequences.setdefault(i, []).append(c)
    ids = sorted(sequences)
    counts = [int(forgetting_counts(torch.tensor(sequences[i]).unsqueeze(1))) for i in ids]
    never = [not any(sequences[i]) for i in ids]
    presentations = [len(sequences[i]) for i in ids]
    return ids, counts, never, presentations


def _fit(model, dm, callback, epochs=6):
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=[callback],
        **QUIET_TRAINER,
    )
    trainer.fit(model, datamodule=dm)
    return trainer


def test_forgetting_callback_matches_spy_reference():
    # noisy labels on a hard problem, so that samples get forgotten and some are never learned
    data = blobs(80, seed=3)
    g = torch.Generator().manual_seed(0)
    flip = torch.rand(80, generator=g) < 0.3
    data.tensors[1][flip] = torch.randint(0, 3, (int(flip.sum()),), generator=g)
    dm = al.ActiveDataModule(data, initial_labelled=50, batch_size=8, seed=0)
    callback = ForgettingCallback()
    model = SpyClassifier()
    trainer = _fit(model, dm, callback, epochs=8)

    ids, counts, never, presentations = _reference_from_records(model.records, dm.pool.size)
    got_ids, got_counts = callback.forgetting_counts_by_id()
    assert got_ids.tolist() == ids == sorted(dm.labelled_ids.tolist())
    assert got_counts.tolist() == counts
    assert sum(counts) > 0  # the test exercises forgetting
    assert callback.presentations[got_ids].tolist() == presentations == [8] * 50
    _, got_never = callback.never_learned_by_id()
    assert got_never.tolist() == never
    assert "forgetting/mean" in trainer.callback_metrics
    assert math.isclose(float(trainer.callback_metrics["forgetting/max"]), max(counts))

    score_ids, scores = callback.forgotten_or_unlearned_score()
    assert score_ids.tolist() == ids
    expected = [math.inf if n else float(c) for c, n in zip(counts, never, strict=True)]
    assert scores.tolist() == expected

    # kept across fits: a second fit keeps counting from the same state
    before = callback.presentations.clone()
    model.records.clear()
    _fit(model, dm, callback, epochs=1)
    assert torch.equal(callback.presentations - before, (before > 0).long())


def test_forgetting_callback_falls_back_to_extra_forward():
    class DirectNet(TinyClassifier):  # never calls self(x), so the hook captures nothing
        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

    dm = al.ActiveDataModule(blobs(40), initial_labelled=20, batch_size=8, seed=0)
    callback = ForgettingCallback()
    _fit(DirectNet(), dm, callback, epochs=2)
    ids, _ = callback.forgetting_counts_by_id()
    assert callback.presentations[ids].tolist() == [2] * 20


def test_forgetting_state_round_trip_and_reset():
    callback = ForgettingCallback()
    callback.reset(5)
    callback.update(torch.tensor([0, 1, 2]), torch.tensor([True, True, False]))
    callback.update(torch.tensor([0, 1, 2]), torch.tensor([False, True, False]))
    state = callback.state_dict()
    restored = ForgettingCallback()
    restored.load_state_dict(state)
    for name in ("forgetting", "presentations", "last_correct", "ever_correct"):
        assert torch.equal(getattr(restored, name), getattr(callback, name))
    assert restored.forgetting.tolist() == [1, 0, 0, 0, 0]
    ids, never = restored.never_learned_by_id()
    assert ids.tolist() == [0, 1, 2] and never.tolist() == [False, False, True]
    assert ForgettingCallback(reset_each_fit=True).state_key != ForgettingCallback().state_key
    with pytest.raises(TypeError, match="reset_each_fit"):
        ForgettingCallback(reset_each_fit=1)
    with pytest.raises(RuntimeError, match="not been fitted"):
        ForgettingCallback().forgetting_counts_by_id()


def test_merge_rank_statistics_sums_counts_and_ors_flags():
    start = {
        "forgetting": torch.tensor([1, 0, 0]),
        "presentations": torch.tensor([2, 2, 0]),
        "last_correct": torch.tensor([True, False, False]),
        "ever_correct": torch.tensor([True, True, False]),
    }
    merged = merge_rank_statistics(
        start,
        forgetting_delta_W_N=torch.tensor([[1, 0, 0], [0, 0, 0]]),
        presentations_delta_W_N=torch.tensor([[1, 0, 0], [0, 0, 1]]),
        last_correct_W_N=torch.tensor([[0, 0, 0], [1, 0, 1]]),
        ever_correct_W_N=torch.tensor([[1, 1, 0], [1, 1, 1]]),
    )
    assert merged["forgetting"].tolist() == [2, 0, 0]
    assert merged["presentations"].tolist() == [3, 2, 1]
    # id 0 presented on rank 0 (incorrect); id 1 by nobody (kept); id 2 on rank 1 (correct)
    assert merged["last_correct"].tolist() == [False, False, True]
    assert merged["ever_correct"].tolist() == [True, True, True]


# ----- label dispersion ------------------------------------------------------------------
def test_dispersion_callback_accumulation_matches_kernel():
    callback = LabelDispersionCallback()
    callback.reset(6)
    ids = torch.tensor([1, 3, 4])
    preds_T_N = torch.tensor([[0, 2, 1], [0, 1, 1], [1, 2, 1], [0, 0, 1]])
    for preds in preds_T_N:
        callback.accumulate(ids, preds, num_classes=3)
    got = callback.dispersion_by_id(ids)
    assert torch.allclose(got, torch.tensor([0.25, 0.5, 0.0]))
    assert torch.allclose(got, label_dispersion(preds_T_N))
    with pytest.raises(RuntimeError, match="never predicted"):
        callback.dispersion_by_id(torch.tensor([0]))
    restored = LabelDispersionCallback()
    restored.load_state_dict(callback.state_dict())
    assert torch.equal(restored.dispersion_by_id(ids), got)
    with pytest.raises(ValueError, match="every_n_epochs"):
        LabelDispersionCallback(every_n_epochs=0)


def test_label_dispersion_strategy_errors_without_predictions():
    strategy = LabelDispersion()
    with pytest.raises(RuntimeError, match="no predictions yet"):
        strategy.select(al.PoolOutputs(ids=torch.arange(5)), 2)


def test_label_dispersion_strategy_end_to_end(tiny_data):
    train, test = tiny_data
    dm = al.ActiveDataModule(train, test_set=test, initial_labelled=10, batch_size=8, seed=0)
    strategy = LabelDispersion(every_n_epochs=1)
    seen: list[tuple[list[int], torch.Tensor]] = []

    original = strategy.select

    def spying_select(outputs, k, generator=None):
        counts = strategy.callback.label_counts[outputs.ids]
        seen.append((outputs.ids.tolist(), counts.sum(dim=1).clone()))
        selection = original(outputs, k, generator)
        expected = 1 - counts.amax(dim=1).double() / counts.sum(dim=1)
        top = torch.sort(expected, descending=True, stable=True).indices[:k]
        assert selection.ids.tolist() == outputs.ids[top].tolist()
        return selection

    strategy.select = spying_select
    torch.manual_seed(0)
    history = al.ActiveLearningLoop(strategy, query_size=5, rounds=2, trainer_kwargs=FAST_TRAINER).run(
        TinyClassifier(), dm
    )
    picked = [i for row in history[:2] for i in row["selected_ids"]]
    assert len(picked) == 10 and len(set(picked)) == 10
    assert len(seen) == 2
    for pool_ids, totals in seen:
        assert totals.tolist() == [FAST_TRAINER["max_epochs"]] * len(pool_ids)
    assert strategy.callback.num_predictions == FAST_TRAINER["max_epochs"]
    assert all(0.0 <= s <= 1 - 1 / 3 + 1e-6 for row in history[:2] for s in row["selected_scores"])
