"""A LightningDataModule over a labelled / unlabelled pool."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from lightning_utilities.core.overrides import is_overridden
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from lightning_al import namespace
from lightning_al._validation import check_int
from lightning_al.data.batches import (
    IdDataset,
    collate_with_ids,
    gathered_columns,
    keep_ids_through_input_conversion,
    move_indexed_batch,
)
from lightning_al.data.pool import ActivePool, as_id_tensor
from lightning_al.data.samplers import RepeatedShuffleSampler
from lightning_al.data.targets import Key, dataset_targets, input_of, replace_target
from lightning_al.model_call import model_inputs
from lightning_al.tasks import Task

Collate = Callable[[list[Any]], Any]


class _Relabelled(Dataset):
    """``dataset`` whose items carry ``labels[index]`` (the pool's record) instead of their own target."""

    def __init__(self, dataset: Dataset, labels: Any, target_key: Key, task: Task) -> None:
        self.dataset, self.labels, self.target_key, self.task = dataset, labels, target_key, task

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        label = self.task.training_target(self.labels[index])
        return replace_target(self.dataset[index], self.target_key, label)

    def gather_columns(self, ids_B: Tensor) -> tuple[Tensor, ...] | None:
        """The items ``ids_B`` as columns, the target column replaced by the labels, when the dataset gathers.

        None (items one by one) unless the dataset's columns gather (`gathered_columns`), the labels are
        one tensor and ``target_key`` indexes a column or the one after the last.
        """
        columns = gathered_columns(self.dataset, ids_B)
        key = self.target_key
        if columns is None or not isinstance(self.labels, Tensor) or type(key) is not int:
            return None
        if not -len(columns) <= key <= len(columns):
            return None  # the item-by-item path names the bad key
        targets = self.task.training_targets(self.labels[ids_B])
        out = list(columns)
        if key == len(out):
            out.append(targets)
        else:
            out[key] = targets
        return tuple(out)


class _TrainOnly(namespace.LightningDataModule):
    """A datamodule with one fixed training loader whose batches keep their ``ids`` on the device."""

    def __init__(self, loader: DataLoader) -> None:
        super().__init__()
        self.loader = loader

    def setup(self, stage: str) -> None:
        """Keep the batches' ids through the Trainer's input casting (see `keep_ids_through_input_conversion`)."""
        keep_ids_through_input_conversion(self.trainer)

    def train_dataloader(self) -> DataLoader:
        return self.loader

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return move_indexed_batch(batch, device)


class ActiveDataModule(namespace.LightningDataModule):
    """Splits ``train_set`` into a labelled set (trained on) and an unlabelled pool (queried from).

    The dataset index is the identity of a sample everywhere. Every dataloader yields the
    user's usual batch (``x, y = batch`` still works) with ``batch.ids``, the dataset ids
    of its samples. Training batches carry the label recorded in the pool, which is the
    label the oracle gave, not whatever the dataset item holds. It is a ``LightningDataModule`` of
    both ``lightning.pytorch`` and ``pytorch_lightning`` (whichever are installed).

    Model inputs (the one contract every call of the model follows; see
    `lightning_al.model_call.call_model`): with ``input_key`` set, the model is called as
    ``model(batch[input_key])``; with ``input_key=None``, as ``model(**fields)`` on dict batches (every
    field but ``target_key``, e.g. ``input_ids`` and ``attention_mask`` of a Hugging Face tokenizer) and
    ``model(*fields)`` on tuple batches. The model may return logits, or an object or dict with ``logits``.

    Args:
        train_set: map-style dataset of all samples that may be labelled, with the training transform.
        pool_set: the same samples in the same order with the evaluation transform; scoring the
            pool reads from it so augmentation never reaches acquisition. Defaults to ``train_set``.
        val_set: optional validation set (fully labelled).
        test_set: optional test set (fully labelled), evaluated after every round.
        initial_labelled: number of samples labelled at random before the first round.
        initial_per_class: alternatively, label this many samples of every class (class-balanced).
        num_classes: number of classes; labels outside ``[0, num_classes)`` are refused.
        task: what a label is and how the model's outputs are read: ``MultiClass`` (default, with
            ``num_classes``), ``MultiLabel`` or ``Segmentation`` (see `lightning_al.tasks`). The loop takes
            it from here for the estimator, the strategies and the test metrics. Training items carry the
            pool's label as the task gives it: a class index, a float32 0/1 vector, or an ``(H, W)`` long mask.
        batch_size: training batch size.
        eval_batch_size: batch size for the pool, validation and test sets.
        min_steps_per_epoch: repeat the labelled set in fresh shuffles so that every epoch has at
            least this many steps, all of full ``batch_size`` (the last batch is topped up from the
            next shuffle instead of being a noisy remainder). ``0`` disables: one pass per epoch.
        num_workers: dataloader workers.
        pin_memory: pin batches in page-locked memory (faster host-to-GPU copies).
        collate_fn: turns a list of dataset items into a batch (e.g. padding variable-length sequences);
            used by every loader (training, validation, test, pool). Default: ``torch``'s ``default_collate``.
        eval_collate_fn: the collate function of the validation and test loaders, when it differs.
        input_key: where the model input sits in a batch (tuple index or dict key); None passes every
            field except the target (``model(**fields)`` for dict batches, ``model(*fields)`` for tuples).
        target_key: where the target sits in a dataset item and a batch (tuple index or dict key).
        seed: seeds the initial labelled set and the training shuffles.
    """

    def __init__(
        self,
        train_set: Dataset,
        pool_set: Dataset | None = None,
        val_set: Dataset | None = None,
        test_set: Dataset | None = None,
        initial_labelled: int = 0,
        initial_per_class: int | None = None,
        num_classes: int | None = None,
        task: Task | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        min_steps_per_epoch: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        collate_fn: Collate | None = None,
        eval_collate_fn: Collate | None = None,
        input_key: int | str | None = 0,
        target_key: int | str = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not hasattr(train_set, "__getitem__") or not hasattr(train_set, "__len__"):
            raise TypeError(f"Expected `train_set` to be a map-style dataset, but got {type(train_set).__name__}.")
        if pool_set is not None and len(pool_set) != len(train_set):
            raise ValueError(
                f"Expected `pool_set` to hold the same {len(train_set)} samples as `train_set`, "
                f"but got {len(pool_set)} samples."
            )
        check_int("initial_labelled", initial_labelled, 0)
        if initial_per_class is not None:
            check_int("initial_per_class", initial_per_class, 1)
            if initial_labelled:
                raise ValueError(
                    "Expected one of `initial_labelled` (random) or `initial_per_class` (balanced), "
                    f"but got both: {initial_labelled} and {initial_per_class}."
                )
        if initial_labelled > len(train_set):
            raise ValueError(
                f"Expected `initial_labelled` to be at most the {len(train_set)} samples of `train_set`, "
                f"but got {initial_labelled}."
            )
        check_int("batch_size", batch_size, 1)
        check_int("eval_batch_size", eval_batch_size, 1)
        check_int("min_steps_per_epoch", min_steps_per_epoch, 0)
        check_int("num_workers", num_workers, 0)
        for name, fn in (("collate_fn", collate_fn), ("eval_collate_fn", eval_collate_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"Expected `{name}` to be callable (a list of items -> a batch), but got {fn!r}.")
        if input_key is not None and input_key == target_key:
            raise ValueError(f"Expected `input_key` and `target_key` to differ, but both are {input_key!r}.")
        self.train_set = train_set
        self.pool_set = pool_set if pool_set is not None else train_set
        self.val_set, self.test_set = val_set, test_set
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.min_steps_per_epoch, self.num_workers, self.pin_memory = min_steps_per_epoch, num_workers, pin_memory
        self.collate_fn = collate_fn or default_collate
        self.eval_collate_fn = eval_collate_fn or self.collate_fn
        self._collate_by_set: dict[int, Collate] = {}  # a validation or test set's own collate function
        self.input_key, self.target_key, self.seed = input_key, target_key, seed
        self.pool = ActivePool(len(train_set), num_classes=num_classes, task=task)
        self.task = self.pool.task
        if initial_per_class is not None and self.task.name != "multiclass":
            raise ValueError(
                f"Expected `initial_per_class` only with single-label classification, but the task is {self.task!r}; "
                "use `initial_labelled`."
            )
        self.clear_pseudo_labels()
        # As in LightningDataModule.from_datasets: only the loaders that exist are defined,
        # so Lightning neither warns about nor runs an empty validation/test loop.
        if val_set is not None:
            self.val_dataloader = functools.partial(self.eval_dataloader, val_set)
        if test_set is not None:
            self.test_dataloader = functools.partial(self.eval_dataloader, test_set)
        initial_ids = self._initial_ids(initial_labelled, initial_per_class)
        if initial_ids.numel():
            self.label(initial_ids, dataset_targets(train_set, initial_ids, target_key, self.task), round=0)

    @classmethod
    def from_datamodule(cls, datamodule: Any, **kwargs: Any) -> ActiveDataModule:
        """An active datamodule over the datasets of an existing ``LightningDataModule`` (either namespace).

        Runs its ``prepare_data`` and ``setup``, then takes the ``dataset`` of its train (and, where
        defined, val and test) dataloaders, and from each loader its ``collate_fn`` (when not the default)
        and from the training loader its ``batch_size``, ``num_workers`` and ``pin_memory``. ``kwargs``
        go to the constructor and win over what was taken (e.g. ``initial_labelled``, ``input_key``, or
        ``pool_set``: the training samples with the evaluation transform, when training uses augmentation).
        """
        parent = namespace.namespace_of(datamodule, "datamodule", "LightningDataModule").LightningDataModule
        datamodule.prepare_data()
        datamodule.setup("fit")
        train = datamodule.train_dataloader()
        taken: dict[str, Any] = {
            "train_set": train.dataset,
            "num_workers": train.num_workers,
            "pin_memory": train.pin_memory,
        }
        if train.batch_size is not None:
            taken["batch_size"] = train.batch_size
        if train.collate_fn is not default_collate:
            taken["collate_fn"] = train.collate_fn
        eval_collate: dict[str, Collate] = {}
        for name, stage in (("val", "validate"), ("test", "test")):
            if is_overridden(f"{name}_dataloader", datamodule, parent):
                if stage == "test":
                    datamodule.setup("test")
                loader = getattr(datamodule, f"{name}_dataloader")()
                taken[f"{name}_set"] = loader.dataset
                if loader.collate_fn is not default_collate:
                    eval_collate[name] = loader.collate_fn
        active = cls(**{**taken, **kwargs})
        for name, fn in eval_collate.items():
            if f"{name}_set" not in kwargs and "eval_collate_fn" not in kwargs:
                active._collate_by_set[id(taken[f"{name}_set"])] = fn
        return active

    def _initial_ids(self, initial_labelled: int, initial_per_class: int | None) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        if initial_per_class is None:
            return torch.randperm(self.pool.size, generator=generator)[:initial_labelled]
        targets = dataset_targets(self.train_set, torch.arange(self.pool.size), self.target_key, self.task)
        chosen = []
        for cls in targets.unique().tolist():
            members = (targets == cls).nonzero().flatten()
            if members.numel() < initial_per_class:
                raise ValueError(
                    f"Expected every class to have at least `initial_per_class`={initial_per_class} samples, "
                    f"but class {cls} has {members.numel()}."
                )
            chosen.append(members[torch.randperm(members.numel(), generator=generator)[:initial_per_class]])
        return torch.cat(chosen)

    # ----- pool view ---------------------------------------------------------------------
    @property
    def labelled_ids(self) -> Tensor:
        """Dataset ids of the labelled samples, ascending."""
        return self.pool.labelled_ids

    @property
    def unlabelled_ids(self) -> Tensor:
        """Dataset ids of the unlabelled pool, ascending."""
        return self.pool.unlabelled_ids

    @property
    def num_labelled(self) -> int:
        """Number of labelled samples."""
        return self.pool.num_labelled

    def label(self, ids: Any, labels: Any, round: int | None = None) -> None:
        """Record ``labels`` for dataset ``ids`` (unlabelled, unique); ``round`` defaults to a new round."""
        if round is None:
            round = int(self.pool.labelled_round.max()) + 1 if self.pool.size else 0
        ids = self.pool.check_unlabelled(ids)
        labels = self.pool.check_labels(labels, ids)
        self.task.check_fits(labels, ids, self.train_set.__getitem__)
        self.pool.record(ids, labels, round)

    def inputs(self, batch: Any) -> Any:
        """The model input of a batch from any of this module's dataloaders (see the class docstring)."""
        return model_inputs(batch, self.input_key, self.target_key)

    def targets(self, batch: Any) -> Tensor:
        """The targets of a batch (training, validation or test)."""
        return input_of(batch, self.target_key, "target", "target_key")

    def check_batches(self) -> None:
        """Collate one training batch and one pool batch and check that they hold the inputs (and the target).

        The loop calls it before the first fit, so that a collate function that drops a field, or an
        ``input_key``/``target_key`` that names none, is refused with the field's name before anything is labelled.
        """
        if self.num_labelled:
            batch = next(
                iter(self._loader(self.train_set, self.labelled_ids[: self.batch_size], batch_size=self.batch_size))
            )
            self.inputs(batch)
            self.targets(batch)
        if self.pool.num_unlabelled:
            self.inputs(next(iter(self.pool_dataloader(self.unlabelled_ids[: self.eval_batch_size]))))

    # ----- dataloaders -------------------------------------------------------------------
    def _loader(self, dataset: Dataset, ids: Tensor, collate_fn: Collate | None = None, **kwargs: Any) -> DataLoader:
        collate_fn = collate_fn or self.collate_fn
        return DataLoader(
            IdDataset(dataset, ids),
            collate_fn=functools.partial(collate_with_ids, collate_fn=collate_fn),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            **kwargs,
        )

    # ----- pseudo-labels (one fit only, never recorded in the pool) -------------------------
    def set_pseudo_labels(self, ids: Any, labels: Any) -> None:
        """Train the next fits also on unlabelled ``ids`` with model-given ``labels`` (CEAL), until cleared.

        They are not labels: the pool, its state and the labelled set never see them.
        """
        ids = self.pool.check_unlabelled(ids, name="ids")
        labels = as_id_tensor("labels", labels)
        if labels.shape != ids.shape:
            raise ValueError(
                f"Expected one pseudo-label per id, shape {tuple(ids.shape)}, but got {tuple(labels.shape)}."
            )
        self._pseudo_ids, self._pseudo_labels = ids, self.pool.check_labels(labels, ids)

    def clear_pseudo_labels(self) -> None:
        """Drop the pseudo-labels of `set_pseudo_labels`: the next fits train on the labelled set only."""
        self._pseudo_ids = self._pseudo_labels = torch.empty(0, dtype=torch.long)

    @property
    def pseudo_labelled_ids(self) -> Tensor:
        """Dataset ids of the pseudo-labelled samples (empty unless `set_pseudo_labels` was called)."""
        return self._pseudo_ids

    @property
    def pseudo_labels(self) -> Tensor:
        """The labels of `pseudo_labelled_ids`, in the same order."""
        return self._pseudo_labels

    def train_dataloader(self, ids: Tensor | None = None) -> DataLoader:
        """The labelled samples (plus any pseudo-labelled ones), shuffled; ``ids`` (labelled ids, repeats
        allowed: a bootstrap resample) replaces them when given."""
        labels = self.pool.labels
        if ids is None:
            ids = self.pool.labelled_ids
            if self._pseudo_ids.numel():
                ids = torch.cat([ids, self._pseudo_ids])
                labels = labels.clone()
                labels[self._pseudo_ids] = self._pseudo_labels
        else:
            ids = self.pool.check_known(ids)
            unlabelled = ids[~self.pool.labelled_mask[ids]]
            if unlabelled.numel():
                raise ValueError(f"Expected `ids` to be labelled, but got unlabelled ids {unlabelled[:10].tolist()}.")
        if ids.numel() == 0:
            raise ValueError("Expected at least one labelled sample to train on, but the pool has none.")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + ids.numel())
        num_samples = ids.numel()
        if self.min_steps_per_epoch:  # whole batches only: the last one is topped up from the next shuffle
            num_samples = max(self.min_steps_per_epoch, -(-num_samples // self.batch_size)) * self.batch_size
        sampler = RepeatedShuffleSampler(ids.numel(), num_samples, generator)
        labelled = _Relabelled(self.train_set, labels, self.target_key, self.task)
        return self._loader(labelled, ids, batch_size=self.batch_size, sampler=sampler)

    def resampled(self, ids: Tensor) -> namespace.LightningDataModule:
        """A datamodule that trains on ``ids`` (labelled, repeats allowed), e.g. a bootstrap resample."""
        return _TrainOnly(self.train_dataloader(ids))

    def pool_dataloader(self, ids: Tensor | None = None) -> DataLoader:
        """Unlabelled samples (or ``ids``) in ascending id order, with the evaluation transform."""
        ids = self.pool.unlabelled_ids if ids is None else self.pool.check_known(ids)
        return self._loader(self.pool_set, ids, batch_size=self.eval_batch_size, shuffle=False)

    def pool_inputs(self, ids: Any) -> Any:
        """The model inputs of ``ids`` (evaluation transform), collated into one batch, e.g. for thumbnails."""
        ids = self.pool.check_known(ids)
        return self.inputs(next(iter(self._loader(self.pool_set, ids, batch_size=max(1, ids.numel())))))

    def eval_dataloader(self, dataset: Dataset) -> DataLoader:
        """A fully labelled ``dataset`` (validation or test) in order, with ids ``0..len-1``."""
        collate_fn = self._collate_by_set.get(id(dataset), self.eval_collate_fn)
        return self._loader(
            dataset, torch.arange(len(dataset)), collate_fn, batch_size=self.eval_batch_size, shuffle=False
        )

    def setup(self, stage: str) -> None:
        """Keep the batches' ids through the Trainer's input casting (see `keep_ids_through_input_conversion`)."""
        if self.trainer is not None:
            keep_ids_through_input_conversion(self.trainer)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move ``batch`` to ``device``, keeping its ``ids``."""
        return move_indexed_batch(batch, device)

    # ----- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The pool's labelling state, under ``"pool"`` (see `ActivePool.state_dict`)."""
        return {"pool": self.pool.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the pool's labelling state from `state_dict`."""
        self.pool.load_state_dict(state_dict["pool"])
