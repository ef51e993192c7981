"""FrozenEncoder's feature cache by dataset id, its cache file, and the fingerprints that name it."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import lightning_al as al
from lightning_al.estimators.fixed_features import (
    FrozenEncoder,
    dataset_fingerprint,
    input_checksums,
    module_fingerprint,
)
from lightning_al.model_call import KeywordInputs, PositionalInputs
from lightning_al.outputs import EMBEDDINGS, PROBS
from lightning_al.strategies import CoreSet
from lightning_al.strategies.cold_start import TypiClust
from tests.conftest import FAST_TRAINER, TinyClassifier, blobs

EMB = frozenset({EMBEDDINGS})


class CountingEncoder(nn.Module):
    """A linear encoder that records how many rows it has encoded, and which inputs."""

    def __init__(self, in_features: int = 4, out_features: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(in_features, out_features)
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.linear(x)


class PairEncoder(nn.Module):
    """Encodes two positional (or keyword) inputs: ``a @ W + b.sum(1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.rows = 0

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.rows += a.shape[0]
        return self.linear(a) + b.sum(dim=1, keepdim=True)


def _expected(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder.linear(x)


# ----- the in-memory cache -------------------------------------------------------------------------------
def test_a_cached_id_is_never_encoded_twice_and_gets_its_own_row():
    encoder = CountingEncoder()
    estimator = FrozenEncoder(encoder)
    assert estimator.needs_ids
    model = TinyClassifier()
    x = torch.randn(6, 4)
    first = estimator.predict(model, x[:4], EMB, ids=torch.tensor([0, 1, 2, 3]))[EMBEDDINGS]
    assert encoder.rows == 4
    torch.testing.assert_close(first, _expected(encoder, x[:4]))
    # ids 2 and 3 are cached; only 4 and 5 are encoded, and each row is its id's own embedding
    again = estimator.predict(model, x[[3, 4, 2, 5]], EMB, ids=torch.tensor([3, 4, 2, 5]))[EMBEDDINGS]
    assert encoder.rows == 6
    torch.testing.assert_close(again, _expected(encoder, x[[3, 4, 2, 5]]))
    cached = estimator.predict(model, x, EMB, ids=torch.arange(6))[EMBEDDINGS]
    assert encoder.rows == 6 and estimator.num_cached == 6
    torch.testing.assert_close(cached, _expected(encoder, x))


def test_probs_still_come_from_the_task_model():
    estimator = FrozenEncoder(CountingEncoder())
    model = TinyClassifier()
    x = torch.randn(3, 4)
    out = estimator.predict(model, x, frozenset({EMBEDDINGS, PROBS}), ids=torch.tensor([5, 0, 9]))
    torch.testing.assert_close(out[PROBS], torch.softmax(model.eval()(x), dim=-1))
    assert out[EMBEDDINGS].shape == (3, 3)


def test_without_cache_or_without_ids_every_call_encodes():
    encoder = CountingEncoder()
    estimator = FrozenEncoder(encoder, cache=False)
    assert not estimator.needs_ids
    x = torch.randn(2, 4)
    for _ in range(2):
        estimator.predict(TinyClassifier(), x, EMB, ids=torch.tensor([0, 1]))
    assert encoder.rows == 4
    cached = FrozenEncoder(encoder)
    for _ in range(2):
        cached.predict(TinyClassifier(), x, EMB)  # a direct call without ids caches nothing
    assert encoder.rows == 8 and cached.num_cached == 0


@pytest.mark.parametrize("kind", ["positional", "keyword"])
def test_tuple_and_dict_inputs_are_sliced_to_the_missing_rows(kind):
    encoder = PairEncoder()
    estimator = FrozenEncoder(encoder)
    a, b = torch.randn(4, 2), torch.randn(4, 3)

    def inputs(rows):
        return PositionalInputs((a[rows], b[rows])) if kind == "positional" else KeywordInputs(a=a[rows], b=b[rows])

    estimator.predict(TinyClassifier(), inputs([0, 1]), EMB, ids=torch.tensor([0, 1]))
    out = estimator.predict(TinyClassifier(), inputs([1, 2, 3]), EMB, ids=torch.tensor([1, 2, 3]))[EMBEDDINGS]
    assert encoder.rows == 4  # 2, then only the 2 missing rows
    with torch.no_grad():
        expected = encoder.linear(a[1:]) + b[1:].sum(dim=1, keepdim=True)
    torch.testing.assert_close(out, expected)


def test_changed_inputs_under_a_cached_id_are_refused():
    estimator = FrozenEncoder(CountingEncoder())
    x = torch.randn(3, 4)
    estimator.predict(TinyClassifier(), x, EMB, ids=torch.tensor([0, 1, 2]))
    changed = x.clone()
    changed[1, 2] += 0.5
    with pytest.raises(ValueError, match=r"inputs of dataset ids \[1\] to be those their cached features"):
        estimator.predict(TinyClassifier(), changed, EMB, ids=torch.tensor([0, 1, 2]))
    swapped = x[:, [1, 0, 2, 3]]  # same values, other positions
    with pytest.raises(ValueError, match="cache=False"):
        estimator.predict(TinyClassifier(), swapped, EMB, ids=torch.tensor([0, 1, 2]))


def test_input_checksums_match_their_definition():
    x = torch.randn(3, 2, 5)
    weights = torch.tensor([math.cos(j * math.pi * (3 - math.sqrt(5))) for j in range(10)], dtype=torch.float64)
    flat = x.reshape(3, 10).double()
    expected = torch.stack([(flat * weights).sum(1), flat.abs().sum(1)], dim=1)
    torch.testing.assert_close(input_checksums(x, 3), expected)
    ids = torch.arange(3)
    pair = input_checksums(PositionalInputs((x, ids)), 3)  # every batch-sized tensor adds its checksums
    torch.testing.assert_close(pair, expected + torch.stack([ids.double(), ids.double()], dim=1))


def test_a_changed_encoder_starts_the_cache_afresh_at_the_next_round():
    encoder = CountingEncoder()
    estimator = FrozenEncoder(encoder)
    x = torch.randn(2, 4)
    estimator.predict(TinyClassifier(), x, EMB, ids=torch.tensor([0, 1]))
    estimator.fit(TinyClassifier(), train=None)  # unchanged: the cache stays
    estimator.predict(TinyClassifier(), x, EMB, ids=torch.tensor([0, 1]))
    assert encoder.rows == 2
    with torch.no_grad():
        encoder.linear.weight.add_(1.0)
    estimator.fit(TinyClassifier(), train=None)
    out = estimator.predict(TinyClassifier(), x, EMB, ids=torch.tensor([0, 1]))[EMBEDDINGS]
    assert encoder.rows == 4
    torch.testing.assert_close(out, _expected(encoder, x))


def test_the_cache_is_not_run_state():
    estimator = FrozenEncoder(CountingEncoder())
    estimator.predict(TinyClassifier(), torch.randn(2, 4), EMB, ids=torch.tensor([0, 1]))
    assert estimator.state_dict() == {}
    estimator.load_state_dict({})
    assert estimator.num_cached == 2


# ----- the cache file ---------------------------------------------------------------------------------------
def test_the_cache_file_is_reused_by_a_new_run_and_named_by_both_fingerprints(tmp_path):
    data = blobs(10)
    fingerprint = dataset_fingerprint(data)
    x = data.tensors[0]
    encoder = CountingEncoder()
    first = FrozenEncoder(encoder, cache_dir=tmp_path, dataset_fingerprint=fingerprint)
    assert first.cache_path is None  # known once the encoder is fingerprinted, at the first scoring
    out = first.predict(TinyClassifier(), x[:6], EMB, ids=torch.arange(6))[EMBEDDINGS]
    path = first.save_cache()
    assert path == tmp_path / f"frozen-{fingerprint[:16]}-{module_fingerprint(encoder)[:16]}.pt"
    assert path.exists()

    twin = copy.deepcopy(encoder)
    twin.rows = 0
    second = FrozenEncoder(twin, cache_dir=tmp_path, dataset_fingerprint=fingerprint)
    again = second.predict(TinyClassifier(), x, EMB, ids=torch.arange(10))[EMBEDDINGS]
    assert twin.rows == 4  # ids 0-5 came from the file
    torch.testing.assert_close(again[:6], out)
    torch.testing.assert_close(again, _expected(twin, x))
    second.fit(TinyClassifier(), train=None)  # before a round's scoring: the new rows are written
    saved = torch.load(path, weights_only=True)
    assert sorted(saved["ids"].tolist()) == list(range(10))


def test_processes_writing_one_file_merge_their_rows(tmp_path):
    data = blobs(8)
    fingerprint, x = dataset_fingerprint(data), data.tensors[0]
    encoder = CountingEncoder()
    left = FrozenEncoder(encoder, cache_dir=tmp_path, dataset_fingerprint=fingerprint)
    right = FrozenEncoder(copy.deepcopy(encoder), cache_dir=tmp_path, dataset_fingerprint=fingerprint)
    left.predict(TinyClassifier(), x[:4], EMB, ids=torch.arange(4))
    right.predict(TinyClassifier(), x[4:], EMB, ids=torch.arange(4, 8))
    left.save_cache()
    path = right.save_cache()
    saved = torch.load(path, weights_only=True)
    order = saved["ids"].argsort()
    assert saved["ids"][order].tolist() == list(range(8))
    torch.testing.assert_close(saved["features"][order], _expected(encoder, x))


def test_another_encoder_uses_another_file_and_a_mismatched_file_is_refused(tmp_path):
    data = blobs(6)
    fingerprint, x = dataset_fingerprint(data), data.tensors[0]
    first = FrozenEncoder(CountingEncoder(seed=0), cache_dir=tmp_path, dataset_fingerprint=fingerprint)
    first.predict(TinyClassifier(), x, EMB, ids=torch.arange(6))
    path = first.save_cache()
    other_encoder = CountingEncoder(seed=1)
    other = FrozenEncoder(other_encoder, cache_dir=tmp_path, dataset_fingerprint=fingerprint)
    other.predict(TinyClassifier(), x, EMB, ids=torch.arange(6))
    assert other_encoder.rows == 6 and other.cache_path != path

    saved = torch.load(path, weights_only=True)
    torch.save({**saved, "dataset": "0" * 64}, path)  # a file whose content is not what its name says
    third = FrozenEncoder(copy.deepcopy(first.encoder), cache_dir=tmp_path, dataset_fingerprint=fingerprint)
    with pytest.raises(ValueError, match=r"Expected the cache file .* to hold features of dataset"):
        third.predict(TinyClassifier(), x, EMB, ids=torch.arange(6))


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"`encoder` to be a torch.nn.Module"):
        FrozenEncoder("resnet")
    with pytest.raises(TypeError, match="`cache` to be a bool, but got 1"):
        FrozenEncoder(nn.Identity(), cache=1)
    with pytest.raises(ValueError, match=r"`dataset_fingerprint`.*with a `cache_dir`, but got None"):
        FrozenEncoder(nn.Identity(), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="`cache=True` with a `cache_dir`"):
        FrozenEncoder(nn.Identity(), cache=False, cache_dir=tmp_path, dataset_fingerprint="ab")
    with pytest.raises(ValueError, match="Expected a `cache_dir`"):
        FrozenEncoder(nn.Identity(), dataset_fingerprint="ab")


# ----- fingerprints ----------------------------------------------------------------------------------------
class DictItems(Dataset):
    def __init__(self, x: torch.Tensor, names: list[str]) -> None:
        self.x, self.names = x, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "name": self.names[i], "size": i}


def test_dataset_fingerprint_sees_every_value_and_its_position():
    data = blobs(5)
    assert dataset_fingerprint(data) == dataset_fingerprint(blobs(5))
    changed = blobs(5)
    changed.tensors[0][3, 1] += 1e-3
    assert dataset_fingerprint(changed) != dataset_fingerprint(data)
    x = torch.randn(3, 2)
    items = DictItems(x, ["a", "b", "c"])
    assert dataset_fingerprint(items) == dataset_fingerprint(DictItems(x.clone(), ["a", "b", "c"]))
    assert dataset_fingerprint(items) != dataset_fingerprint(DictItems(x, ["a", "c", "b"]))
    assert dataset_fingerprint(x) != dataset_fingerprint(x.double())  # the dtype counts

    class Opaque(Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int) -> object:
            return object()

    with pytest.raises(TypeError, match=r"dataset item 0 to hold tensors.*but got a object"):
        dataset_fingerprint(Opaque())


def test_module_fingerprint_follows_the_weights_and_the_class():
    a = nn.Linear(3, 2)
    assert module_fingerprint(a) == module_fingerprint(copy.deepcopy(a))
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert module_fingerprint(a) != module_fingerprint(b)

    class MyLinear(nn.Linear):
        pass

    c = MyLinear(3, 2)
    c.load_state_dict(a.state_dict())
    assert module_fingerprint(a) != module_fingerprint(c)


# ----- in the loop --------------------------------------------------------------------------------------------
def _run(strategy_factory, encoder, cache, **loop_kwargs):
    train = blobs(60, seed=0)
    dm = al.ActiveDataModule(train, test_set=blobs(30, seed=1), initial_labelled=6, batch_size=16, seed=0)
    estimator = FrozenEncoder(encoder, cache=cache)
    strategy, loop_estimator = strategy_factory(estimator)
    loop = al.ActiveLearningLoop(
        strategy, query_size=3, rounds=3, trainer_kwargs=FAST_TRAINER, progress=False, estimator=loop_estimator
    )
    return loop.run(TinyClassifier(), dm)


@pytest.mark.parametrize(
    "factory",
    [
        lambda est: (TypiClust(k_neighbours=5, estimator=est), None),  # pool and labelled embeddings
        lambda est: (CoreSet(), est),  # through the loop's `estimator=`
    ],
    ids=["TypiClust", "CoreSet"],
)
def test_in_the_loop_every_sample_is_encoded_once_and_selections_do_not_change(factory):
    cached_encoder = CountingEncoder()
    plain_encoder = copy.deepcopy(cached_encoder)
    cached = _run(factory, cached_encoder, cache=True)
    plain = _run(factory, plain_encoder, cache=False)
    assert [row.get("selected_ids") for row in cached] == [row.get("selected_ids") for row in plain]
    assert len(cached) == 4 and all("selected_ids" in row for row in cached[:3])
    assert cached_encoder.rows == 60  # the 54 unlabelled and 6 labelled samples, once each
    assert plain_encoder.rows == 3 * 60  # every round's pool and labelled set


def test_a_repeated_run_reads_the_cache_file_and_encodes_nothing(tmp_path):
    train = blobs(40, seed=0)
    fingerprint = dataset_fingerprint(train)
    encoders = [CountingEncoder(seed=3), CountingEncoder(seed=3)]
    histories = []
    for encoder in encoders:
        dm = al.ActiveDataModule(train, initial_labelled=4, batch_size=16, seed=0)
        estimator = FrozenEncoder(encoder, cache_dir=tmp_path / "cache", dataset_fingerprint=fingerprint)
        loop = al.ActiveLearningLoop(
            TypiClust(k_neighbours=5, estimator=estimator),
            query_size=3,
            rounds=2,
            trainer_kwargs=FAST_TRAINER,
            progress=False,
        )
        histories.append(loop.run(TinyClassifier(), dm))
    assert encoders[0].rows == 40 and encoders[1].rows == 0
    assert [row.get("selected_ids") for row in histories[0]] == [row.get("selected_ids") for row in histories[1]]
    assert len(list((tmp_path / "cache").glob("frozen-*.pt"))) == 1


def test_coreset_and_cal_read_a_frozen_encoders_embeddings(tiny_data) -> None:
    from conftest import FAST_TRAINER, TinyClassifier

    train, test = tiny_data
    torch.manual_seed(0)
    encoder = nn.Linear(4, 3)
    x = torch.stack([train[i][0] for i in range(len(train))])
    for make in (al.strategies.CoreSet, al.strategies.CAL):
        strategy = make(estimator=al.estimators.FrozenEncoder(encoder))
        dm = al.ActiveDataModule(train, test_set=test, initial_labelled=10, batch_size=8, seed=0)
        labelled, unlabelled = dm.labelled_ids.clone(), dm.unlabelled_ids.clone()
        loop = al.ActiveLearningLoop(strategy, query_size=5, rounds=1, trainer_kwargs=FAST_TRAINER, progress=False)
        picks = loop.run(TinyClassifier(), dm)[0]["selected_ids"]
        assert len(picks) == 5
        if make is al.strategies.CoreSet:  # the first pick: the farthest from the labelled set in the encoder's space
            with torch.no_grad():
                features = encoder(x)
            distance = torch.cdist(features[unlabelled], features[labelled]).min(dim=1).values
            assert picks[0] == int(unlabelled[distance.argmax()])
    with pytest.raises(ValueError, match="both"):
        al.strategies.CoreSet(embedding_layer="net.2", estimator=al.estimators.FrozenEncoder(encoder))
    with pytest.raises(TypeError, match="Estimator"):
        al.strategies.CAL(estimator="encoder")


def test_budget_aware_selects_on_the_features_given_before_the_switch(tiny_data) -> None:
    from conftest import FAST_TRAINER, TinyClassifier

    train, test = tiny_data
    torch.manual_seed(0)
    encoder = nn.Linear(4, 3)

    def first_query(strategy: al.Strategy) -> list[int]:
        dm = al.ActiveDataModule(train, test_set=test, initial_labelled=6, batch_size=8, seed=0)
        loop = al.ActiveLearningLoop(strategy, query_size=5, rounds=1, trainer_kwargs=FAST_TRAINER, progress=False)
        return loop.run(TinyClassifier(), dm)[0]["selected_ids"]

    budget = al.strategies.BudgetAware(num_classes=3, features=al.estimators.FrozenEncoder(encoder))
    assert isinstance(budget.low.estimator, al.estimators.FrozenEncoder)
    typiclust = al.strategies.TypiClust(estimator=al.estimators.FrozenEncoder(encoder))
    assert first_query(budget) == first_query(typiclust)  # 6 labels < 5 per class x 3: the low part queries
    with pytest.raises(ValueError, match="both"):
        al.strategies.BudgetAware(low=typiclust, features=al.estimators.FrozenEncoder(encoder))
    with pytest.raises(TypeError, match="features"):
        al.strategies.BudgetAware(features=encoder)
