"""Diversity, gradient and hybrid strategies: thin wrappers over the kernels, and valid queries end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST_TRAINER, TinyClassifier

import lightning_al as al
from lightning_al import functional as F
from lightning_al.strategies import (
    BADGE,
    CAL,
    EGL,
    CoreSet,
    DiverseMiniBatch,
    Entropy,
    Margin,
    SelectionViaProxy,
    SuggestiveAnnotation,
    TwoStage,
    WeightedMix,
)
from lightning_al.strategies.hybrid import rank_normalise


def outputs(n=40, c=3, d=5, m=6, seed=0) -> al.PoolOutputs:
    g = torch.Generator().manual_seed(seed)
    labelled = al.PoolOutputs(
        ids=torch.arange(m),
        values={"probs": torch.rand(m, c, generator=g).softmax(1), "embeddings": torch.randn(m, d, generator=g)},
    )
    return al.PoolOutputs(
        ids=torch.arange(100, 100 + n),
        values={
            "probs": (torch.randn(n, c, generator=g) * 2).softmax(1),
            "embeddings": torch.randn(n, d, generator=g),
            "mc_probs": (torch.randn(n, 4, c, generator=g) * 2).softmax(-1),
        },
        labelled=labelled,
    )


def test_coreset_is_kcenter_from_the_labelled_embeddings():
    out = outputs()
    both = torch.cat([out.labelled["embeddings"], out["embeddings"]])
    mask = torch.arange(both.shape[0]) < 6
    expected = F.kcenter_greedy(both, mask, 5) - 6
    assert torch.equal(CoreSet().select(out, 5).ids, out.ids[expected])


def test_badge_egl_and_cal_wrap_their_kernels():
    out = outputs()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(BADGE().select(out, 4, g1).ids, out.ids[F.badge(out["probs"], out["embeddings"], 4, g2)])
    egl = F.egl(out["probs"], out["embeddings"])
    assert torch.equal(EGL().select(out, 3).ids, out.ids[torch.argsort(egl, descending=True, stable=True)[:3]])
    cal = F.cal_scores(out["probs"], out["embeddings"], out.labelled["probs"], out.labelled["embeddings"], 2)
    assert torch.equal(
        CAL(k_neighbours=2).select(out, 3).ids, out.ids[torch.argsort(cal, descending=True, stable=True)[:3]]
    )


def test_diverse_mini_batch_picks_one_sample_per_cluster_among_the_smallest_margins():
    out = outputs(n=60)
    selection = DiverseMiniBatch(beta=3).select(out, 4, torch.Generator().manual_seed(0))
    candidates = set(out.ids[torch.argsort(F.margin(out["probs"]), descending=True, stable=True)[:12]].tolist())
    assert set(selection.ids.tolist()) <= candidates and selection.ids.unique().numel() == 4


def test_two_stage_diversifies_within_the_prefiltered_candidates():
    out = outputs(n=50)
    selection = TwoStage(Margin(), CoreSet(), factor=2).select(out, 5)
    top = set(out.ids[torch.argsort(F.margin(out["probs"]), descending=True, stable=True)[:10]].tolist())
    assert set(selection.ids.tolist()) <= top and selection.ids.unique().numel() == 5


def test_weighted_mix_of_rank_normalised_scores():
    assert rank_normalise(torch.tensor([0.5, 10.0, -1.0])).tolist() == [0.5, 1.0, 0.0]
    out = outputs()
    only_entropy = WeightedMix([Entropy(), Margin()], weights=[1.0, 0.0]).select(out, 4)
    assert torch.equal(only_entropy.ids, Entropy().select(out, 4).ids)
    with pytest.raises(ValueError, match="`weights` to be 2 non-negative numbers"):
        WeightedMix([Entropy(), Margin()], weights=[1.0])


def test_suggestive_annotation_covers_among_the_most_disputed():
    out = outputs(n=30)
    selection = SuggestiveAnnotation(factor=2).select(out, 3)
    disagreement = out["mc_probs"].double().var(dim=1, unbiased=False).mean(dim=1)
    top = set(out.ids[torch.argsort(disagreement, descending=True, stable=True)[:6]].tolist())
    assert set(selection.ids.tolist()) <= top and selection.ids.unique().numel() == 3


@pytest.mark.parametrize(
    "make",
    [
        CoreSet,
        BADGE,
        EGL,
        lambda: DiverseMiniBatch(beta=2),
        lambda: CAL(k_neighbours=3),
        lambda: TwoStage(Entropy(), BADGE(), factor=3),
        lambda: WeightedMix([Entropy(), EGL()]),
        lambda: SuggestiveAnnotation(members=2),
        lambda: SelectionViaProxy(BADGE(), TinyClassifier(hidden=4), proxy_max_epochs=1),
    ],
)
def test_every_strategy_gives_unique_unlabelled_queries_of_the_requested_size(tiny_data, make):
    dm = al.ActiveDataModule(tiny_data[0], test_set=tiny_data[1], initial_labelled=12, batch_size=8, seed=0)
    initial = set(dm.labelled_ids.tolist())
    history = al.ActiveLearningLoop(make(), query_size=6, rounds=2, trainer_kwargs=FAST_TRAINER).run(
        TinyClassifier(), dm
    )
    picked = [i for row in history for i in row.get("selected_ids", [])]
    assert len(picked) == 12 and len(set(picked)) == 12 and not set(picked) & initial
    assert dm.num_labelled == 24


def test_selection_via_proxy_scores_with_the_trained_proxy(tiny_data):
    proxy = TinyClassifier(hidden=4)
    initial = proxy.net[0].weight.detach().clone()
    strategy = SelectionViaProxy(Entropy(), proxy, proxy_max_epochs=2)
    dm = al.ActiveDataModule(tiny_data[0], initial_labelled=12, batch_size=8, seed=0)
    model = TinyClassifier()
    al.ActiveLearningLoop(strategy, query_size=4, rounds=1, trainer_kwargs=FAST_TRAINER).run(model, dm)
    assert not torch.equal(proxy.net[0].weight.detach(), initial)  # the proxy was trained
    x = torch.randn(3, 4)
    probs = strategy.estimator.predict(model, x, frozenset({"probs"}))["probs"]
    assert torch.allclose(probs, torch.softmax(proxy.eval()(x), dim=-1))  # ... and is what scores the pool


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="`beta` to be an int >= 1, but got 0"):
        DiverseMiniBatch(beta=0)
    with pytest.raises(ValueError, match="`k_neighbours` to be an int >= 1, but got 0"):
        CAL(k_neighbours=0)
    with pytest.raises(TypeError, match="`prefilter` to be a ScoreStrategy, but got CoreSet"):
        TwoStage(CoreSet(), BADGE())
    with pytest.raises(ValueError, match="estimator providing"):
        TwoStage(al.strategies.BALD(), BADGE(), estimator=al.Softmax())
