"""Fidelity to the papers and the authors' code: suggestive annotation's committee, selection via proxy's
benchmark arm and per-round proxy, TypiClust's selection rules and the L2 normalisation of TypiClust and
ProbCover.

Each option is checked against a reference written here from the rule it implements.
"""

from __future__ import annotations

import pytest
import torch

import lightning_al as al
from lightning_al.datasets import Shapes
from lightning_al.estimators import DeepEnsemble
from lightning_al.estimators.base import Softmax
from lightning_al.functional import typical_clusters as typicality_module
from lightning_al.functional.clustering import weighted_kmeans
from lightning_al.functional.coverage import probcover_greedy
from lightning_al.functional.typical_clusters import typicality, typiclust, typiclust_from_clusters
from lightning_al.models import SmallUNet
from lightning_al.outputs import EMBEDDINGS, MC_PROBS, VALID, PoolOutputs
from lightning_al.strategies import LeastConfidence, SuggestiveAnnotation
from lightning_al.strategies.cold_start import ProbCover, TypiClust
from lightning_al.tasks import Segmentation
from tests.conftest import FAST_TRAINER, TinyClassifier


# ----- references ---------------------------------------------------------------------------------------------
def reference_typicality(x: torch.Tensor, k: int, squared: bool) -> list[float]:
    """1 / mean (squared) distance to the k nearest other points, from explicit coordinate differences."""
    diff = x.double()[:, None, :] - x.double()[None, :, :]
    sq = diff.square().sum(-1)
    out = []
    for i in range(x.shape[0]):
        others = torch.cat([sq[i, :i], sq[i, i + 1 :]]).sort().values[:k]
        out.append(float(1.0 / (others if squared else others.sqrt()).mean()))
    return out


def authors_typiclust(x, assignment, labelled, k, k_neighbours=20, min_size=6, squared=True):
    """The selection loop of the authors' code: drop small clusters, sort once by (labelled count, -size), take pick
    i from cluster i mod (clusters kept), the most typical of its unlabelled points among themselves."""
    assignment, labelled = assignment.tolist(), labelled.tolist()
    ids = sorted(set(assignment))
    size = {c: assignment.count(c) for c in ids}
    existing = {c: sum(1 for a, lab in zip(assignment, labelled, strict=True) if a == c and lab) for c in ids}
    order = sorted((c for c in ids if size[c] >= min_size), key=lambda c: (existing[c], -size[c], c))
    taken = {i for i, lab in enumerate(labelled) if lab}
    picks = []
    for i in range(k):
        cluster = order[i % len(order)]
        members = [j for j, a in enumerate(assignment) if a == cluster and j not in taken]
        neighbours = min(k_neighbours, len(members) // 2)
        if neighbours == 0:
            best = members[0]
        else:
            scores = reference_typicality(x[members], neighbours, squared)
            best = members[max(range(len(members)), key=lambda r: (scores[r], -r))]
        picks.append(best)
        taken.add(best)
    return picks


def reference_max_cover(emb: torch.Tensor, candidates: list[int], k: int) -> list[int]:
    """Greedy sum_x max_s cos(x, s) over the whole pool, by brute force."""
    unit = emb.double() / emb.double().norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    chosen: list[int] = []
    for _ in range(k):
        best = max(
            (c for c in candidates if c not in chosen),
            key=lambda c: (float(cos[:, [*chosen, c]].amax(dim=1).sum()), -candidates.index(c)),
        )
        chosen.append(best)
    return chosen


# ----- suggestive annotation: the committee ------------------------------------------------------------------
def _fake_train(calls: list[tuple[int, bool]]):
    def train(module, seed, *, bootstrap=False, **overrides):
        calls.append((seed, bootstrap))

    return train


@pytest.mark.parametrize(("include_model", "seeds"), [(True, [8, 9, 10]), (False, [8, 9, 10, 11])])
def test_deep_ensemble_with_or_without_the_loop_model(include_model, seeds):
    ensemble = DeepEnsemble(members=4, seed=7, bootstrap=True, include_model=include_model)
    model = TinyClassifier()
    calls: list[tuple[int, bool]] = []
    ensemble.fit(model, _fake_train(calls))
    assert calls == [(s, True) for s in seeds]  # every extra member on its own bootstrap resample
    members = ensemble.members(model)
    assert len(members) == 4 and (members[0] is model) == include_model
    assert all(m is not model for m in members[1:])
    x = torch.randn(5, 4)
    out = ensemble.predict(model, x, frozenset({MC_PROBS, EMBEDDINGS}))
    expected = torch.stack([torch.softmax(m.eval()(x), dim=-1) for m in members], dim=1)
    torch.testing.assert_close(out[MC_PROBS], expected)
    first = Softmax().predict(members[0], x, frozenset({EMBEDDINGS}))[EMBEDDINGS]
    torch.testing.assert_close(out[EMBEDDINGS], first)  # the first member's features


def test_suggestive_annotation_defaults_to_the_papers_committee():
    strategy = SuggestiveAnnotation()
    ensemble = strategy.estimator
    assert isinstance(ensemble, DeepEnsemble)
    assert (ensemble.num_members, ensemble.bootstrap, ensemble.include_model) == (4, True, False)
    assert strategy.factor == 2
    ensemble = SuggestiveAnnotation(members=3, include_model=True).estimator
    assert (ensemble.num_members, ensemble.bootstrap, ensemble.include_model) == (3, True, True)
    with pytest.raises(TypeError, match="`include_model` to be a bool, but got 'no'"):
        SuggestiveAnnotation(include_model="no")


def test_suggestive_annotation_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    n, k = 40, 4
    mc = torch.softmax(torch.randn(n, 4, 3, generator=g) * 2, dim=-1)
    emb = torch.randn(n, 5, generator=g)
    selection = SuggestiveAnnotation(factor=2).select(
        PoolOutputs(torch.arange(n) + 100, {MC_PROBS: mc, EMBEDDINGS: emb}), k
    )
    mean = mc.double().mean(dim=1, keepdim=True)
    disagreement = ((mc.double() - mean) ** 2).mean(dim=1).mean(dim=1)
    candidates = sorted(range(n), key=lambda i: (-float(disagreement[i]), i))[: 2 * k]
    assert (selection.ids - 100).tolist() == reference_max_cover(emb, candidates, k)


def test_suggestive_annotation_averages_the_member_variance_over_valid_pixels():
    # The paper's task: segmentation, the FCNs' variance averaged over the image's pixels (here the valid ones).
    g = torch.Generator().manual_seed(3)
    n, k = 12, 3
    mc = torch.softmax(torch.randn(n, 4, 3, 5, 5, generator=g) * 2, dim=2)  # (N, T, C, H, W)
    valid = torch.rand(n, 5, 5, generator=g) > 0.3
    emb = torch.randn(n, 6, generator=g)
    outputs = PoolOutputs(torch.arange(n), {MC_PROBS: mc, EMBEDDINGS: emb, VALID: valid}, task=Segmentation(3))
    selection = SuggestiveAnnotation(factor=2).select(outputs, k)
    expected = []
    for i in range(n):
        pixels = [(h, w) for h in range(5) for w in range(5) if valid[i, h, w]]
        per_pixel = [float(mc[i, :, :, h, w].double().var(dim=0, unbiased=False).mean()) for h, w in pixels]
        expected.append(sum(per_pixel) / len(per_pixel))
    candidates = sorted(range(n), key=lambda i: (-expected[i], i))[: 2 * k]
    assert selection.ids.tolist() == reference_max_cover(emb, candidates, k)
    assert selection.scores.tolist() == pytest.approx([expected[i] for i in selection.ids.tolist()])


def test_suggestive_annotation_runs_on_a_segmentation_pool():
    pool, test = Shapes(16, size=8, seed=0), Shapes(8, size=8, seed=1)
    dm = al.ActiveDataModule(pool, test_set=test, task=Segmentation(3), batch_size=4, seed=0, initial_labelled=4)
    strategy = SuggestiveAnnotation(members=2)
    torch.manual_seed(0)
    history = al.ActiveLearningLoop(strategy, query_size=3, rounds=1, trainer_kwargs=FAST_TRAINER).run(
        SmallUNet(num_classes=3, width=4), dm
    )
    assert len(set(history[0]["selected_ids"])) == 3 and dm.num_labelled == 7
    assert "test_miou" in history[-1]


def test_suggestive_annotation_trains_four_bootstrap_members_in_the_loop(tiny_data):
    strategy = SuggestiveAnnotation()
    dm = al.ActiveDataModule(tiny_data[0], initial_labelled=12, batch_size=8, seed=0)
    model = TinyClassifier()
    history = al.ActiveLearningLoop(strategy, query_size=4, rounds=1, trainer_kwargs=FAST_TRAINER).run(model, dm)
    members = strategy.estimator.members(model)
    assert len(members) == 4 and all(m is not model for m in members)
    assert len(history[0]["selected_ids"]) == 4


# ----- selection via proxy: the benchmark arm ----------------------------------------------------------------
def test_benchmark_arms_take_the_authors_settings():
    from benchmarks.arms import ARMS, PROXY_HIDDEN

    svp = ARMS["SelectionViaProxy"].strategy()
    assert isinstance(svp.strategy, LeastConfidence)  # the authors' default score
    assert svp.estimator.proxy.hparams.hidden == PROXY_HIDDEN
    assert svp.estimator.trainer_overrides == {}  # the target's schedule
    assert svp.estimator.fresh_init  # a new proxy every round
    sa = ARMS["SuggestiveAnnotation"].strategy().estimator
    assert (sa.num_members, sa.bootstrap, sa.include_model) == (4, True, False)
    typi = ARMS["TypiClust"].strategy()
    assert (typi.normalize, typi.squared_distances, typi.min_cluster_size, typi.n_init) == (True, True, 6, None)
    assert ARMS["ProbCover"].strategy().normalize


class StartRecordingProxy(TinyClassifier):
    """Keeps a copy of its first layer's weights at the start of every fit."""

    def __init__(self) -> None:
        super().__init__(hidden=4)
        self.starts: list[torch.Tensor] = []

    def on_fit_start(self) -> None:
        self.starts.append(self.net[0].weight.detach().clone())


def proxy_starts(tiny_data, fresh_init: bool, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The proxy's weights at the start of its fits (three: two queried rounds and the last), and when given."""
    torch.manual_seed(0)  # the same given weights in every call
    proxy = StartRecordingProxy()
    given = proxy.net[0].weight.detach().clone()
    strategy = al.strategies.SelectionViaProxy(LeastConfidence(), proxy, proxy_max_epochs=1, fresh_init=fresh_init)
    dm = al.ActiveDataModule(tiny_data[0], initial_labelled=12, batch_size=8, seed=0)
    loop = al.ActiveLearningLoop(strategy, query_size=4, rounds=2, seed=seed, trainer_kwargs=FAST_TRAINER)
    loop.run(TinyClassifier(), dm)
    return proxy.starts, given


def test_selection_via_proxy_draws_a_new_proxy_every_round_from_the_run_seed(tiny_data):
    # The authors' code builds a new model (fresh random weights) each round; ours draws them from the run's
    # seed, the round and the estimator's seed: new every round, different between runs, the same on a rerun.
    starts, given = proxy_starts(tiny_data, fresh_init=True, seed=0)
    rerun, _ = proxy_starts(tiny_data, fresh_init=True, seed=0)
    other_run, _ = proxy_starts(tiny_data, fresh_init=True, seed=1)
    assert len(starts) == 3
    assert all(not torch.equal(a, b) for i, a in enumerate(starts) for b in starts[i + 1 :])
    assert not any(torch.equal(s, given) for s in starts)
    assert all(torch.equal(a, b) for a, b in zip(starts, rerun, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(starts, other_run, strict=True))


def test_selection_via_proxy_without_fresh_init_restarts_from_the_given_weights(tiny_data):
    starts, given = proxy_starts(tiny_data, fresh_init=False, seed=0)
    other_run, _ = proxy_starts(tiny_data, fresh_init=False, seed=1)
    assert len(starts) == 3 and all(torch.equal(s, given) for s in starts)
    # the run's seed does not reach the proxy
    assert all(torch.equal(a, b) for a, b in zip(starts, other_run, strict=True))


def test_run_round_seed_separates_runs_rounds_and_seeds():
    from lightning_al.estimators.base import run_round_seed

    triples = [(r, t, s) for r in range(3) for t in range(3) for s in range(3)]
    seeds = [run_round_seed(*triple) for triple in triples]
    assert len(set(seeds)) == len(triples) and all(0 <= s < 2**32 for s in seeds)
    assert run_round_seed(4, 2, 7) == run_round_seed(4, 2, 7) and run_round_seed(-1, 0, 0) >= 0
    with pytest.raises(TypeError, match="`fresh_init` to be a bool, but got 'yes'"):
        al.strategies.SelectionViaProxy(LeastConfidence(), TinyClassifier(), fresh_init="yes")


# ----- TypiClust ----------------------------------------------------------------------------------------------
def test_typicality_squared_option_against_the_reference():
    x = torch.randn(17, 3, generator=torch.Generator().manual_seed(1))
    for squared in (False, True):
        for k in (1, 4):
            assert typicality(x, k, squared=squared).tolist() == pytest.approx(reference_typicality(x, k, squared))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("squared", [True, False])
def test_typiclust_from_clusters_follows_the_authors_loop(seed, squared):
    g = torch.Generator().manual_seed(seed)
    n = 48
    x = torch.randn(n, 2, generator=g)
    assignment = torch.randint(0, 5, (n,), generator=g)
    labelled = torch.rand(n, generator=g) < 0.25
    # Clusters of about 7 unlabelled points, picked down to a few (K = 1 or 2, where mutual neighbours tie).
    sizes = torch.bincount(assignment, minlength=5)
    left = sizes - torch.bincount(assignment[labelled], minlength=5)
    kept = (sizes >= 6).nonzero().flatten()
    k = int(left[kept].min()) * kept.numel()  # every kept cluster still has a point when its turn comes
    picks = typiclust_from_clusters(x, assignment, labelled, k, k_neighbours=3, squared_distances=squared)
    assert picks.tolist() == authors_typiclust(x, assignment, labelled, k, 3, squared=squared)


def test_typicality_is_computed_among_the_unlabelled_points_only():
    # A labelled point at 10 sits next to the unlabelled 9.9. Among the 3 unlabelled points (K = 1) 9.9's nearest
    # neighbour is 8.9 away, so 0 and 1 (mutual neighbours: a tie, to the lower position) are the typical ones.
    x = torch.tensor([[10.0], [0.0], [1.0], [9.9]] + [[20.0 + i] for i in range(6)])
    assignment = torch.tensor([0, 0, 0, 0] + [1] * 6)
    labelled = torch.tensor([True, False, False, False] + [True] * 6)
    assert typiclust_from_clusters(x, assignment, labelled, 1, min_cluster_size=1).tolist() == [1]
    # The number of neighbours is half the points: 4 unlabelled points -> K = 2.
    x = torch.tensor([[0.0], [0.1], [0.3], [3.0]])
    none = torch.zeros(4, dtype=torch.bool)
    scores = reference_typicality(x, 2, squared=True)
    best = max(range(4), key=lambda i: scores[i])
    assert typiclust_from_clusters(x, torch.zeros(4, dtype=torch.long), none, 1, min_cluster_size=1).tolist() == [best]
    assert reference_typicality(x, 3, squared=True).index(max(reference_typicality(x, 3, squared=True))) != best


def test_small_clusters_and_the_static_order():
    # Cluster 0: 5 points, none labelled; cluster 1: 6 points, one labelled; cluster 2: 10 points, one labelled.
    x = torch.cat([torch.arange(5.0), 100 + torch.arange(6.0), 200 + torch.arange(10.0)])[:, None]
    assignment = torch.tensor([0] * 5 + [1] * 6 + [2] * 10)
    labelled = torch.zeros(21, dtype=torch.bool)
    labelled[[5, 11]] = True
    picks = typiclust_from_clusters(x, assignment, labelled, 4, k_neighbours=1)
    # The 5-point cluster is dropped (the authors keep more than 5); the order is fixed once: 2 (larger), then 1,
    # cycling -- a cluster that just got a pick is not pushed back behind the others.
    assert assignment[picks].tolist() == [2, 1, 2, 1]
    picks = typiclust_from_clusters(x, assignment, labelled, 3, k_neighbours=1, min_cluster_size=5)
    assert assignment[picks].tolist() == [0, 2, 1]
    # With every kept cluster exhausted, the small ones are used, in the same order.
    picks = typiclust_from_clusters(x, assignment, labelled, 19, k_neighbours=1)
    assert assignment[picks[:14]].tolist().count(0) == 0 and assignment[picks[14:]].tolist() == [0] * 5


def test_typiclust_keeps_the_lowest_inertia_of_n_init_runs(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 2, generator=g)
    labelled = torch.zeros(60, dtype=torch.bool)
    labelled[:4] = True
    picks = typiclust(
        x, labelled, 3, k_neighbours=2, min_cluster_size=1, n_init=4, generator=torch.Generator().manual_seed(9)
    )
    replay = torch.Generator().manual_seed(9)
    runs = []
    for _ in range(4):
        centres, assignment = weighted_kmeans(x, torch.ones(60, dtype=torch.float64), 7, generator=replay)
        runs.append((float(((x.double() - centres.double()[assignment]) ** 2).sum()), assignment))
    best = min(runs, key=lambda run: run[0])[1]
    expected = typiclust_from_clusters(x, best, labelled, 3, k_neighbours=2, min_cluster_size=1)
    assert picks.tolist() == expected.tolist()

    calls = []
    real = typicality_module.weighted_kmeans

    def counted(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(typicality_module, "weighted_kmeans", counted)
    typiclust(x, labelled, 3, generator=torch.Generator().manual_seed(0))  # 7 clusters
    many = torch.randn(200, 2, generator=g)
    typiclust(many, torch.zeros(200, dtype=torch.bool), 51, generator=torch.Generator().manual_seed(0))
    assert calls == [7] * 10 + [51] * 3  # scikit-learn's restarts in the authors' code


def _outputs(pool: torch.Tensor, labelled: torch.Tensor) -> PoolOutputs:
    return PoolOutputs(
        torch.arange(pool.shape[0]) + 50,
        {EMBEDDINGS: pool},
        PoolOutputs(torch.arange(labelled.shape[0]), {EMBEDDINGS: labelled}),
    )


def test_typiclust_and_probcover_normalise_the_embeddings():
    g = torch.Generator().manual_seed(4)
    pool, labelled = torch.randn(40, 3, generator=g), torch.randn(5, 3, generator=g)
    scale = 2.0 ** torch.randint(-3, 4, (40, 1), generator=g)  # exact in floating point

    def unit(t: torch.Tensor) -> torch.Tensor:
        t = t.double()
        return t / t.norm(dim=1, keepdim=True)

    for make in (lambda **kw: TypiClust(k_neighbours=3, **kw), lambda **kw: ProbCover(num_classes=3, **kw)):
        picked = make().select(_outputs(pool * scale, labelled), 4, torch.Generator().manual_seed(0)).ids
        reference = make(normalize=False).select(
            _outputs(unit(pool), unit(labelled)), 4, torch.Generator().manual_seed(0)
        )
        assert picked.tolist() == reference.ids.tolist()
    # ProbCover's greedy itself, on the normalised rows with a fixed radius.
    both = torch.cat([labelled, pool])
    mask = torch.arange(45) < 5
    expected = probcover_greedy(unit(both), mask, 4, delta=0.5)
    picked = ProbCover(num_classes=3, delta=0.5).select(_outputs(pool * scale, labelled), 4).ids
    assert (picked - 50 + 5).tolist() == expected.tolist()
    raw = ProbCover(num_classes=3, delta=0.5, normalize=False).select(_outputs(pool, labelled), 4).ids
    assert (raw - 50 + 5).tolist() == probcover_greedy(both, mask, 4, delta=0.5).tolist()


def test_new_arguments_are_checked():
    with pytest.raises(TypeError, match="`normalize` to be a bool, but got 1"):
        TypiClust(normalize=1)
    with pytest.raises(TypeError, match="`squared_distances` to be a bool, but got None"):
        TypiClust(squared_distances=None)
    with pytest.raises(ValueError, match="`n_init` to be an int >= 1 or None, but got 0"):
        TypiClust(n_init=0)
    with pytest.raises(TypeError, match="`normalize` to be a bool, but got 'yes'"):
        ProbCover(num_classes=3, normalize="yes")
    with pytest.raises(TypeError, match="`squared` to be a bool"):
        typicality(torch.zeros(3, 2), 1, squared=2)
    with pytest.raises(ValueError, match="`n_init` to be at least 1 or None, but got 0"):
        typiclust(torch.randn(5, 2), torch.zeros(5, dtype=torch.bool), 1, n_init=0)
