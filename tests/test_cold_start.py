"""Cold-start kernels and strategies: typicality, TypiClust, ProbCover, fixed embeddings, the budget switch."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import lightning_al as al
from lightning_al.estimators.fixed_features import FrozenEncoder, PrecomputedEmbeddings
from lightning_al.functional import clustering as clustering_module
from lightning_al.functional import coverage as coverage_module
from lightning_al.functional import typical_clusters as typicality_module
from lightning_al.functional.coverage import ball_purity, nearest_other_cluster_distance, probcover_greedy, purity_delta
from lightning_al.functional.typical_clusters import typicality, typiclust, typiclust_from_clusters
from lightning_al.outputs import EMBEDDINGS, PROBS, PoolOutputs
from lightning_al.strategies import Entropy, Random
from lightning_al.strategies.cold_start import BudgetAware, ProbCover, TypiClust
from tests.conftest import FAST_TRAINER, TinyClassifier, blobs


# ----- references written directly from the papers' definitions -----------------------------------
def reference_typicality(x: torch.Tensor, k_neighbours: int) -> torch.Tensor:
    dist = torch.cdist(x.double(), x.double())
    k = min(k_neighbours, x.shape[0] - 1)
    out = []
    for i in range(x.shape[0]):
        others = torch.cat([dist[i, :i], dist[i, i + 1 :]])
        out.append(1.0 / others.sort().values[:k].mean())
    return torch.stack(out)


def reference_typiclust(x, assignment, labelled, k, k_neighbours, min_size, squared=True):
    """The authors' selection (avihu111/TypiClust, typiclust.py): a static cluster order, typicality among the
    cluster's unlabelled points with K = min(k_neighbours, n // 2), 1 / (mean squared distance + 1e-5)."""
    assignment, labelled = assignment.tolist(), labelled.tolist()
    clusters = sorted(set(assignment))
    size = {c: assignment.count(c) for c in clusters}
    existing = {c: sum(1 for a, lab in zip(assignment, labelled, strict=True) if a == c and lab) for c in clusters}
    kept = sorted((c for c in clusters if size[c] >= min_size), key=lambda c: (existing[c], -size[c], c))
    taken = {i for i, lab in enumerate(labelled) if lab}
    picks = []
    for i in range(k):
        cluster = kept[i % len(kept)]
        members = [j for j, a in enumerate(assignment) if a == cluster and j not in taken]
        assert members, "the reference fails on an exhausted cluster"
        neighbours = min(k_neighbours, len(members) // 2)
        if neighbours == 0:
            best = members[0]
        else:
            dist = torch.cdist(x[members].double(), x[members].double())
            dist = dist.square() if squared else dist
            scores = [1.0 / (dist[r].sort().values[1 : neighbours + 1].mean() + 1e-5) for r in range(len(members))]
            best = members[max(range(len(members)), key=lambda r: (scores[r], -r))]
        picks.append(best)
        taken.add(best)
    return picks


def reference_probcover(x, labelled, k, delta):
    """Greedy on the explicit ball graph; returns the picks made while some point is uncovered."""
    ball = torch.cdist(x.double(), x.double()) <= delta
    covered = ball[labelled].any(dim=0)
    taken = labelled.clone()
    picks = []
    for _ in range(k):
        gains = (ball & ~covered).sum(dim=1).masked_fill(taken, -1)
        best = int(gains.argmax())
        if gains[best] <= 0:
            break
        picks.append(best)
        taken[best] = True
        covered |= ball[best]
    return picks


# ----- typicality -----------------------------------------------------------------------------------
@pytest.mark.parametrize("k_neighbours", [1, 3, 20])
def test_typicality_matches_brute_force_in_small_blocks(monkeypatch, k_neighbours):
    monkeypatch.setattr(typicality_module, "_CHUNK_ELEMENTS", 50)  # blocks of 2 rows
    x = torch.randn(23, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(typicality(x, k_neighbours), reference_typicality(x, k_neighbours))


def test_typicality_hand_values():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    # K=1: nearest at 5, 5, 5; K=2: means (5+10)/2, (5+5)/2, (5+10)/2
    torch.testing.assert_close(typicality(x, 1), torch.full((3,), 0.2, dtype=torch.float64))
    torch.testing.assert_close(typicality(x, 2), torch.tensor([1 / 7.5, 0.2, 1 / 7.5], dtype=torch.float64))
    assert typicality(torch.zeros(1, 3)).tolist() == [0.0]


# ----- TypiClust --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_typiclust_from_clusters_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 3, generator=g)
    assignment = torch.randint(0, 6, (60,), generator=g)
    labelled = torch.rand(60, generator=g) < 0.2
    picks = typiclust_from_clusters(x, assignment, labelled, 12, k_neighbours=4, min_cluster_size=7)
    assert picks.tolist() == reference_typiclust(x, assignment, labelled, 12, 4, 7)


def _three_blobs() -> tuple[torch.Tensor, list[int]]:
    """Blobs of 9, 7 and 5 points: a centre, 4 points at distance 1 around it, and outliers at distance 3.

    With 3 neighbours the centre has mean distance 1 and every other point more, so it is the most typical.
    """
    axes = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    far = torch.tensor([[2.1, 2.1], [-2.1, 2.1], [2.1, -2.1], [-2.1, -2.1]])
    parts, centres = [], []
    for offset, size in (((0.0, 0.0), 9), ((20.0, 0.0), 7), ((0.0, 20.0), 5)):
        centres.append(sum(p.shape[0] for p in parts))
        parts.append(torch.cat([torch.zeros(1, 2), axes, far[: size - 5]]) + torch.tensor(offset))
    return torch.cat(parts), centres


def test_typiclust_cluster_choice_on_blobs():
    x, centres = _three_blobs()
    assignment = torch.tensor([0] * 9 + [1] * 7 + [2] * 5)
    labelled = torch.zeros(21, dtype=torch.bool)
    # No label: largest blob first, then the next largest, each at its centre point.
    assert typiclust_from_clusters(x, assignment, labelled, 3, k_neighbours=3, min_cluster_size=1).tolist() == centres
    # A label in the largest blob sends the first pick to the largest uncovered one; the 5-point blob is too small
    # for the default (6), so the second pick is the largest blob's centre.
    labelled[3] = True
    assert typiclust_from_clusters(x, assignment, labelled, 2, k_neighbours=3).tolist() == [centres[1], centres[0]]
    # min_cluster_size=6 defers the 5-point blob until the others are exhausted.
    picks = typiclust_from_clusters(x, assignment, torch.zeros(21, dtype=torch.bool), 17, 3, min_cluster_size=6)
    assert set(picks[:16].tolist()) == set(range(16)) and picks[16].item() == centres[2]


def test_typiclust_with_kmeans_finds_each_blob_centre():
    x, centres = _three_blobs()
    picks = typiclust(
        x,
        torch.zeros(21, dtype=torch.bool),
        3,
        k_neighbours=3,
        min_cluster_size=1,
        generator=torch.Generator().manual_seed(0),
    )
    assert picks.tolist() == centres


# ----- ProbCover ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_probcover_greedy_matches_explicit_graph(monkeypatch, seed, delta):
    monkeypatch.setattr(coverage_module, "_CHUNK_ELEMENTS", 64)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(50, 2, generator=g)
    labelled = torch.rand(50, generator=g) < 0.1
    picks = probcover_greedy(x, labelled, 10, delta, generator=torch.Generator().manual_seed(0))
    expected = reference_probcover(x, labelled, 10, delta)
    assert picks[: len(expected)].tolist() == expected
    assert len(set(picks.tolist())) == 10 and not labelled[picks].any()


def test_probcover_greedy_reaches_the_greedy_guarantee_on_a_tiny_pool():
    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(3))
    ball = torch.cdist(x, x) <= 0.8
    best = max(int(ball[list(s)].any(0).sum()) for s in itertools.combinations(range(9), 3))
    picks = probcover_greedy(x, torch.zeros(9, dtype=torch.bool), 3, 0.8)
    assert int(ball[picks].any(0).sum()) >= (1 - 1 / math.e) * best


def test_probcover_random_picks_once_everything_is_covered():
    x = torch.tensor([[0.0], [0.1], [0.2], [5.0]])
    picks = probcover_greedy(x, torch.tensor([False, False, False, True]), 3, 1.0, torch.Generator().manual_seed(0))
    assert picks[0].item() == 0 and sorted(picks.tolist()) == [0, 1, 2]


def test_purity_and_delta_on_hand_made_clusters():
    # Cluster 0 at 0, 1, 2; cluster 1 at 5, 6, 9. Nearest foreign points: 5, 4, 3 | 3, 4, 7.
    x = torch.tensor([[0.0], [1.0], [2.0], [5.0], [6.0], [9.0]])
    assignment = torch.tensor([0, 0, 0, 1, 1, 1])
    foreign = nearest_other_cluster_distance(x, assignment)
    assert foreign.tolist() == [5.0, 4.0, 3.0, 3.0, 4.0, 7.0]
    deltas = torch.tensor([0.5, 2.5, 3.0, 3.5, 4.0, 6.0, 7.0])
    brute = [
        sum(bool((assignment[(x[:, 0] - x[i, 0]).abs() <= d] == assignment[i]).all()) for i in range(6)) / 6
        for d in deltas.tolist()
    ]
    torch.testing.assert_close(ball_purity(x, assignment, deltas), torch.tensor(brute, dtype=torch.float64))
    assert brute[:3] == [1.0, 1.0, 4 / 6]
    assert purity_delta(x, assignment, alpha=0.95) == 0.0  # only δ < 3 is pure; 0 is the largest exact candidate
    assert purity_delta(x, assignment, alpha=0.95, deltas_M=deltas) == 2.5
    assert purity_delta(x, assignment, alpha=0.5) == 3.0  # at δ = 4 only the points at 5 and 7 stay pure: 2/6
    assert purity_delta(x, assignment, alpha=0.3) == 4.0
    assert purity_delta(x, assignment, alpha=0.16) == 5.0  # at δ = 5 only the point at 7 stays pure: 1/6


def test_kernels_stay_memory_bounded_on_a_large_pool(monkeypatch):
    """N = 20,000, D = 16: every distance block is at most the chunk budget, far below N x N."""
    largest = [0]
    real, real_symmetric = clustering_module._squared_distances, typicality_module._symmetric_squared_distances

    def spy(rows, centres, centres_sq=None):
        out = real(rows, centres, centres_sq)
        largest[0] = max(largest[0], out.numel())
        return out

    def spy_symmetric(rows, points):
        out = real_symmetric(rows, points)
        largest[0] = max(largest[0], out.numel())
        return out

    for module in (coverage_module, clustering_module):
        monkeypatch.setattr(module, "_squared_distances", spy)
    monkeypatch.setattr(typicality_module, "_symmetric_squared_distances", spy_symmetric)
    num_points = 20_000
    x = torch.randn(num_points, 16, generator=torch.Generator().manual_seed(0))
    labelled = torch.zeros(num_points, dtype=torch.bool)
    labelled[:5] = True
    picks = probcover_greedy(x, labelled, 3, delta=3.0)
    assert picks.unique().numel() == 3
    picks = typiclust(x, labelled, 5, generator=torch.Generator().manual_seed(0), n_iter=5)
    assert picks.unique().numel() == 5 and not labelled[picks].any()
    assert 0 < largest[0] <= 2**20 < num_points * num_points // 100


# ----- fixed-feature estimators -------------------------------------------------------------------------
def test_precomputed_embeddings_lookup_by_id_and_from_file(tmp_path):
    table = torch.arange(12.0).reshape(6, 2)
    torch.save(table, tmp_path / "features.pt")
    estimator = PrecomputedEmbeddings(str(tmp_path / "features.pt"))
    model = TinyClassifier(in_features=2)
    x = torch.randn(2, 2)
    out = estimator.predict(model, x, frozenset({EMBEDDINGS, PROBS}), ids=torch.tensor([4, 1]))
    assert out[EMBEDDINGS].tolist() == [[8.0, 9.0], [2.0, 3.0]]
    torch.testing.assert_close(out[PROBS], torch.softmax(model.eval()(x), dim=-1))
    with pytest.raises(ValueError, match=r"ids in \[0, 6\).*but got ids in \[1, 6\]"):
        estimator.predict(model, x, frozenset({EMBEDDINGS}), ids=torch.tensor([1, 6]))
    with pytest.raises(ValueError, match="finite"):
        PrecomputedEmbeddings(torch.tensor([[0.0], [math.nan]]))
    with pytest.raises(TypeError, match="`features`"):
        PrecomputedEmbeddings([[0.0]])


def test_frozen_encoder_embeds_with_the_encoder_and_predicts_with_the_model():
    encoder = nn.Linear(4, 3)
    model = TinyClassifier()
    x = torch.randn(5, 4)
    out = FrozenEncoder(encoder).predict(model, x, frozenset({EMBEDDINGS, PROBS}))
    torch.testing.assert_close(out[EMBEDDINGS], encoder(x).detach())
    torch.testing.assert_close(out[PROBS], torch.softmax(model.eval()(x), dim=-1))
    assert FrozenEncoder(encoder).modules() == [encoder]


# ----- BudgetAware ----------------------------------------------------------------------------------------
class _Recorder(Random):
    requires = frozenset({EMBEDDINGS})

    def __init__(self) -> None:
        self.seen: list[tuple[int, list[str]]] = []

    def select(self, outputs, k, generator=None):
        labelled = len(outputs.labelled) if outputs.labelled is not None else 0
        self.seen.append((labelled, sorted(outputs.values)))
        return super().select(outputs, k, generator)


def test_budget_aware_switches_exactly_at_the_documented_count():
    low, high = _Recorder(), _Recorder()
    strategy = BudgetAware(low, high, num_classes=2, labels_per_class=2.5)
    assert strategy.switch_at == 5
    assert strategy.requires == {"low/embeddings", "high/embeddings"}
    assert strategy.requires_labelled == {"low/probs"}  # only to count the labelled samples
    values = {"low/embeddings": torch.zeros(8, 2), "high/embeddings": torch.ones(8, 2)}
    for num_labelled in (None, 4, 5, 6):
        labelled = None if num_labelled is None else PoolOutputs(torch.arange(num_labelled) + 100)
        strategy.select(PoolOutputs(torch.arange(8), dict(values), labelled), 2)
    assert low.seen == [(0, ["embeddings"]), (4, ["embeddings"])]
    assert high.seen == [(5, ["embeddings"]), (6, ["embeddings"])]


def test_budget_aware_gives_each_part_its_own_estimator():
    table = torch.randn(10, 3)
    strategy = BudgetAware(TypiClust(estimator=PrecomputedEmbeddings(table)), Entropy(), num_classes=3)
    model = TinyClassifier()
    x = torch.randn(2, 4)
    out = strategy.estimator.predict(model, x, strategy.requires | strategy.requires_labelled, ids=torch.tensor([7, 2]))
    assert sorted(out) == ["high/probs", "low/embeddings"]
    torch.testing.assert_close(out["low/embeddings"], table[[7, 2]])
    torch.testing.assert_close(out["high/probs"], torch.softmax(model.eval()(x), dim=-1))


# ----- end to end -------------------------------------------------------------------------------------------
def test_loop_from_zero_labels_with_typiclust_on_precomputed_features():
    train = blobs(90, seed=0)
    features = train.tensors[0].clone()
    dm = al.ActiveDataModule(train, test_set=blobs(30, seed=1), batch_size=16, seed=0)
    assert dm.num_labelled == 0
    strategy = TypiClust(k_neighbours=5, estimator=PrecomputedEmbeddings(features))
    loop = al.ActiveLearningLoop(strategy, query_size=3, rounds=2, trainer_kwargs=FAST_TRAINER, progress=False)
    history = loop.run(TinyClassifier(), dm)
    assert [row["num_labelled"] for row in history] == [0, 3, 6]
    assert "test_accuracy" not in history[0] and "test_accuracy" in history[1]
    first, second = history[0]["selected_ids"], history[1]["selected_ids"]
    assert sorted(train.tensors[1][first].tolist()) == [0, 1, 2]  # one typical sample per blob
    assert len(set(first + second)) == 6


def _record_calls(part, name: str, calls: list[str]) -> None:
    select = part.select

    def recorded(*args, **kwargs):
        calls.append(name)
        return select(*args, **kwargs)

    part.select = recorded


def test_loop_budget_aware_switches_from_probcover_to_entropy():
    train = blobs(60, seed=0)
    low = ProbCover(num_classes=3, estimator=PrecomputedEmbeddings(train.tensors[0].clone()))
    high = Entropy()
    calls: list[str] = []
    _record_calls(low, "low", calls)
    _record_calls(high, "high", calls)
    strategy = BudgetAware(low, high, num_classes=3, labels_per_class=2)
    dm = al.ActiveDataModule(train, batch_size=16, seed=0)
    al.ActiveLearningLoop(strategy, query_size=3, rounds=3, trainer_kwargs=FAST_TRAINER, progress=False).run(
        TinyClassifier(), dm
    )
    assert calls == ["low", "low", "high"]  # 0 and 3 labels < 6 = 2 per class x 3 classes
    assert low.delta_ is not None and low.delta_ > 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="`max_clusters` to be an int >= 1, but got 0"):
        TypiClust(max_clusters=0)
    with pytest.raises(ValueError, match="`purity` to be a number in"):
        ProbCover(num_classes=3, purity=1.5)
    with pytest.raises(ValueError, match="`labels_per_class` to be a finite number > 0, but got 0"):
        BudgetAware(Random(), Entropy(), num_classes=3, labels_per_class=0)
    with pytest.raises(TypeError, match="`low` to be a lightning_al Strategy"):
        BudgetAware("typiclust", Entropy(), num_classes=3)
    with pytest.raises(ValueError, match="`delta` to be a finite number >= 0, but got -1"):
        probcover_greedy(torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool), 1, -1.0)
    with pytest.raises(ValueError, match=r"`k` to be in \[1, 2\]"):
        typiclust_from_clusters(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.tensor([1, 0, 0]).bool(), 3)
    with pytest.raises(TypeError, match="`assignment_N` to hold integer cluster ids"):
        typiclust_from_clusters(torch.zeros(3, 2), torch.zeros(3), torch.zeros(3, dtype=torch.bool), 1)


def test_budget_aware_defaults_read_the_class_count_and_switch(tiny_data):
    strategy = BudgetAware()
    assert isinstance(strategy.low, TypiClust) and type(strategy.high).__name__ == "BADGE"
    assert strategy.num_classes is None and strategy.switch_at is None
    train, test = tiny_data
    dm = al.ActiveDataModule(train, test_set=test, initial_labelled=10, batch_size=8, seed=0)
    used = []
    active = strategy.active
    strategy.active = lambda n: used.append(n) or active(n)
    loop = al.ActiveLearningLoop(strategy, query_size=5, rounds=2, trainer_kwargs=FAST_TRAINER, progress=False)
    torch.manual_seed(0)
    loop.run(TinyClassifier(), dm)
    assert strategy.num_classes == 3 and strategy.switch_at == 15  # ceil(5 labels per class * 3 classes)
    assert [active(n) is strategy.low for n in used] == [True, False]  # 10 labelled: low; 15: high
    assert dm.num_labelled == 20


def test_budget_aware_needs_a_class_count_it_can_read():
    class EmbeddingsOnly(al.Estimator):
        provides = frozenset({EMBEDDINGS})

    with pytest.raises(ValueError, match="Expected `num_classes`, or a `high` strategy whose estimator provides"):
        BudgetAware(high=TypiClust(estimator=EmbeddingsOnly()))
    assert BudgetAware(high=TypiClust(estimator=EmbeddingsOnly()), num_classes=4).switch_at == 20
