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
from lightning_al.callbacks import forgetting as forgetting_module
from lightning_al.callbacks.dispersion import LabelDispersionCallback
from lightning_al.callbacks.forgetting import (
    ForgettingCallback,
    merge_rank_statistics,
    merge_rank_transitions,
    record_presentations,
)
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


# ----- packed state: transition counts against a straightforward reference ----------------
def _reference_presentations(batches, size):
    """Per id: transitions [incorrect→incorrect, incorrect→correct, correct→incorrect, correct→correct] and the
    last correctness, replaying the batches one occurrence at a time, each compared with the state before its batch."""
    transitions = [[0, 0, 0, 0] for _ in range(size)]
    last = [False] * size
    for ids, correct in batches:
        before = list(last)
        for i, c in zip(ids.tolist(), correct.tolist(), strict=True):
            transitions[i][2 * before[i] + c] += 1
            last[i] = c
    return transitions, last


def _random_batches(num_batches, size, seed):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        b = int(torch.randint(0, 9, (1,), generator=g))  # empty batches too; ids repeat within and across batches
        batches.append((torch.randint(0, size, (b,), generator=g), torch.rand(b, generator=g) < 0.5))
    return batches


@pytest.mark.parametrize("chunk", [1, 3, 40])
def test_record_presentations_matches_reference_with_repeated_ids(chunk):
    size, batches = 7, _random_batches(40, 7, seed=chunk)
    transitions = torch.zeros(size, 4, dtype=torch.long)
    last = torch.zeros(size, dtype=torch.bool)
    for start in range(0, len(batches), chunk):  # counted a chunk of batches at a time, as the callback does
        part = batches[start : start + chunk]
        ids = torch.cat([i for i, _ in part])
        correct = torch.cat([c for _, c in part])
        record_presentations(transitions, last, ids, correct, [len(i) for i, _ in part])
    expected, expected_last = _reference_presentations(batches, size)
    assert transitions.tolist() == expected
    assert last.tolist() == expected_last
    assert transitions[:, 2].sum() > 0 and transitions.sum() == sum(len(i) for i, _ in batches)
    with pytest.raises(ValueError, match="bool `correct_E`"):
        record_presentations(transitions, last, torch.tensor([0, 1]), torch.tensor([1, 0]), [2])
    with pytest.raises(ValueError, match="sum of `batch_sizes`"):
        record_presentations(transitions, last, torch.tensor([0, 1]), torch.tensor([True, False]), [1])


def test_forgetting_callback_repeated_ids_in_one_batch_hand_worked():
    callback = ForgettingCallback()
    callback.reset(3)
    callback.update(torch.tensor([0]), torch.tensor([True]))
    # three presentations of id 0 in one batch, each against the state before the batch (correct)
    callback.update(torch.tensor([0, 0, 2, 0]), torch.tensor([False, True, True, False]))
    assert callback.forgetting.tolist() == [2, 0, 0]
    assert callback.presentations.tolist() == [4, 0, 1]
    assert callback.last_correct.tolist() == [False, False, True]  # the last occurrence of id 0
    assert callback.ever_correct.tolist() == [True, False, True]
    # correct, then incorrect within the first batch of id 1: it was correct once, so it is not "never learned"
    callback.update(torch.tensor([1, 1]), torch.tensor([True, False]))
    ids, never = callback.never_learned_by_id()
    assert ids.tolist() == [0, 1, 2] and never.tolist() == [False, False, False]
    assert callback.forgetting.tolist() == [2, 0, 0] and callback.last_correct.tolist() == [False, False, True]


def test_forgetting_callback_counts_kept_batches_when_read(monkeypatch):
    class ReadingClassifier(SpyClassifier):
        def __init__(self, callback):
            super().__init__()
            self.callback, self.presented_before = callback, []

        def training_step(self, batch, batch_idx):
            self.presented_before.append(int(self.callback.presentations.sum()))  # reads mid-epoch
            return super().training_step(batch, batch_idx)

    dm = al.ActiveDataModule(blobs(60, seed=5), initial_labelled=40, batch_size=8, seed=0)
    callback = ForgettingCallback()
    model = ReadingClassifier(callback)
    _fit(model, dm, callback, epochs=3)
    sizes = [ids.numel() for ids, _ in model.records]
    assert model.presented_before == [sum(sizes[:k]) for k in range(len(sizes))]
    ids, counts, never, _ = _reference_from_records(model.records, dm.pool.size)
    got_ids, got_counts = callback.forgetting_counts_by_id()
    assert got_ids.tolist() == ids and got_counts.tolist() == counts
    assert callback.never_learned_by_id()[1].tolist() == never


@pytest.mark.parametrize(
    ("max_batches", "max_logits", "expected"),
    [(3, 10**9, [3, 2, 3, 2]), (10**9, 2 * 8 * 3, [2, 2, 1, 2, 2, 1])],  # 5 batches of 8 samples, 3 classes
)
def test_forgetting_callback_counts_kept_batches_when_full(monkeypatch, max_batches, max_logits, expected):
    monkeypatch.setattr(forgetting_module, "_MAX_PENDING_BATCHES", max_batches)
    monkeypatch.setattr(forgetting_module, "_MAX_PENDING_LOGITS", max_logits)
    dm = al.ActiveDataModule(blobs(60, seed=5), initial_labelled=40, batch_size=8, seed=0)
    callback = ForgettingCallback()
    counted = []
    count_pending = callback._count_pending

    def spying_count_pending():
        counted.append(len(callback._pending))
        count_pending()

    monkeypatch.setattr(callback, "_count_pending", spying_count_pending)
    model = SpyClassifier()
    _fit(model, dm, callback, epochs=2)
    assert [n for n in counted if n] == expected
    ids, counts, _, presentations = _reference_from_records(model.records, dm.pool.size)
    assert callback.forgetting_counts_by_id()[1].tolist() == counts
    assert callback.presentations[ids].tolist() == presentations


def _derived_statistics(transitions, last_correct):
    return {
        "forgetting": transitions[..., 2],
        "presentations": transitions.sum(dim=-1),
        "last_correct": last_correct.bool(),
        "ever_correct": (transitions[..., 1] + transitions[..., 3]) > 0,
    }


def test_merge_rank_transitions_agrees_with_merge_rank_statistics():
    g = torch.Generator().manual_seed(4)
    size, world = 12, 3
    start_transitions = torch.randint(0, 3, (size, 4), generator=g)
    start_last = torch.rand(size, generator=g) < 0.5
    delta_W_N_4 = torch.randint(0, 2, (world, size, 4), generator=g) * (torch.rand(world, size, 1, generator=g) < 0.4)
    presented_W_N = delta_W_N_4.sum(-1) > 0
    # a rank that did not present a sample still holds its epoch-start correctness
    last_W_N = torch.where(presented_W_N, torch.rand(world, size, generator=g) < 0.5, start_last)
    transitions, last = merge_rank_transitions(start_transitions, start_last, delta_W_N_4, last_W_N.long())

    start = _derived_statistics(start_transitions, start_last)
    per_rank = _derived_statistics(start_transitions + delta_W_N_4, last_W_N)
    expected = merge_rank_statistics(
        start,
        forgetting_delta_W_N=delta_W_N_4[..., 2],
        presentations_delta_W_N=delta_W_N_4.sum(-1),
        last_correct_W_N=last_W_N.long(),
        ever_correct_W_N=per_rank["ever_correct"].long(),
    )
    assert torch.equal(transitions, start_transitions + delta_W_N_4.sum(0))
    for name, value in _derived_statistics(transitions, last).items():
        assert torch.equal(value, expected[name]), name
    assert presented_W_N.any() and not presented_W_N.all(0).all()


def test_forgetting_callback_reduce_across_ranks_matches_one_process():
    """Two ranks count the even and the odd ids of every batch; after each epoch's exchange both hold what one
    process counting every batch holds."""

    class GatherAcross:  # what all_gather returns on every rank, in the order the callback gathers
        def __init__(self, gathered):
            self.gathered, self.calls = gathered, 0

        def all_gather(self, _):
            self.calls += 1
            return self.gathered[(self.calls - 1) % len(self.gathered)]

    size, batches = 9, _random_batches(12, 9, seed=11)
    ranks, single = [ForgettingCallback(), ForgettingCallback()], ForgettingCallback()
    for callback in [*ranks, single]:
        callback.reset(size)
    for epoch in range(3):
        starts = [(c._transitions.clone(), c._last_correct.clone()) for c in ranks]
        for ids, correct in batches[4 * epoch : 4 * epoch + 4]:
            single.update(ids, correct)
            for rank, callback in enumerate(ranks):  # within an epoch, an id is always on the same rank
                on_rank = ids % 2 == rank
                callback.update(ids[on_rank], correct[on_rank])
        gathered = [
            torch.stack([c._transitions - start[0] for c, start in zip(ranks, starts, strict=True)]),
            torch.stack([c._last_correct.long() for c in ranks]),
        ]
        for callback, start in zip(ranks, starts, strict=True):
            callback._epoch_start = start
            callback._reduce_across_ranks(type("Trainer", (), {"strategy": GatherAcross(gathered)})())
    for callback in ranks:
        assert torch.equal(callback._transitions, single._transitions)
        assert torch.equal(callback.last_correct, single.last_correct)


def test_forgetting_state_accepts_unfitted_and_earlier_four_statistics():
    unfitted = ForgettingCallback()
    restored = ForgettingCallback()
    restored.load_state_dict(unfitted.state_dict())
    assert restored.forgetting is None and restored.state_dict() == {"transitions": None, "last_correct": None}
    with pytest.raises(RuntimeError, match="not been fitted"):
        restored.forgetting_counts_by_id()

    batches = _random_batches(10, 6, seed=2)
    reference = ForgettingCallback()
    reference.reset(6)
    for ids, correct in batches[:6]:
        reference.update(ids, correct)
    earlier = {
        name: getattr(reference, name) for name in ("forgetting", "presentations", "last_correct", "ever_correct")
    }
    loaded = ForgettingCallback()
    loaded.load_state_dict(earlier)
    for name, value in earlier.items():
        assert torch.equal(getattr(loaded, name), value), name
    for ids, correct in batches[6:]:  # and it counts on exactly as before
        reference.update(ids, correct)
        loaded.update(ids, correct)
    for name in earlier:
        assert torch.equal(getattr(loaded, name), getattr(reference, name)), name

    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        ForgettingCallback().load_state_dict({"transitions": torch.zeros(3, 2), "last_correct": torch.zeros(3)})
    with pytest.raises(RuntimeError, match="before `update`"):
        ForgettingCallback().update(torch.tensor([0]), torch.tensor([True]))


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
