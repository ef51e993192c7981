"""The active-learning loop: fit → test → score the pool → select → label, round after round."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning_fabric.utilities.seed import seed_everything
from lightning_utilities.core.overrides import is_overridden
from torch import Tensor

from lightning_al import distributed, namespace, trainer_args
from lightning_al._validation import check_int
from lightning_al.data.datamodule import ActiveDataModule
from lightning_al.data.pool import as_id_tensor
from lightning_al.estimators import Estimator, Softmax
from lightning_al.estimators.base import TrainFn, run_round_seed
from lightning_al.estimators.ensembles import reinitialise
from lightning_al.history import scalar_metrics, write_json_atomic
from lightning_al.oracles import DatasetOracle, LabelsPending, Oracle, PartialLabels, Query, QueryOracle
from lightning_al.outputs import PROBS, PoolOutputs
from lightning_al.run_lock import RunDirectoryLock
from lightning_al.run_state import FORMAT as RUN_STATE_FORMAT
from lightning_al.run_state import STATE_FILE, check_fingerprint, load_state, save_atomic
from lightning_al.scoring import predict_outputs, stream_metrics, stream_top_k
from lightning_al.strategies.base import Selection, Strategy, check_query_size

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from lightning_al.round_logging import RoundLogger

# Accepted values of `embedding_dtype`: the dtype gathered pool embeddings are held in on the host.
_EMBEDDING_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@distributed.rank_zero_only
def _print_rank_zero(message: str) -> None:
    print(message, flush=True)


class ActiveLearningLoop:
    """Pool-based batch-mode active learning on any LightningModule whose ``forward`` returns logits.

    Round ``r`` (from 0): fit a fresh ``Trainer(**trainer_kwargs)`` on the labelled set,
    evaluate on the test set, score the unlabelled pool with the outputs the strategy
    requires, select ``query_size`` ids, ask the oracle, and record the labels as round
    ``r + 1``. The run stops after ``rounds`` queries, when ``budget`` labels have been
    acquired, or when the pool is empty; a last fit and test then measure the final
    labelled set, so ``history`` has one row per fit.

    Args:
        strategy: acquisition strategy (see `lightning_al.strategies`).
        query_size: samples labelled per round; the last query takes what remains of the pool or budget.
        rounds: number of queries, or None for no limit.
        budget: total number of labels the queries may acquire, or None for no limit.
        estimator: computes the pool outputs; defaults to the strategy's own, else a softmax pass.
        oracle: labels queried ids; defaults to `DatasetOracle` on the datamodule's training set.
        trainer_kwargs: arguments of every round's main-fit ``Trainer``, over quiet defaults (no logger,
            checkpointing, summary or progress bar unless asked for); callbacks keep their state across
            rounds, except Lightning's ``EarlyStopping`` and ``ModelCheckpoint``, which start afresh every
            fit. Estimators' internal fits take the training arguments only; the test and scoring passes
            run on the fit's device in its precision (see `lightning_al.trainer_args`).
        reset_weights: start every round from the initial weights (as in the literature) instead of
            continuing from the previous round's.
        seed: seeds each round's training (``seed + round``) and the strategies' random choices.
        output_dir: the run directory: ``history.json`` after every round and the resumable ``state.pt``
            after every labelling step (see `run`).
        progress: print one line per round (round, labelled count, test metric) on rank zero's standard output.
        pool_subset: score only a random subset of this many unlabelled samples each round (drawn from
            the loop's seeded generator, so a resumed run draws the same), as Gal et al. 2017 do on
            large pools; None scores the whole pool. Must be at least ``query_size``.
        embedding_dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``: the dtype in which the pool's
            embeddings are gathered for strategies that need the whole pool (core-set, BADGE, TypiClust, ...).
            Half precision is cast batch by batch on the scoring device, so the host holds ``N x D`` values
            at half the memory and never their float32 copy; the diversity kernels then compute their
            products in float32 row chunks. Other outputs (probabilities, MC samples) keep their dtype.
            Embeddings beyond float16's range (65504) are refused; bfloat16 has float32's range.

    Scoring. A strategy that scores samples independently (``strategy.streamable``) is scored batch by
    batch with a running top ``k``: the host keeps ``O(query_size)`` values, never the pool's
    ``(N, T, C)`` MC samples. Other strategies receive the pool's outputs in full.

    Multi-process strategies (e.g. ``trainer_kwargs=dict(strategy="ddp", devices=2)``): every rank
    runs the loop and scores its own disjoint share of the pool. Streamable strategies merge the ranks'
    top-``k`` lists (rank-parallel end to end); the others gather the outputs by dataset id on rank 0,
    select there, and broadcast the query (with the loop's generator state and the estimator state, so
    the ranks stay identical). Only rank 0 asks the oracle (the labels are broadcast) and writes files.

    A Lightning ``Logger`` (or a list) in ``trainer_kwargs["logger"]`` receives the whole experiment as one
    run: every round's training metrics (steps continue across rounds) and, per round, the ``al/*``
    scalars against ``al/num_labelled``, the queried samples and, at the end, the learning curve
    (see `lightning_al.round_logging.RoundLogger`).
    """

    def __init__(
        self,
        strategy: Strategy,
        query_size: int,
        rounds: int | None = None,
        budget: int | None = None,
        estimator: Estimator | None = None,
        oracle: Oracle | QueryOracle | None = None,
        trainer_kwargs: dict[str, Any] | None = None,
        reset_weights: bool = True,
        seed: int = 0,
        output_dir: str | None = None,
        progress: bool = True,
        pool_subset: int | None = None,
        embedding_dtype: str = "float32",
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise TypeError(f"Expected `strategy` to be a lightning_al Strategy, but got {type(strategy).__name__}.")
        check_int("query_size", query_size, 1)
        check_int("rounds", rounds, 0, optional=True)
        check_int("budget", budget, 1, optional=True)
        check_int("pool_subset", pool_subset, 1, optional=True)
        if pool_subset is not None and pool_subset < query_size:
            raise ValueError(
                f"Expected `pool_subset` to be at least `query_size` ({query_size}), but got {pool_subset}."
            )
        if not isinstance(embedding_dtype, str) or embedding_dtype not in _EMBEDDING_DTYPES:
            raise ValueError(
                f"Expected `embedding_dtype` to be one of {sorted(_EMBEDDING_DTYPES)}, but got {embedding_dtype!r}."
            )
        if oracle is not None and not isinstance(oracle, Oracle | QueryOracle):
            raise TypeError(
                f"Expected `oracle` to have a `label(ids)` or `answer(query)` method, but got {type(oracle).__name__}."
            )
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
        self._per_fit_callbacks = trainer_args.PerFitCallbacks(self.trainer_kwargs.get("callbacks", []))
        self._pass_device: torch.device | None = None  # where the fit trained: the passes run there too
        self._pass_trainer: pl.Trainer | None = None
        self.reset_weights, self.seed = reset_weights, seed
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.round = 0
        self.acquired = 0
        self.history: list[dict[str, Any]] = []
        self.generator = torch.Generator().manual_seed(seed)
        self.progress = progress
        self.pool_subset = pool_subset
        self.embedding_dtype = embedding_dtype
        self.finished = False
        self.pending_query: Query | None = None
        self._initial_state: dict[str, Any] | None = None
        self._round_logger: RoundLogger | None = None
        self._round_logger_state: dict[str, Any] | None = None
        self._namespace = namespace.default()  # the model's, from `run` on

    # ----- one round's steps -------------------------------------------------------------
    def _fit_trainer(self) -> pl.Trainer:
        """The main model's Trainer: the user's arguments, plus the strategy's and estimator's callbacks."""
        kwargs = trainer_args.fit_kwargs(self.trainer_kwargs, self._fit_callbacks())
        if self._round_logger is not None:
            kwargs["logger"] = self._round_logger.fit_loggers(self.round)
        with trainer_args.quiet_banners():
            return self._namespace.Trainer(**kwargs)

    def _fit_callbacks(self) -> list[pl.Callback]:
        """The user's callbacks, then the strategy's and the estimator's."""
        return [*self.trainer_kwargs.get("callbacks", []), *self.strategy.callbacks(), *self.estimator.callbacks()]

    def _train_member(self, dm: ActiveDataModule) -> TrainFn:
        """The `TrainFn` for estimators that fit extra modules (the user's callbacks stay out)."""

        def train(
            module: pl.LightningModule,
            seed: int,
            *,
            bootstrap: bool = False,
            fresh_init: bool = False,
            **trainer_overrides: Any,
        ) -> None:
            if fresh_init:  # a new model this round: weights and fit drawn from the run's seed, the round and ``seed``
                seed = run_round_seed(self.seed, self.round, seed)
                reinitialise(module, seed)
            seed_everything(seed, verbose=False)
            kwargs = trainer_args.internal_fit_kwargs(self.trainer_kwargs, **trainer_overrides)
            with trainer_args.quiet_banners():
                trainer = namespace.namespace_of(module, "module").Trainer(**kwargs)
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
        """A quiet one-device Trainer for testing and scoring, on the device this process trains on.

        One Trainer serves every pass of the run until the fit's device changes.
        """
        if self._pass_device is None:  # no fit yet (a cold start): the device a fit would train on
            with trainer_args.quiet_banners():
                probe = self._namespace.Trainer(**trainer_args.internal_fit_kwargs(self.trainer_kwargs))
            self._pass_device = probe.strategy.root_device
        if self._pass_trainer is None or self._pass_trainer.strategy.root_device != self._pass_device:
            with trainer_args.quiet_banners():
                kwargs = trainer_args.pass_kwargs(self.trainer_kwargs, self._pass_device)
                self._pass_trainer = self._namespace.Trainer(**kwargs)
        return self._pass_trainer

    def _fit(self, model: pl.LightningModule, dm: ActiveDataModule, row: dict[str, Any]) -> pl.Trainer:
        start = time.perf_counter()
        seed_everything(self.seed + self.round, verbose=False)
        self._per_fit_callbacks.reset()
        trainer = self._fit_trainer()
        with trainer_args.quiet_banners():
            trainer.fit(model, datamodule=dm)
        self._pass_device = trainer.strategy.root_device
        row.update(scalar_metrics(trainer.callback_metrics))
        self.estimator.fit(model, self._train_member(dm))
        row["train_seconds"] = time.perf_counter() - start
        return trainer

    def _test(self, model: pl.LightningModule, dm: ActiveDataModule, trainer: pl.Trainer, row: dict[str, Any]) -> None:
        if dm.test_set is None:
            return
        start = time.perf_counter()
        estimator = Softmax()
        estimator.bind(dm.task)
        loader = dm.eval_dataloader(dm.test_set)
        row.update(stream_metrics(self._eval_trainer(), model, loader, estimator, dm.inputs, dm.targets))
        if is_overridden("test_step", model, self._namespace.LightningModule):
            for metrics in trainer.test(model, datamodule=dm, verbose=False):
                row.update(scalar_metrics(metrics))
        row["test_seconds"] = time.perf_counter() - start

    def _candidates(self, dm: ActiveDataModule) -> Tensor:
        """The unlabelled ids scored this round (ascending): all of them, or a random ``pool_subset``."""
        ids = dm.unlabelled_ids
        if self.pool_subset is None or ids.numel() <= self.pool_subset:
            return ids
        picked = torch.randperm(ids.numel(), generator=self.generator)[: self.pool_subset]
        return ids[picked.sort().values]

    def _score_and_select(
        self, model: pl.LightningModule, dm: ActiveDataModule, k: int, row: dict[str, Any]
    ) -> tuple[PoolOutputs | None, Selection]:
        """Score this rank's share of the candidates, then agree on one selection across ranks.

        Returns the pool outputs (None on ranks other than 0 for strategies that need the whole pool)
        and the selection, identical on every rank.
        """
        start = time.perf_counter()
        candidates = self._candidates(dm)
        k = check_query_size(k, candidates.numel())
        needs = self.strategy.requires_for(dm.task)
        if self.strategy.streamable:
            loader = dm.pool_dataloader(distributed.shard(candidates))
            scorer = self.strategy.batch_scores  # type: ignore[attr-defined]
            top_k = stream_top_k(self._eval_trainer(), model, loader, self.estimator, needs, dm.inputs, scorer, k)
            row["score_seconds"] = time.perf_counter() - start
            start = time.perf_counter()
            ids, scores = distributed.merge_top_k(*top_k.result(), k)
            outputs: PoolOutputs | None = PoolOutputs(ids=candidates, task=dm.task)
            selection = Selection(ids=ids, scores=scores)
        else:
            outputs = self._gathered_outputs(model, dm, candidates, needs)
            labelled_needs = frozenset(self.strategy.requires_labelled)
            if labelled_needs and dm.num_labelled:
                labelled = self._gathered_outputs(model, dm, dm.labelled_ids, labelled_needs)
                if outputs is not None:
                    outputs.labelled = labelled
            row["score_seconds"] = time.perf_counter() - start
            start = time.perf_counter()
            selection = None
            if outputs is not None:
                selection = self.strategy.select(outputs, k, generator=self.generator)
        selection = self._agree(selection)
        ids = dm.pool.check_unlabelled(selection.ids, name="selection.ids")
        if ids.numel() != k:
            raise RuntimeError(f"Expected {self.strategy!r} to select {k} ids, but it selected {ids.numel()}.")
        row["select_seconds"] = time.perf_counter() - start
        row["selected_ids"] = ids.tolist()
        if selection.scores is not None:
            row["selected_scores"] = selection.scores.double().tolist()
        return outputs, dataclasses.replace(selection, ids=ids)

    def _gathered_outputs(
        self, model: pl.LightningModule, dm: ActiveDataModule, ids: Tensor, needs: frozenset[str]
    ) -> PoolOutputs | None:
        """Outputs ``needs`` of ``ids``, each rank predicting its share, merged by id on rank 0 (None elsewhere)."""
        mine = distributed.shard(ids)
        if not needs:
            return PoolOutputs(ids=ids, task=dm.task) if distributed.is_rank_zero() else None
        dtype = _EMBEDDING_DTYPES[self.embedding_dtype]
        local = predict_outputs(
            self._eval_trainer(),
            model,
            dm.pool_dataloader(mine),
            self.estimator,
            needs,
            dm.inputs,
            embedding_dtype=None if dtype == torch.float32 else dtype,
        )
        gathered = distributed.gather_by_id(local)
        if gathered is not None:
            gathered.task = dm.task
        return gathered

    def _agree(self, selection: Selection | None) -> Selection:
        """Rank 0's selection, loop generator and estimator state on every rank (a no-op on one process)."""
        if distributed.rank_and_world()[1] == 1 and selection is not None:
            return selection
        shared = (selection, self.generator.get_state(), self.estimator.state_dict())
        selection, generator_state, estimator_state = distributed.broadcast_from_rank_zero(shared)
        self.generator.set_state(generator_state)
        self.estimator.load_state_dict(estimator_state)
        return selection

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
        resume: bool = False,
    ) -> list[dict[str, Any]]:
        """Run rounds until a stopping rule fires; return ``history`` (one plain dict per round).

        Args:
            model: the LightningModule trained every round and used for scoring (unless an estimator
                scores with other modules).
            datamodule: the labelled set and the unlabelled pool; labels are recorded in its pool.
            on_round_end: if given, receives each history row as soon as its round ends.
            resume: continue the run saved in ``output_dir`` (see below).

        With ``output_dir`` set, the pool, this loop's state and the model are saved to
        ``output_dir/state.pt`` after every labelling step; ``resume=True`` continues from there
        (a round cut short before its labels arrived is run again; labels already recorded are never
        asked for twice). Without ``resume``, an ``output_dir`` that already holds a run is refused.
        If the oracle raises `lightning_al.oracles.LabelsPending` (a human has to label), the
        state is saved, its message printed, and ``run`` returns; ``pending_query`` is then set.
        While it runs, the process holds ``output_dir`` (`lightning_al.run_lock.RunDirectoryLock`):
        a second run or resume there is refused, naming this one.
        """
        if not isinstance(datamodule, ActiveDataModule):
            raise TypeError(f"Expected `datamodule` to be an ActiveDataModule, but got {type(datamodule).__name__}.")
        lock = (
            RunDirectoryLock(self.output_dir)
            if self.output_dir is not None and distributed.is_rank_zero()
            else contextlib.nullcontext()
        )
        with lock:
            return self._run(model, datamodule, on_round_end, resume)

    def _run(
        self,
        model: pl.LightningModule,
        datamodule: ActiveDataModule,
        on_round_end: Callable[[dict[str, Any]], None] | None,
        resume: bool,
    ) -> list[dict[str, Any]]:
        dm = datamodule
        self._namespace = self._check_namespace(model)
        self._check_task(dm)
        dm.check_batches()
        initial_state = copy.deepcopy(model.state_dict())
        pending = self._start(model, dm, resume, initial_state)
        if pending is None and self.finished:
            return self.history
        if dm.pool.num_unlabelled == 0 and not self.history and pending is None:
            raise ValueError("Expected an unlabelled pool to query from, but every sample is already labelled.")
        if self.query_size > dm.pool.num_unlabelled and not self.history and pending is None:
            raise ValueError(
                f"Expected `query_size` to be at most the {dm.pool.num_unlabelled} unlabelled samples, "
                f"but got {self.query_size}."
            )
        oracle = self.oracle or DatasetOracle(dm.train_set, dm.target_key, dm.task)
        if isinstance(oracle, QueryOracle) and getattr(oracle, "dataset", False) is None:
            oracle.dataset = dm.train_set  # an oracle that shows samples (e.g. their paths) reads them from here
        if getattr(oracle, "directory", False) is None and self.output_dir is not None:
            oracle.directory = str(self.output_dir)  # an oracle that keeps records (what it pushed) keeps them here
        if getattr(oracle, "task", False) is None:
            oracle.task = dm.task  # an oracle that parses labels (e.g. mask files) reads their form from here
        initial_state = self._initial_state if self._initial_state is not None else initial_state
        self._initial_state = initial_state
        while True:
            if pending is None:
                if self.reset_weights:
                    model.load_state_dict(initial_state)
                row: dict[str, Any] = {"round": self.round, "num_labelled": dm.num_labelled}
                if dm.num_labelled:
                    trainer = self._fit(model, dm, row)
                    dm.clear_pseudo_labels()  # pseudo-labels serve one fit only
                    self._test(model, dm, trainer, row)
                k = self._next_query_size(dm)
                if k:
                    outputs, selection = self._score_and_select(model, dm, k, row)
                    shown = isinstance(oracle, QueryOracle) or self._round_logger is not None
                    predicted = None
                    if shown and outputs is not None and distributed.is_rank_zero():
                        predicted = self._predicted(model, dm, outputs, selection)
                    query = Query(self.round, selection.ids, selection.scores, predicted)
                    pending = (row, query, selection)
            labels = None
            if pending is not None:
                row, query, selection = pending
                k = query.ids.numel()
                try:
                    labels = self._ask(oracle, query)
                except LabelsPending as waiting:
                    self.pending_query = query
                    self._save(model, dm, pending)
                    _print_rank_zero(str(waiting))
                    return self.history
                if isinstance(labels, PartialLabels):  # some queried ids got no label: they return to the pool
                    query, labels = self._answered_part(query, labels)
                    row["num_returned"] = k - query.ids.numel()
                if query.ids.numel():
                    dm.label(query.ids, labels, round=self.round + 1)  # validated by the pool before any change
                self.acquired += query.ids.numel()
                self._pseudo_label(dm, selection, row)
                self.pending_query = pending = None
            self.history.append(row)
            self.finished = not k
            if not self.finished:
                self.round += 1
            self._save(model, dm, None)
            self._report(row, query if labels is not None else None, labels, dm)
            if on_round_end is not None:
                on_round_end(row)
            if self.finished:
                if self._round_logger is not None:
                    self._round_logger.finish(self.history, dm.pool.labelled_round, self._labels_record(dm))
                return self.history

    @staticmethod
    def _answered_part(query: Query, answer: PartialLabels) -> tuple[Query, Tensor | list[Tensor]]:
        """The query narrowed to the ids the oracle labelled (refusing ids it was not asked for)."""
        ids = as_id_tensor("labels.ids", answer.ids)
        keep = torch.isin(query.ids, ids)
        if int(keep.sum()) != ids.numel() or ids.unique().numel() != ids.numel():
            raise ValueError(
                f"Expected the oracle's `PartialLabels.ids` to be distinct ids of the query, but got {ids.tolist()} "
                f"for the query {query.ids.tolist()}."
            )
        order = query.ids[keep]
        if not torch.equal(order, ids):
            raise ValueError(f"Expected `PartialLabels.ids` in query order {order.tolist()}, but got {ids.tolist()}.")
        narrowed = dataclasses.replace(
            query,
            ids=order,
            scores=query.scores[keep] if query.scores is not None else None,
            predicted=query.predicted[keep] if query.predicted is not None else None,
        )
        return narrowed, answer.labels

    @staticmethod
    def _labels_record(dm: ActiveDataModule) -> Tensor | list[Any]:
        """Every dataset id's label for the labelled-id record: class indices, or the task's plain description."""
        if isinstance(dm.pool.labels, Tensor) and dm.pool.labels.ndim == 1:
            return dm.pool.labels
        record: list[Any] = [None] * dm.pool.size
        ids = dm.labelled_ids
        for i, value in zip(ids.tolist(), dm.task.describe([dm.pool.label_of(i) for i in ids.tolist()]), strict=True):
            record[i] = value
        return record

    def _check_task(self, dm: ActiveDataModule) -> None:
        """The strategy and the estimator must support the datamodule's task, and the estimator provide the outputs."""
        task = dm.task
        self.strategy.check_task(task)
        self.estimator.bind(task)
        if self.strategy.estimator is not None and self.strategy.estimator is not self.estimator:
            self.strategy.estimator.bind(task)
        required = self.strategy.requires_for(task) | frozenset(self.strategy.requires_labelled)
        if required - self.estimator.provides:
            raise ValueError(
                f"Expected the estimator {type(self.estimator).__name__} to provide what {self.strategy!r} requires "
                f"for {task!r}, {sorted(required)}, but it provides only {sorted(self.estimator.provides)}."
            )

    def _check_namespace(self, model: pl.LightningModule) -> namespace.Namespace:
        """The model's Lightning namespace; the Trainer arguments' callbacks and loggers must share it."""
        ns = namespace.namespace_of(model)
        namespace.check_same_namespace(ns, self._fit_callbacks(), "trainer_kwargs['callbacks']", "Callback")
        namespace.check_same_namespace(
            ns, self.trainer_kwargs.get("logger"), "trainer_kwargs['logger']", "loggers.Logger"
        )
        return ns

    def _start(
        self, model: pl.LightningModule, dm: ActiveDataModule, resume: bool, initial_state: dict[str, Any]
    ) -> tuple[dict[str, Any], Query, Selection] | None:
        """Restore a saved run if asked, set up round logging; return the query still waiting for labels."""
        state_path = self.output_dir / STATE_FILE if self.output_dir is not None else None
        pending = None
        if state_path is not None and state_path.exists() and not self.history:
            if not resume:
                raise ValueError(
                    f"Expected `output_dir` to hold no earlier run, but `{state_path}` exists. "
                    "Pass `resume=True` to continue it, or choose another `output_dir`."
                )
            pending = self._restore(load_state(state_path), state_path, model, dm)
        elif resume and state_path is None:
            raise ValueError("Expected `output_dir` to be set with `resume=True`, but got None.")
        if self._round_logger is None:
            loggers = self.trainer_kwargs.get("logger")
            loggers = loggers if isinstance(loggers, list | tuple) else [loggers]
            loggers = [logger for logger in loggers if isinstance(logger, self._namespace.get_class("loggers.Logger"))]
            if loggers:
                from lightning_al.round_logging import RoundLogger

                self._round_logger = RoundLogger(loggers, task=dm.task)
                if self._round_logger_state is not None:  # resumed: training steps continue after the saved ones
                    self._round_logger.load_state_dict(self._round_logger_state)
                self._round_logger.start(self._config(dm))
        return pending

    def _config(self, dm: ActiveDataModule) -> dict[str, Any]:
        return {
            "strategy": repr(self.strategy),
            "estimator": type(self.estimator).__name__,
            "query_size": self.query_size,
            "task": repr(dm.task),
            "rounds": self.rounds,
            "budget": self.budget,
            "reset_weights": self.reset_weights,
            "seed": self.seed,
            "embedding_dtype": self.embedding_dtype,
            "pool_size": dm.pool.size,
            "initial_labelled": dm.num_labelled,
        }

    def _predicted(
        self, model: pl.LightningModule, dm: ActiveDataModule, outputs: PoolOutputs, selection: Selection
    ) -> Tensor | None:
        """The model's predicted label of each selected id (from the pool's probabilities when scored)."""
        if not dm.num_labelled:
            return None
        if PROBS not in outputs.values:
            estimator = Softmax()
            estimator.bind(dm.task)
            loader = dm.pool_dataloader(selection.ids)
            outputs = predict_outputs(self._eval_trainer(), model, loader, estimator, frozenset({PROBS}), dm.inputs)
        order = outputs.ids.argsort()
        positions = order[torch.searchsorted(outputs.ids[order], selection.ids)]
        return dm.task.predicted(outputs[PROBS][positions])

    @staticmethod
    def _ask(oracle: Oracle | QueryOracle, query: Query) -> Tensor:
        """The oracle's labels; under several processes only rank 0 asks and broadcasts the answer."""
        if distributed.rank_and_world()[1] == 1:
            return oracle.answer(query) if isinstance(oracle, QueryOracle) else oracle.label(query.ids)
        labels, pending = None, None
        if distributed.is_rank_zero():
            try:
                labels = oracle.answer(query) if isinstance(oracle, QueryOracle) else oracle.label(query.ids)
            except LabelsPending as waiting:
                pending = str(waiting)
        labels, pending = distributed.broadcast_from_rank_zero((labels, pending))
        if pending is not None:
            raise LabelsPending(pending)
        return labels

    def _report(self, row: dict[str, Any], query: Query | None, labels: Tensor | None, dm: ActiveDataModule) -> None:
        """history.json, the experiment logger and the progress line, after a round."""
        if self.output_dir is not None and distributed.is_rank_zero():
            write_json_atomic(self.output_dir / "history.json", self.history)
        if self._round_logger is not None:
            inputs = dm.pool_inputs(query.ids) if query is not None else None
            self._round_logger.log_round(row, query, labels, inputs)
        if self.progress:
            total = f"/{self.rounds + 1}" if self.rounds is not None else ""
            name = dm.task.metric
            metric = f" · {name} {row[name]:.4f}" if name in row else ""
            _print_rank_zero(f"[lightning_al] round {row['round'] + 1}{total} · {row['num_labelled']} labelled{metric}")

    # ----- persistence -------------------------------------------------------------------
    def _fingerprint(self, dm: ActiveDataModule) -> dict[str, Any]:
        return {
            "pool_size": dm.pool.size,
            "num_classes": dm.pool.num_classes,
            "strategy": type(self.strategy).__qualname__,
            "query_size": self.query_size,
            "seed": self.seed,
        }

    def _user_callbacks(self) -> dict[str, pl.Callback]:
        return {cb.state_key: cb for cb in self.trainer_kwargs.get("callbacks", [])}

    def _save(
        self,
        model: pl.LightningModule,
        dm: ActiveDataModule,
        pending: tuple[dict[str, Any], Query, Selection] | None,
    ) -> None:
        if self.output_dir is None or not distributed.is_rank_zero():
            return
        waiting = None
        if pending is not None:
            row, query, selection = pending
            waiting = {
                "row": row,
                "query": dataclasses.asdict(query),
                "pseudo_ids": selection.pseudo_ids,
                "pseudo_labels": selection.pseudo_labels,
            }
        state = {
            "format": RUN_STATE_FORMAT,
            "fingerprint": self._fingerprint(dm),
            "loop": self.state_dict(),
            "datamodule": dm.state_dict(),
            "pseudo": [dm.pseudo_labelled_ids, dm.pseudo_labels],
            "callbacks": {key: cb.state_dict() for key, cb in self._user_callbacks().items()},
            "initial_model": self._initial_state,
            "model": model.state_dict(),
            "pending": waiting,
            "round_logger": self._round_logger.state_dict() if self._round_logger is not None else None,
        }
        save_atomic(state, self.output_dir / STATE_FILE)

    def _restore(
        self, state: dict[str, Any], path: Path, model: pl.LightningModule, dm: ActiveDataModule
    ) -> tuple[dict[str, Any], Query, Selection] | None:
        check_fingerprint(path, state["fingerprint"], self._fingerprint(dm))
        try:  # the model first: a model of another architecture is refused before anything is restored
            model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise ValueError(
                f"Expected the model to match the one saved in `{path}`, but its weights do not load: {error}"
            ) from error
        dm.load_state_dict(state["datamodule"])
        self.load_state_dict(state["loop"])
        pseudo_ids, pseudo_labels = state["pseudo"]
        if pseudo_ids.numel():
            dm.set_pseudo_labels(pseudo_ids, pseudo_labels)
        for key, cb in self._user_callbacks().items():
            if key in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][key])
        self._initial_state = state["initial_model"]
        self._round_logger_state = state["round_logger"]
        waiting = state["pending"]
        if waiting is None:
            return None
        query = Query(**waiting["query"])
        self.pending_query = query
        selection = Selection(query.ids, query.scores, waiting["pseudo_ids"], waiting["pseudo_labels"])
        return waiting["row"], query, selection

    # ----- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The loop's progress: round, labels acquired, ``history``, generator, strategy and estimator states."""
        return {
            "round": self.round,
            "acquired": self.acquired,
            "history": copy.deepcopy(self.history),
            "generator": self.generator.get_state(),
            "strategy": self.strategy.state_dict(),
            "estimator": self.estimator.state_dict(),
            "finished": self.finished,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the progress saved by `state_dict` (the strategy's and estimator's states included)."""
        self.round, self.acquired = int(state["round"]), int(state["acquired"])
        self.history = copy.deepcopy(state["history"])
        self.generator.set_state(state["generator"])
        self.strategy.load_state_dict(state["strategy"])
        self.estimator.load_state_dict(state["estimator"])
        self.finished = bool(state.get("finished", False))
