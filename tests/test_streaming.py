"""Streaming pool scoring (running top k) against whole-pool scoring, and pool subsampling."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST_TRAINER, TinyClassifier, blobs

import lightning_al as al
from lightning_al.functional import topk_select
from lightning_al.outputs import PROBS, PoolOutputs
from lightning_al.scoring import RunningTopK, top_k_by_score
from lightning_al.strategies import BADGE, BALD, CAL, Entropy, Random
from lightning_al.strategies.base import ScoreStrategy, Selection


class WholePoolEntropy(Entropy):
    """Entropy forced onto the whole-pool path."""

    per_sample = False


class WholePoolBALD(BALD):
    per_sample = False


class CoarseEntropy(Entropy):
    """Entropy rounded down to 0.25 nats: many equal scores, spread over many batches."""

    def score(self, outputs: PoolOutputs) -> torch.Tensor:
        return torch.floor(super().score(outputs) * 4) / 4


class WholePoolCoarseEntropy(CoarseEntropy):
    per_sample = False


class RecordingEntropy(Entropy):
    """Entropy that remembers the largest batch it scored and every id it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.largest_batch, self.seen = 0, []

    def batch_scores(self, outputs: PoolOutputs) -> torch.Tensor:
        self.largest_batch = max(self.largest_batch, len(outputs))
        self.seen.append(outputs.ids.cpu())
        return super().batch_scores(outputs)


def test_top_k_by_score_breaks_ties_by_lower_id() -> None:
    ids = torch.tensor([7, 2, 9, 4, 5])
    scores = torch.tensor([0.5, 0.5, 0.9, 0.5, 0.1])
    top_ids, top_scores = top_k_by_score(ids, scores, 3)
    assert top_ids.tolist() == [9, 2, 4]  # 0.9 first, then the two lowest ids among the 0.5s
    assert top_scores.tolist() == pytest.approx([0.9, 0.5, 0.5])
    assert top_k_by_score(ids, scores, 10)[0].tolist() == [9, 2, 4, 7, 5]  # fewer than k: all of them


@pytest.mark.parametrize("batch_size", [1, 3, 7, 50])
def test_running_top_k_equals_topk_select_over_the_whole_pool(batch_size: int) -> None:
    generator = torch.Generator().manual_seed(0)
    ids = torch.sort(torch.randperm(200, generator=generator)[:50]).values  # ascending, as the pool loader yields
    scores = torch.randint(0, 4, (50,), generator=generator).double()  # many ties
    top = RunningTopK(12)
    for ids_B, scores_B in zip(ids.split(batch_size), scores.split(batch_size), strict=True):
        top.update(ids_B, scores_B)
    picked = topk_select(scores, 12)
    top_ids, top_scores = top.result()
    assert top.count == 50
    assert top_ids.tolist() == ids[picked].tolist()
    assert torch.equal(top_scores, scores[picked])


def test_streamable_marks_only_independent_pool_scores() -> None:
    class Reranked(Entropy):
        def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
            return super().select(outputs, k, generator)

    assert Entropy().streamable and BALD(mc_samples=2).streamable
    assert not WholePoolEntropy().streamable  # a score that depends on other samples
    assert not Reranked().streamable  # a custom select must see the whole pool
    assert not CAL().streamable  # needs the labelled samples' outputs
    assert not BADGE().streamable and not Random().streamable  # not score strategies
    assert not ScoreStrategy().streamable  # needs no model output: nothing to stream


def _history(strategy, pool_subset=None, seed=0):
    torch.manual_seed(0)
    dm = al.ActiveDataModule(blobs(90, seed=4), initial_labelled=9, batch_size=8, eval_batch_size=7, seed=0)
    loop = al.ActiveLearningLoop(
        strategy,
        query_size=6,
        rounds=2,
        trainer_kwargs=dict(FAST_TRAINER, max_epochs=1),
        seed=seed,
        progress=False,
        pool_subset=pool_subset,
    )
    return loop.run(TinyClassifier(), dm)


@pytest.mark.parametrize(
    ("streaming", "whole_pool"),
    [
        (Entropy, WholePoolEntropy),
        (CoarseEntropy, WholePoolCoarseEntropy),
        (lambda: BALD(mc_samples=3), lambda: WholePoolBALD(mc_samples=3)),
    ],
)
def test_streaming_selects_what_whole_pool_scoring_selects(streaming, whole_pool) -> None:
    streamed, whole = _history(streaming()), _history(whole_pool())
    for a, b in zip(streamed[:2], whole[:2], strict=True):
        assert a["selected_ids"] == b["selected_ids"]
        assert a["selected_scores"] == b["selected_scores"]
    if isinstance(streaming(), CoarseEntropy):  # ties: equal scores come in ascending id order
        for row in streamed[:2]:
            pairs = list(zip(row["selected_scores"], row["selected_ids"], strict=True))
            assert len(set(row["selected_scores"])) < len(pairs)
            assert pairs == sorted(pairs, key=lambda pair: (-pair[0], pair[1]))


def test_streaming_holds_one_batch_of_outputs_at_a_time() -> None:
    strategy = RecordingEntropy()
    history = _history(strategy)
    assert strategy.largest_batch == 7  # eval_batch_size, never the pool
    first_round = torch.cat(strategy.seen[:12])  # 81 unlabelled samples in batches of 7
    assert first_round.tolist() == sorted(set(range(90)) - _initial_ids())
    assert len(history) == 3


def _initial_ids() -> set[int]:
    return set(al.ActiveDataModule(blobs(90, seed=4), initial_labelled=9, seed=0).labelled_ids.tolist())


def test_streaming_refuses_non_finite_outputs_with_their_ids() -> None:
    class NaNForId5(TinyClassifier):
        def forward(self, x):
            logits = super().forward(x)
            return torch.where((x[:, :1] == self.bad_input).all(dim=1, keepdim=True), torch.nan, logits)

    data = blobs(30, seed=2)
    model = NaNForId5()
    model.bad_input = data.tensors[0][5, :1]
    dm = al.ActiveDataModule(data, initial_labelled=0, eval_batch_size=4, seed=0)
    loop = al.ActiveLearningLoop(Entropy(), query_size=2, rounds=1, progress=False)
    with pytest.raises(ValueError, match=r"NaN or inf for dataset ids \[5\]"):
        loop.run(model, dm)


def test_pool_subset_scores_a_seeded_random_subset() -> None:
    strategy = RecordingEntropy()
    history = _history(strategy, pool_subset=20, seed=5)
    unlabelled = torch.tensor(sorted(set(range(90)) - _initial_ids()))
    # independent reference: the loop's generator, seeded with `seed`, draws the first subset
    expected = unlabelled[torch.randperm(81, generator=torch.Generator().manual_seed(5))[:20].sort().values]
    first = torch.cat(strategy.seen[:3])  # 20 candidates in batches of 7
    assert first.tolist() == expected.tolist()
    assert set(history[0]["selected_ids"]) <= set(expected.tolist())
    assert _history(Entropy(), pool_subset=20, seed=5)[1]["selected_ids"] == history[1]["selected_ids"]
    assert _history(Entropy(), pool_subset=20, seed=6)[0]["selected_ids"] != history[0]["selected_ids"]


def test_pool_subset_draw_resumes_from_the_loop_state() -> None:
    dm = al.ActiveDataModule(blobs(60), initial_labelled=5, seed=0)
    loop = al.ActiveLearningLoop(Entropy(), query_size=3, pool_subset=10, seed=1)
    loop._candidates(dm)  # advance the generator as a finished round would
    state = loop.state_dict()
    resumed = al.ActiveLearningLoop(Entropy(), query_size=3, pool_subset=10, seed=1)
    resumed.load_state_dict(state)
    assert torch.equal(resumed._candidates(dm), loop._candidates(dm))


@pytest.mark.parametrize(
    ("pool_subset", "match"), [(0, "pool_subset"), (2, "at least `query_size`"), (2.5, "pool_subset")]
)
def test_bad_pool_subset_is_refused(pool_subset, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        al.ActiveLearningLoop(Entropy(), query_size=3, pool_subset=pool_subset)


def test_whole_pool_strategies_still_get_every_output() -> None:
    class ProbsSeen(WholePoolEntropy):
        def score(self, outputs: PoolOutputs) -> torch.Tensor:
            self.rows = outputs[PROBS].shape[0]
            return super().score(outputs)

    strategy = ProbsSeen()
    _history(strategy)
    assert strategy.rows == 90 - 9 - 6  # the second round sees the whole remaining pool at once


def test_rank_mixing_is_not_streamed():
    from lightning_al.strategies import EGL, Margin, WeightedMix

    assert not WeightedMix([Margin(), EGL()]).streamable
    assert Margin().streamable
