"""Tests of the pool bookkeeping, the datamodule, batches with ids, targets and samplers."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import blobs
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch.utils.data import Dataset, TensorDataset

from lightning_al.data import ActiveDataModule, ActivePool, batch_ids, dataset_targets
from lightning_al.data.batches import IdDataset, IndexedDict, IndexedTuple, collate_with_ids
from lightning_al.data.samplers import RepeatedShuffleSampler

N, C, D = 60, 3, 4


def make_dataset(n: int = N, offset: float = 0.0) -> TensorDataset:
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(0)) + offset
    y = torch.arange(n) % C
    return TensorDataset(x, y)


class DictDataset(Dataset):
    def __init__(self, base: TensorDataset) -> None:
        self.x, self.y = base.tensors

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


class BareDataset(Dataset):
    def __init__(self, base: TensorDataset) -> None:
        self.x = base.tensors[0]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


class TupleDataset(Dataset):
    """Same items as a TensorDataset, but not one (forces the slow path of ``dataset_targets``)."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple:
        x, y = self.base[i]
        return x, int(y)


def snapshot(pool: ActivePool) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in pool.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# ===== ActivePool ========================================================================
def test_fresh_pool_is_all_unlabelled():
    pool = ActivePool(5, num_classes=2)
    assert pool.num_labelled == 0 and pool.num_unlabelled == 5
    assert pool.labelled_ids.tolist() == []
    assert pool.unlabelled_ids.tolist() == [0, 1, 2, 3, 4]
    assert (pool.labels == -1).all() and (pool.labelled_round == -1).all()


def test_pool_label_bookkeeping():
    pool = ActivePool(10, num_classes=3)
    pool.label([7, 2, 5], [1, 0, 2], round=0)
    pool.label(torch.tensor([9]), torch.tensor([2]), round=1)
    pool.label(np.array([0]), np.array([1]), round=3)
    assert pool.labelled_ids.tolist() == [0, 2, 5, 7, 9]
    assert pool.unlabelled_ids.tolist() == [1, 3, 4, 6, 8]
    assert pool.labelled_ids.dtype == torch.long and pool.unlabelled_ids.dtype == torch.long
    assert pool.num_labelled == 5 and pool.num_unlabelled == 5
    assert pool.labels.tolist() == [1, -1, 0, -1, -1, 2, -1, 1, -1, 2]
    assert pool.labelled_round.tolist() == [3, -1, 0, -1, -1, 0, -1, 0, -1, 1]
    assert pool.labelled_mask.tolist() == [i in {0, 2, 5, 7, 9} for i in range(10)]


def test_pool_label_empty_is_noop():
    pool = ActivePool(4, num_classes=2)
    pool.label([], [], round=0)
    assert pool.num_labelled == 0


def test_pool_without_num_classes_accepts_any_non_negative_label():
    pool = ActivePool(3)
    pool.label([0], [1000], round=0)
    assert pool.labels[0] == 1000
    with pytest.raises(ValueError, match=r"class indices non-negative, but got \[-2\] for ids \[1\]"):
        pool.label([1], [-2], round=0)


def test_pool_state_dict_round_trip():
    pool = ActivePool(10, num_classes=3)
    pool.label([4, 1, 8], [2, 0, 1], round=0)
    pool.label([3], [1], round=2)
    state = pool.state_dict()
    fresh = ActivePool(10, num_classes=3)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.labels, pool.labels)
    assert torch.equal(fresh.labelled_round, pool.labelled_round)
    assert torch.equal(fresh.labelled_ids, pool.labelled_ids)
    assert fresh.num_labelled == 4


def test_pool_state_dict_is_a_snapshot():
    pool = ActivePool(6, num_classes=3)
    pool.label([0], [1], round=0)
    state = pool.state_dict()
    pool.label([1], [2], round=1)
    assert state["labels"].tolist() == [1, -1, -1, -1, -1, -1]
    fresh = ActivePool(6, num_classes=3)
    fresh.load_state_dict(state)
    fresh.label([5], [0], round=1)
    assert state["labels"][5] == -1


def test_pool_load_state_of_other_size_refused_and_pool_unchanged():
    pool = ActivePool(10, num_classes=3)
    pool.label([2], [1], round=0)
    before = snapshot(pool)
    other = ActivePool(12, num_classes=3)
    other.label([0, 11], [0, 2], round=0)
    with pytest.raises(ValueError, match=r"pool state for a dataset of 10 samples, but got one for 12"):
        pool.load_state_dict(other.state_dict())
    assert_same_state(snapshot(pool), before)


def test_pool_load_state_missing_keys_refused():
    pool = ActivePool(4)
    with pytest.raises(ValueError, match=re.escape("missing ['labels']")):
        pool.load_state_dict({"size": 4, "labelled_round": torch.full((4,), -1)})


def test_pool_load_inconsistent_state_refused():
    pool = ActivePool(4)
    state = pool.state_dict()
    state["labelled_round"][1] = 0  # labelled, but no label
    with pytest.raises(ValueError, match=r"`labels` to be class indices non-negative, but got \[-1\] for ids \[1\]"):
        pool.load_state_dict(state)
    assert pool.num_labelled == 0


def test_pool_load_state_with_out_of_range_label_refused():
    pool = ActivePool(4, num_classes=3)
    state = pool.state_dict()
    state["labels"][0], state["labelled_round"][0] = 7, 0
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        pool.load_state_dict(state)
    assert pool.num_labelled == 0


def test_pool_load_state_with_negative_round_and_label_refused():
    pool = ActivePool(4, num_classes=3)
    state = pool.state_dict()
    state["labels"][0], state["labelled_round"][0] = -5, -5
    with pytest.raises(ValueError):
        pool.load_state_dict(state)
    assert pool.num_labelled == 0


@pytest.mark.parametrize(
    ("ids", "labels", "round", "exc", "match"),
    [
        ([3, 10], [0, 1], 1, ValueError, r"dataset indices in \[0, 10\), but got unknown ids \[10\]"),
        ([-1, 3], [0, 1], 1, ValueError, r"unknown ids \[-1\]"),
        ([3, 4, 3], [0, 1, 0], 1, ValueError, r"`ids` to be unique, but ids \[3\] repeat"),
        (
            [3, 0],
            [0, 1],
            1,
            ValueError,
            r"`ids` to be unlabelled, but ids \[0\] are already labelled \(in rounds \[0\]\)",
        ),
        ([3, 4], [1], 1, ValueError, r"one label per id, shape \(2,\), but got shape \(1,\)"),
        ([3, 4], [[1, 2]], 1, ValueError, r"`labels` to be one-dimensional, but got shape \(1, 2\)"),
        ([3, 4], [1, 3], 1, ValueError, r"class indices in \[0, 3\), but got \[3\] for ids \[4\]"),
        ([3, 4], [-1, 2], 1, ValueError, r"class indices in \[0, 3\), but got \[-1\] for ids \[3\]"),
        ([3.0, 4.0], [1, 2], 1, TypeError, r"`ids` to hold integers, but got dtype torch\.float32"),
        ([3, 4], [1.0, 2.0], 1, TypeError, r"`labels` to hold integers, but got dtype torch\.float32"),
        ([True, False], [1, 2], 1, TypeError, r"`ids` to hold integers, but got dtype torch\.bool"),
        ([[3, 4]], [1, 2], 1, ValueError, r"`ids` to be one-dimensional, but got shape \(1, 2\)"),
        ([3, 4], [1, 2], -1, ValueError, r"`round` to be a non-negative int, but got -1"),
        ([3, 4], [1, 2], 1.0, ValueError, r"`round` to be a non-negative int, but got 1\.0"),
    ],
)
def test_pool_label_errors_leave_pool_unchanged(ids, labels, round, exc, match):
    pool = ActivePool(10, num_classes=3)
    pool.label([0, 9], [2, 1], round=0)
    before = snapshot(pool)
    with pytest.raises(exc, match=match):
        pool.label(ids, labels, round=round)
    assert_same_state(snapshot(pool), before)


@pytest.mark.parametrize(("size", "num_classes"), [(-1, None), (2.0, None), (True, None), (3, 0), (3, True)])
def test_pool_constructor_validates(size, num_classes):
    with pytest.raises(ValueError, match=r"Expected `(size|num_classes)`"):
        ActivePool(size, num_classes=num_classes)


# ===== dataset_targets ===================================================================
def test_dataset_targets_fast_and_slow_paths_agree():
    ds = make_dataset()
    ids = [5, 0, 17, 59, 30]
    fast = dataset_targets(ds, ids)
    slow = dataset_targets(TupleDataset(ds), ids)
    from_dict = dataset_targets(DictDataset(ds), ids, key="y")
    assert fast.dtype == slow.dtype == from_dict.dtype == torch.long
    assert fast.tolist() == slow.tolist() == from_dict.tolist() == [i % C for i in ids]


def test_dataset_targets_negative_key_and_int32_targets():
    x = torch.zeros(5, 2)
    y = torch.tensor([4, 3, 2, 1, 0], dtype=torch.int32)
    out = dataset_targets(TensorDataset(x, y), torch.tensor([1, 3]), key=-1)
    assert out.dtype == torch.long and out.tolist() == [3, 1]


def test_dataset_targets_missing_target_is_a_clear_error():
    ds = make_dataset(6)
    with pytest.raises(ValueError, match=r"item 2 to carry a target at key 1 .*Tensor without one\. Set `target_key`"):
        dataset_targets(BareDataset(ds), [2])
    with pytest.raises(ValueError, match=r"target at key 'label'.*Set `target_key`"):
        dataset_targets(DictDataset(ds), [0], key="label")


def test_dataset_targets_refuses_float_targets():
    ds = TensorDataset(torch.zeros(3, 2), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"target of dataset item 1 at key 1 to be a single class index"):
        dataset_targets(ds, [1])


# ===== RepeatedShuffleSampler ============================================================
@pytest.mark.parametrize(("n", "num_samples", "length"), [(7, 20, 20), (7, 3, 7), (5, 0, 5), (4, 8, 8)])
def test_sampler_length_and_balanced_counts(n, num_samples, length):
    sampler = RepeatedShuffleSampler(n, num_samples, torch.Generator().manual_seed(0))
    order = list(sampler)
    assert len(sampler) == len(order) == length
    counts = Counter(order)
    assert set(counts) == set(range(n))
    assert set(counts.values()) <= {length // n, -(-length // n)}
    assert sorted(order[:n]) == list(range(n))  # every full block is a permutation


def test_sampler_epochs_differ_and_seed_reproduces():
    a = RepeatedShuffleSampler(10, 30, torch.Generator().manual_seed(123))
    b = RepeatedShuffleSampler(10, 30, torch.Generator().manual_seed(123))
    first, second = list(a), list(a)
    assert first != second
    assert list(b) == first and list(b) == second


def test_sampler_refuses_empty():
    with pytest.raises(ValueError, match=r"`n` to be positive, but got 0"):
        RepeatedShuffleSampler(0, 4, torch.Generator())


# ===== ActiveDataModule: construction ====================================================
def test_random_initial_labelled_set():
    ds = make_dataset()
    dm = ActiveDataModule(ds, initial_labelled=10, num_classes=C, seed=0)
    ids = dm.labelled_ids
    assert dm.num_labelled == 10 and ids.numel() == 10
    assert torch.equal(ids, ids.sort().values)
    assert torch.equal(dm.pool.labels[ids], ds.tensors[1][ids])
    assert (dm.pool.labelled_round[ids] == 0).all()
    assert torch.equal(dm.unlabelled_ids, torch.tensor(sorted(set(range(N)) - set(ids.tolist()))))


def test_initial_labelled_set_reproducible_by_seed():
    ds = make_dataset()
    a = ActiveDataModule(ds, initial_labelled=10, seed=7).labelled_ids
    b = ActiveDataModule(ds, initial_labelled=10, seed=7).labelled_ids
    c = ActiveDataModule(ds, initial_labelled=10, seed=8).labelled_ids
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("make", [lambda ds: ds, TupleDataset, DictDataset])
def test_initial_per_class_is_balanced(make):
    ds = make_dataset()
    keys = {"target_key": "y", "input_key": "x"} if make is DictDataset else {}
    dm = ActiveDataModule(make(ds), initial_per_class=4, num_classes=C, seed=1, **keys)
    ids = dm.labelled_ids
    assert ids.numel() == 4 * C
    assert torch.bincount(dm.pool.labels[ids], minlength=C).tolist() == [4] * C
    assert torch.equal(dm.pool.labels[ids], ds.tensors[1][ids])


def test_initial_per_class_and_initial_labelled_together_refused():
    with pytest.raises(
        ValueError, match=r"one of `initial_labelled` \(random\) or `initial_per_class`.*got both: 5 and 2"
    ):
        ActiveDataModule(make_dataset(), initial_labelled=5, initial_per_class=2)


def test_initial_per_class_larger_than_a_class_refused():
    with pytest.raises(ValueError, match=r"`initial_per_class`=21 samples, but class \d has 20"):
        ActiveDataModule(make_dataset(), initial_per_class=21)


def test_initial_labelled_larger_than_dataset_refused():
    with pytest.raises(ValueError, match=r"`initial_labelled` to be at most the 60 samples.*got 61"):
        ActiveDataModule(make_dataset(), initial_labelled=61)


def test_pool_set_of_other_length_refused():
    with pytest.raises(ValueError, match=r"`pool_set` to hold the same 60 samples as `train_set`, but got 59 samples"):
        ActiveDataModule(make_dataset(), pool_set=make_dataset(59))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"min_steps_per_epoch": -1}, "min_steps_per_epoch"),
        ({"initial_labelled": True}, "initial_labelled"),
    ],
)
def test_datamodule_refuses_bad_ints(kwargs, name):
    with pytest.raises(ValueError, match=rf"`{name}` to be an int >= \d"):
        ActiveDataModule(make_dataset(), **kwargs)


def test_datamodule_label_records_rounds():
    dm = ActiveDataModule(make_dataset(), initial_labelled=5, num_classes=C)
    dm.label([50, 40], [2, 0])
    dm.label([41], [1])
    dm.label([42], [1], round=7)
    assert dm.pool.labelled_round[[50, 40, 41, 42]].tolist() == [1, 1, 2, 7]
    assert dm.pool.labels[[50, 40, 41, 42]].tolist() == [2, 0, 1, 1]
    assert dm.num_labelled == 9
    with pytest.raises(ValueError, match=r"already labelled"):
        dm.label([41], [0])


def test_datamodule_first_label_without_initial_set_is_round_zero():
    dm = ActiveDataModule(make_dataset())
    dm.label([3], [1])
    assert dm.pool.labelled_round[3] == 0


# ===== ActiveDataModule: dataloaders =====================================================
def test_train_batches_carry_ids_and_pool_labels():
    ds = make_dataset()
    x_all, y_all = ds.tensors
    dm = ActiveDataModule(ds, initial_labelled=10, num_classes=C, batch_size=4, seed=0)
    relabelled = [i for i in range(N) if i not in set(dm.labelled_ids.tolist())][:6]
    wrong = [(int(y_all[i]) + 1) % C for i in relabelled]
    dm.label(relabelled, wrong)
    labels_seen: dict[int, int] = {}
    for batch in dm.train_dataloader():
        x, y = batch
        ids = batch_ids(batch)
        assert isinstance(batch, IndexedTuple)
        assert ids.dtype == torch.long and ids.shape == y.shape == (x.shape[0],)
        assert torch.equal(x, x_all[ids])
        assert torch.equal(y, dm.pool.labels[ids])
        labels_seen.update(zip(ids.tolist(), y.tolist(), strict=True))
    assert sorted(labels_seen) == dm.labelled_ids.tolist()  # the labelled set, nothing else
    for i, w in zip(relabelled, wrong, strict=True):
        assert labels_seen[i] == w != int(y_all[i])  # the pool's label, not the dataset's target


def test_train_labels_come_from_pool_not_dataset():
    ds = make_dataset(6)
    dm = ActiveDataModule(ds, num_classes=C, batch_size=6)
    flipped = [(int(t) + 1) % C for t in ds.tensors[1]]
    dm.label(list(range(6)), flipped)
    (batch,) = list(dm.train_dataloader())
    _, y = batch
    assert y[batch.ids.argsort()].tolist() == flipped
    assert not torch.equal(y, ds.tensors[1][batch.ids])


def test_train_dataloader_needs_labels():
    dm = ActiveDataModule(make_dataset())
    with pytest.raises(ValueError, match=r"at least one labelled sample to train on"):
        dm.train_dataloader()


def test_train_dataloader_reproducible_and_reshuffles_each_epoch():
    ds = make_dataset()
    dm = ActiveDataModule(ds, initial_labelled=20, batch_size=4, seed=3)
    loader = dm.train_dataloader()
    epoch1 = torch.cat([b.ids for b in loader]).tolist()
    epoch2 = torch.cat([b.ids for b in loader]).tolist()
    again = torch.cat([b.ids for b in dm.train_dataloader()]).tolist()
    assert sorted(epoch1) == sorted(epoch2) == dm.labelled_ids.tolist()
    assert epoch1 != epoch2
    assert again == epoch1


def test_min_steps_per_epoch_repeats_tiny_labelled_set():
    ds = make_dataset()
    dm = ActiveDataModule(ds, initial_labelled=3, batch_size=4, min_steps_per_epoch=5, seed=0)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(loader) >= 5 and len(batches) >= 5
    ids = torch.cat([b.ids for b in batches])
    counts = Counter(ids.tolist())
    assert set(counts) == set(dm.labelled_ids.tolist())
    assert max(counts.values()) - min(counts.values()) <= 1
    for batch in batches:
        _, y = batch
        assert torch.equal(y, dm.pool.labels[batch.ids])


def test_min_steps_per_epoch_is_a_floor_not_a_cap():
    dm = ActiveDataModule(make_dataset(), initial_labelled=40, batch_size=4, min_steps_per_epoch=2)
    assert len(list(dm.train_dataloader())) == 10


def test_pool_dataloader_reads_unlabelled_from_pool_set_in_order():
    train_set, pool_set = make_dataset(), make_dataset(offset=100.0)
    dm = ActiveDataModule(train_set, pool_set=pool_set, initial_labelled=10, eval_batch_size=16)
    batches = list(dm.pool_dataloader())
    assert len(batches) == 4  # 50 unlabelled, 16 per batch
    ids = torch.cat([b.ids for b in batches])
    assert torch.equal(ids, dm.unlabelled_ids)
    assert torch.equal(ids, ids.sort().values)
    for batch in batches:
        x, _ = batch
        assert torch.equal(x, pool_set.tensors[0][batch.ids])
        assert (x > 50).all()  # not the train_set features
        assert torch.equal(dm.inputs(batch), x)


def test_pool_dataloader_explicit_ids():
    dm = ActiveDataModule(make_dataset(), initial_labelled=10)
    ids = torch.tensor([58, 3, 21])
    (batch,) = list(dm.pool_dataloader(ids))
    assert batch.ids.tolist() == [58, 3, 21]


def test_pool_dataloader_accepts_lists_and_refuses_unknown_ids():
    dm = ActiveDataModule(make_dataset(), initial_labelled=10)
    (batch,) = list(dm.pool_dataloader([4, 2]))
    assert batch.ids.tolist() == [4, 2]
    with pytest.raises(ValueError, match=r"`ids` to be dataset indices in \[0, 60\), but got unknown ids \[60\]"):
        dm.pool_dataloader([1, 60])


def test_dataset_targets_refuses_unknown_ids():
    with pytest.raises(ValueError, match=r"dataset indices in \[0, 60\), but got unknown ids \[70\]"):
        dataset_targets(make_dataset(), [70])


def test_pool_state_for_other_number_of_classes_refused():
    state = ActivePool(4, num_classes=5).state_dict()
    with pytest.raises(ValueError, match="state for 3 classes, but got one for 5"):
        ActivePool(4, num_classes=3).load_state_dict(state)


def test_dict_items():
    ds = make_dataset()
    dm = ActiveDataModule(
        DictDataset(ds), initial_labelled=6, batch_size=4, input_key="x", target_key="y", num_classes=C
    )
    dm.label([dm.unlabelled_ids[0].item()], [(int(ds.tensors[1][dm.unlabelled_ids[0]]) + 1) % C])
    for batch in dm.train_dataloader():
        assert isinstance(batch, IndexedDict) and set(batch) == {"x", "y"}
        assert torch.equal(batch["x"], ds.tensors[0][batch.ids])
        assert torch.equal(batch["y"], dm.pool.labels[batch.ids])
        assert dm.inputs(batch) is batch["x"] and dm.targets(batch) is batch["y"]
    pool_batch = next(iter(dm.pool_dataloader()))
    assert isinstance(pool_batch, dict)
    assert torch.equal(pool_batch.ids, dm.unlabelled_ids[: len(pool_batch.ids)])
    assert torch.equal(pool_batch["x"], ds.tensors[0][pool_batch.ids])


def test_bare_input_items():
    ds = make_dataset()
    dm = ActiveDataModule(BareDataset(ds), num_classes=C, batch_size=8)
    batch = next(iter(dm.pool_dataloader()))
    assert isinstance(batch, tuple) and len(batch) == 1
    assert torch.equal(batch.ids, torch.arange(N))
    assert torch.equal(batch[0], ds.tensors[0])
    assert dm.inputs(batch) is batch[0]
    # labels from another oracle: the training batch becomes (x, y)
    dm.label([1, 2, 3], [2, 0, 1])
    (train_batch,) = list(dm.train_dataloader())
    x, y = train_batch
    assert torch.equal(x, ds.tensors[0][train_batch.ids])
    assert torch.equal(y, dm.pool.labels[train_batch.ids])


def test_batch_ids_refuses_plain_batch():
    with pytest.raises(ValueError, match=r"carrying `ids`, but got a tuple without them"):
        batch_ids((torch.zeros(2), torch.zeros(2)))


def test_transfer_batch_to_device_keeps_ids():
    ds = make_dataset()
    dm = ActiveDataModule(ds, initial_labelled=8, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert isinstance(moved, tuple)
    assert torch.equal(moved.ids, batch.ids)
    x, y = moved
    assert torch.equal(x, batch[0]) and torch.equal(y, batch[1])

    dict_dm = ActiveDataModule(DictDataset(ds), input_key="x", target_key="y")
    dict_batch = next(iter(dict_dm.pool_dataloader()))
    moved = dict_dm.transfer_batch_to_device(dict_batch, torch.device("cpu"), 0)
    assert isinstance(moved, dict) and set(moved) == {"x", "y"}
    assert torch.equal(moved.ids, dict_batch.ids)
    assert torch.equal(moved["x"], dict_batch["x"])


def test_datamodule_state_dict_round_trip():
    ds = make_dataset()
    dm = ActiveDataModule(ds, initial_labelled=10, num_classes=C, seed=2)
    dm.label([int(dm.unlabelled_ids[0]), int(dm.unlabelled_ids[1])], [0, 2])
    fresh = ActiveDataModule(ds, num_classes=C)
    fresh.load_state_dict(dm.state_dict())
    assert torch.equal(fresh.labelled_ids, dm.labelled_ids)
    assert torch.equal(fresh.pool.labels, dm.pool.labels)
    assert torch.equal(fresh.pool.labelled_round, dm.pool.labelled_round)
    with pytest.raises(ValueError, match=r"dataset of 59 samples, but got one for 60"):
        ActiveDataModule(make_dataset(59)).load_state_dict(dm.state_dict())


def test_val_and_test_dataloaders_only_when_given():
    ds = make_dataset()
    plain = ActiveDataModule(ds)
    assert not is_overridden("val_dataloader", plain)
    assert not is_overridden("test_dataloader", plain)

    val_set, test_set = make_dataset(9), make_dataset(5)
    dm = ActiveDataModule(ds, val_set=val_set, test_set=test_set, eval_batch_size=4)
    assert is_overridden("val_dataloader", dm)
    assert is_overridden("test_dataloader", dm)
    val_batches = list(dm.val_dataloader())
    assert torch.cat([b.ids for b in val_batches]).tolist() == list(range(9))
    x, y = val_batches[0]
    assert torch.equal(x, val_set.tensors[0][:4]) and torch.equal(y, val_set.tensors[1][:4])
    test_ids = torch.cat([b.ids for b in dm.test_dataloader()])
    assert test_ids.tolist() == list(range(5))

    only_val = ActiveDataModule(ds, val_set=val_set)
    assert is_overridden("val_dataloader", only_val)
    assert not is_overridden("test_dataloader", only_val)


def test_ids_survive_dataloader_worker_processes():
    dm = ActiveDataModule(make_dataset(), initial_labelled=10, batch_size=4, num_workers=1)
    batches = list(dm.train_dataloader())
    assert all(isinstance(b, IndexedTuple) for b in batches)
    ids = torch.cat([b.ids for b in batches])
    assert sorted(ids.tolist()) == dm.labelled_ids.tolist()


def test_min_steps_per_epoch_gives_whole_batches_only():
    dm = ActiveDataModule(make_dataset(), initial_labelled=18, batch_size=8, min_steps_per_epoch=1)
    sizes = [b.ids.numel() for b in dm.train_dataloader()]
    assert sizes == [8, 8, 8]  # 18 labels: 3 full batches, the last one topped up from the next shuffle
    plain = ActiveDataModule(make_dataset(), initial_labelled=18, batch_size=8)
    assert [b.ids.numel() for b in plain.train_dataloader()] == [8, 8, 2]


def test_from_datamodule_takes_the_datasets_and_loader_settings():
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    train, val, test = blobs(40, seed=0), blobs(10, seed=1), blobs(12, seed=2)

    class Plain(pl.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.stages: list[str] = []

        def setup(self, stage: str) -> None:
            self.stages.append(stage)

        def train_dataloader(self):
            return DataLoader(train, batch_size=7, shuffle=True)

        def test_dataloader(self):
            return DataLoader(test, batch_size=100)

    plain = Plain()
    dm = ActiveDataModule.from_datamodule(plain, initial_labelled=5, seed=0)
    assert plain.stages == ["fit", "test"]
    assert dm.train_set is train and dm.pool_set is train and dm.test_set is test and dm.val_set is None
    assert dm.batch_size == 7 and dm.num_labelled == 5
    assert ActiveDataModule.from_datamodule(plain, batch_size=3, val_set=val).batch_size == 3
    with pytest.raises(
        TypeError,
        match=r"`datamodule` to be a `pytorch_lightning\.LightningDataModule` or .*, but got TensorDataset",
    ):
        ActiveDataModule.from_datamodule(train)


class ItemsDataset(Dataset):
    """Counts its batched fetches; items are ``(x, y)`` like the TensorDataset it wraps."""

    def __init__(self, base: TensorDataset) -> None:
        self.base, self.batched_calls = base, []

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple:
        return self.base[i]

    def __getitems__(self, indices: list[int]) -> list:
        self.batched_calls.append(list(indices))
        return [self.base[i] for i in indices]


class ScaledTensorDataset(TensorDataset):
    """A TensorDataset subclass whose own ``__getitem__`` must not be bypassed by the batched fetch."""

    def __getitem__(self, i: int) -> tuple:
        x, y = super().__getitem__(i)
        return 10 * x, y


def reference_batches(dataset: Dataset, ids: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, ...]]:
    """Item by item through ``dataset[i]`` and ``torch.stack``: what the pool loader must yield."""
    out = []
    for chunk in ids.split(batch_size):
        items = [dataset[int(i)] for i in chunk]
        out.append(tuple(torch.stack([torch.as_tensor(item[k]) for item in items]) for k in range(2)))
    return out


@pytest.mark.parametrize("kind", ["tensor", "subclass", "items"])
def test_batched_pool_fetch_equals_item_by_item_collate(kind):
    base = make_dataset()
    dataset = {"tensor": base, "subclass": ScaledTensorDataset(*base.tensors), "items": ItemsDataset(base)}[kind]
    dm = ActiveDataModule(dataset, initial_labelled=10, eval_batch_size=16)
    ids = dm.unlabelled_ids[torch.randperm(50, generator=torch.Generator().manual_seed(1))]
    batches = list(dm.pool_dataloader(ids))
    expected = reference_batches(dataset, ids, 16)
    assert len(batches) == len(expected) == 4
    for batch, (x, y) in zip(batches, expected, strict=True):
        assert isinstance(batch, IndexedTuple) and len(batch) == 2
        assert torch.equal(batch[0], x) and torch.equal(batch[1], y)
        assert batch[0].dtype == x.dtype and batch[1].dtype == y.dtype
    assert torch.equal(torch.cat([b.ids for b in batches]), ids)
    if kind == "subclass":
        assert (batches[0][0] == 10 * base.tensors[0][batches[0].ids]).all()
    if kind == "items":  # one call per batch with the batch's dataset ids
        assert dataset.batched_calls == [chunk.tolist() for chunk in ids.split(16)]


def test_batched_fetch_reads_as_id_pairs():
    base = make_dataset()
    view = IdDataset(base, torch.tensor([7, 3, 40]))
    fetched = view.__getitems__([2, 0])
    assert len(fetched) == 2
    (x, y), index = fetched[0]
    assert index == 40 and torch.equal(x, base.tensors[0][40]) and int(y) == 40 % C
    batch = collate_with_ids(fetched)
    assert batch.ids.tolist() == [40, 7] and torch.equal(batch[0], base.tensors[0][[40, 7]])
