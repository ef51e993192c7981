"""The active-learning loop: fit → test → score the pool → select → label, round after round."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.model_helpers import is_overridden
from torchmetrics.functional.classification import multiclass_accuracy

from lightning_al._validation import check_int
from lightning_al.data.datamodule import ActiveDataModule
from lightning_al.estimators import Estimator, Softmax
from lightning_al.estimators.base import TrainFn
from lightning_al.history import scalar_metrics, write_json_atomic
from lightning_al.oracles import DatasetOracle, Oracle
from lightning_al.outputs import PROBS, PoolOutputs
from lightning_al.scoring import TARGETS, predict_outputs
from lightning_al.strategies.base import Selection, Strategy

# Trainer arguments that describe the hardware; scoring trainers reuse them and nothing else.
_HARDWARE_KEYS = ("accelerator", "precision")
# Defaults for the per-round fit Trainer that the user's trainer_kwargs override.
_FIT_DEFAULTS = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "enable_progress_bar": False,
}


@contextlib.contextmanager
def _quiet_trainer_setup() -> Iterator[None]:
    """Silence the banners each new Trainer prints (they repeat every round); warnings still show."""
    loggers = [
        logging.getLogger(name)
        for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class ActiveLearningLoop:
    """Pool-based batch-mode active learning on any LightningModule whose ``forward`` returns logits.

    Round ``r`` (from 0): fit a fresh ``Trainer(**trainer_kwargs)`` on the labelled set,
    evaluate on the test set, score the unlabelled pool with the outputs the strategy
    requires, select ``query_size`` ids, ask the oracle, and record the labels as round
    ``r + 1``. The run stops after ``rounds`` queries, when ``budget`` labels have been
    acquired, or when the pool is empty; a last fit and test then measure the final
    labelled set, so ``history`` has one row per fit.

    Args:
        strategy: acquisition strategy (see :mod:`lightning_al.strategies`).
        query_size: samples labelled per round; the last query takes what remains of the pool or budget.
        rounds: number of queries, or None for no limit.
        budget: total number of labels the queries may acquire, or None for no limit.
        estimator: computes the pool outputs; defaults to the strategy's own, else a softmax pass.
        oracle: labels queried ids; defaults to :class:`DatasetOracle` on the datamodule's training set.
        trainer_kwargs: arguments of every round's ``Trainer`` (callbacks keep their state across rounds).
        reset_weights: start every round from the initial weights (as in the literature) instead of
            continuing from the previous round's.
        seed: seeds each round's training (``seed + round``) and the strategies' random choices.
        output_dir: if given, ``history.json`` is (re)written there after every round.
    """

    def __init__(
        self,
        strategy: Strategy,
        query_size: int,
        rounds: int | None = None,
        budget: int | None = None,
        estimator: Estimator | None = None,
        oracle: Oracle | None = None,
        trainer_kwargs: dict[str, Any] | None = None,
        reset_weights: bool = True,
        seed: int = 0,
        output_dir: str | None = None,
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise TypeError(f"Expected `strategy` to be a lightning_al Strategy, but got {type(strategy).__name__}.")
        check_int("query_size", query_size, 1)
        check_int("rounds", rounds, 0, optional=True)
        check_int("budget", budget, 1, optional=True)
        if oracle is not None and not isinstance(oracle, Oracle):
            raise TypeError(f"Expected `oracle` to have a `label(ids)` method, but got {type(oracle).__name__}.")
        self.strategy = strategy
        self.query_size, self.rounds, self.budget = query_size, rounds, budget
        self.estimator = estimator or strategy.estimator or Softmax()
        required = frozenset(strategy.requires) | frozenset(strategy.requires_labelled)
        if required - self.estimator.provides:
            raise ValueError(
                f"Expected the estimator {type(self.estimator).__name__} to provide what {strategy!r} requires, "
                f"{sorted(required)}, but it provides only {sorted(self.estimator.provides)}."
            )
        self.oracle = oracle
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.reset_weights, self.seed = reset_weights, seed
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.round = 0
        self.acquired = 0
        self.history: list[dict[str, Any]] = []
        self.generator = torch.Generator().manual_seed(seed)

    # ----- one round's steps -------------------------------------------------------------
    def _fit_trainer(self) -> pl.Trainer:
        """The main model's Trainer: the user's arguments, plus the strategy's and estimator's callbacks."""
        callbacks = [
            *self.trainer_kwargs.get("callbacks", []),
            *self.strategy.callbacks(),
            *self.estimator.callbacks(),
        ]
        with _quiet_trainer_setup():
            return pl.Trainer(**{**_FIT_DEFAULTS, **self.trainer_kwargs, "callbacks": callbacks})

    def _train_member(self, dm: ActiveDataModule) -> TrainFn:
        """The :class:`TrainFn` for estimators that fit extra modules (the user's callbacks stay out)."""

        def train(module: pl.LightningModule, seed: int, *, bootstrap: bool = False, **trainer_overrides: Any) -> None:
            pl.seed_everything(seed, verbose=False)
            kwargs = {**_FIT_DEFAULTS, **self.trainer_kwargs, "callbacks": [], "logger": False, **trainer_overrides}
            with _quiet_trainer_setup():
                trainer = pl.Trainer(**kwargs)
                if bootstrap:
                    ids = dm.labelled_ids
                    resample = ids[
                        torch.randint(ids.numel(), (ids.numel(),), generator=torch.Generator().manual_seed(seed))
                    ]
                    trainer.fit(module, datamodule=dm.resampled(resample))
                else:
                    trainer.fit(module, datamodule=dm)

        return train

    def _eval_trainer(self) -> pl.Trainer:
        hardware = {k: self.trainer_kwargs[k] for k in _HARDWARE_KEYS if k in self.trainer_kwargs}
        with _quiet_trainer_setup():
            return pl.Trainer(devices=1, **hardware, **_FIT_DEFAULTS)

    def _fit(self, model: pl.LightningModule, dm: ActiveDataModule, row: dict[str, Any]) -> pl.Trainer:
        start = time.perf_counter()
        pl.seed_everything(self.seed + self.round, verbose=False)
        trainer = self._fit_trainer()
        with _quiet_trainer_setup():
            trainer.fit(model, datamodule=dm)
        row.update(scalar_metrics(trainer.callback_metrics))
        self.estimator.fit(model, self._train_member(dm))
        row["train_seconds"] = time.perf_counter() - start
        return trainer

    def _test(self, model: pl.LightningModule, dm: ActiveDataModule, trainer: pl.Trainer, row: dict[str, Any]) -> None:
        if dm.test_set is None:
            return
        start = time.perf_counter()
        outputs = predict_outputs(
            self._eval_trainer(),
            model,
            dm.eval_dataloader(dm.test_set),
            Softmax(),
            frozenset({PROBS}),
            dm.inputs,
            dm.targets,
        )
        probs = outputs[PROBS]
        row["test_accuracy"] = float(
            multiclass_accuracy(probs, outputs[TARGETS], num_classes=probs.shape[1], average="micro")
        )
        if is_overridden("test_step", model):
            for metrics in trainer.test(model, datamodule=dm, verbose=False):
                row.update(scalar_metrics(metrics))
        row["test_seconds"] = time.perf_counter() - start

    def _score(self, model: pl.LightningModule, dm: ActiveDataModule, row: dict[str, Any]) -> PoolOutputs:
        start = time.perf_counter()
        needs = frozenset(self.strategy.requires)
        if needs:
            outputs = predict_outputs(
                self._eval_trainer(), model, dm.pool_dataloader(), self.estimator, needs, dm.inputs
            )
        else:
            outputs = PoolOutputs(ids=dm.unlabelled_ids)
        labelled_needs = frozenset(self.strategy.requires_labelled)
        if labelled_needs and dm.num_labelled:
            outputs.labelled = predict_outputs(
                self._eval_trainer(),
                model,
                dm.pool_dataloader(dm.labelled_ids),
                self.estimator,
                labelled_needs,
                dm.inputs,
            )
        row["score_seconds"] = time.perf_counter() - start
        return outputs

    def _select(self, outputs: PoolOutputs, dm: ActiveDataModule, k: int, row: dict[str, Any]) -> Selection:
        start = time.perf_counter()
        selection = self.strategy.select(outputs, k, generator=self.generator)
        ids = dm.pool.check_unlabelled(selection.ids, name="selection.ids")
        if ids.numel() != k:
            raise RuntimeError(f"Expected {self.strategy!r} to select {k} ids, but it selected {ids.numel()}.")
        row["select_seconds"] = time.perf_counter() - start
        row["selected_ids"] = ids.tolist()
        if selection.scores is not None:
            row["selected_scores"] = selection.scores.double().tolist()
        return dataclasses.replace(selection, ids=ids)

    def _pseudo_label(self, dm: ActiveDataModule, selection: Selection, row: dict[str, Any]) -> None:
        """Hand the selection's pseudo-labels (minus any id the oracle just labelled) to the next fit."""
        if selection.pseudo_ids is None or selection.pseudo_labels is None:
            return
        keep = ~dm.pool.labelled_mask[selection.pseudo_ids]
        dm.set_pseudo_labels(selection.pseudo_ids[keep], selection.pseudo_labels[keep])
        row["num_pseudo_labelled"] = int(keep.sum())

    def _next_query_size(self, dm: ActiveDataModule) -> int:
        if self.rounds is not None and self.round >= self.rounds:
            return 0
        left = dm.pool.num_unlabelled
        if self.budget is not None:
            left = min(left, self.budget - self.acquired)
        return max(0, min(self.query_size, left))

    # ----- the run -----------------------------------------------------------------------
    def run(
        self,
        model: pl.LightningModule,
        datamodule: ActiveDataModule,
        on_round_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Run rounds until a stopping rule fires; return ``history`` (one plain dict per round).

        ``on_round_end``, if given, receives each history row as soon as its round ends.
        """
        if not isinstance(datamodule, ActiveDataModule):
            raise TypeError(f"Expected `datamodule` to be an ActiveDataModule, but got {type(datamodule).__name__}.")
        dm = datamodule
        if dm.pool.num_unlabelled == 0 and not self.history:
            raise ValueError("Expected an unlabelled pool to query from, but every sample is already labelled.")
        if self.query_size > dm.pool.num_unlabelled and not self.history:
            raise ValueError(
                f"Expected `query_size` to be at most the {dm.pool.num_unlabelled} unlabelled samples, "
                f"but got {self.query_size}."
            )
        oracle = self.oracle or DatasetOracle(dm.train_set, dm.target_key)
        initial_state = copy.deepcopy(model.state_dict())
        while True:
            if self.reset_weights:
                model.load_state_dict(initial_state)
            row: dict[str, Any] = {"round": self.round, "num_labelled": dm.num_labelled}
            if dm.num_labelled:
                trainer = self._fit(model, dm, row)
                dm.clear_pseudo_labels()  # pseudo-labels serve one fit only
                self._test(model, dm, trainer, row)
            k = self._next_query_size(dm)
            if k:
                selection = self._select(self._score(model, dm, row), dm, k, row)
                labels = oracle.label(selection.ids)
                dm.label(selection.ids, labels, round=self.round + 1)
                self.acquired += k
                self._pseudo_label(dm, selection, row)
            self.history.append(row)
            if self.output_dir is not None:
                write_json_atomic(self.output_dir / "history.json", self.history)
            if on_round_end is not None:
                on_round_end(row)
            if not k:
                return self.history
            self.round += 1

    # ----- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "acquired": self.acquired,
            "history": copy.deepcopy(self.history),
            "generator": self.generator.get_state(),
            "strategy": self.strategy.state_dict(),
            "estimator": self.estimator.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round, self.acquired = int(state["round"]), int(state["acquired"])
        self.history = copy.deepcopy(state["history"])
        self.generator.set_state(state["generator"])
        self.strategy.load_state_dict(state["strategy"])
        self.estimator.load_state_dict(state["estimator"])
