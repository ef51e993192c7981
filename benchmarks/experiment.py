"""A whole active-learning experiment side by side: lightning_al vs a plain PyTorch loop, Lightning alone and baal.

The digits protocol of the demos, run end to end by four implementations, timed and compared:

- data: scikit-learn's digits through `lightning_al.datasets.Digits` (the fixed stratified split of the
  demos: a pool of 1,203 samples, 594 held out for testing);
- model: `lightning_al.models.MLPClassifier` with the demo's defaults (64 → 128 → 128 → 10, dropout 0.25
  after each hidden layer), Adam with its lr 1e-3 and weight decay 1e-4, batch 32, cross-entropy;
- every fit runs exactly ``--steps`` (300) optimiser steps from the same initial weights (drawn with
  ``torch.manual_seed(seed)``, identical for the three implementations) and with a fresh Adam;
- 20 initial labels (the same ids for the three: the first 20 of ``torch.randperm`` seeded with ``seed``,
  the datamodule's own rule) + 10 per round for ``--rounds`` (25) rounds, so 26 fits; test accuracy after
  every fit; one torch thread;
- strategies: Random, Entropy (max predictive entropy of the softmax) and BALD with T = 20 MC-dropout
  passes (mutual information ``H[mean_t p_t] - mean_t H[p_t]``, independent masks per pass and sample);
- runs interleaved (for seed: for strategy: for implementation) after one tiny warm-up run of each
  implementation, so machine noise and first-use costs spread evenly.

The implementations:

1. **lightning_al**, as a user writes it: ``ActiveDataModule(pool, test_set=test, initial_labelled=20,
   batch_size=32, min_steps_per_epoch=300, seed=seed)`` and ``ActiveLearningLoop(strategy, query_size=10,
   rounds=25, trainer_kwargs=dict(max_epochs=1, accelerator="cpu"), seed=seed, progress=False)``: one
   epoch of 300 full batches per fit (the labelled set repeated in fresh shuffles). ``al.strategies.Random()``,
   ``al.strategies.Entropy()``, ``al.strategies.BALD(estimator=al.estimators.MCDropout(mc_samples=20))``
   (independent masks, as the other two implementations draw; BALD's default estimator would use
   consistent masks). No ``output_dir``: nothing is written to disk.
2. **plain**: the loop a competent engineer writes over in-memory tensors, with manual index batching: the
   labelled ids in fresh ``torch.randperm`` shuffles, concatenated and cut into 300 batches of 32 (the
   same scheme as the datamodule: every batch full, no sample twice more often than another), ``x[idx]``,
   ``zero_grad / backward / step``; scoring is one ``model.eval()`` forward over the whole unlabelled pool
   (BALD: the dropout layers back in train mode and 20 forwards), then ``topk``; Random is a seeded
   ``randperm``; test accuracy is one forward over the test set. Each fit seeds the global generator with
   ``seed + round`` (as the loop does), draws the one int64 a ``DataLoader`` iterator draws for its workers'
   base seed, and shuffles with a generator seeded like the datamodule's (``seed * 1_000_003 + n``). So its
   training consumes randomness exactly as lightning_al's does, and the two fit identical weights: their
   Random and Entropy selections and all their curves are then the same (the table says so per strategy;
   BALD differs by its mask generator). Their time ratio is then the library's overhead alone.
3. **lightning**: the plain loop with each fit run by Lightning's ``Trainer.fit`` instead (the same
   `MLPClassifier` as a LightningModule, a quiet Trainer, a ``DataLoader`` over the same batches gathered
   whole): the floor of any library that trains the user's LightningModule with ``Trainer.fit``, so that
   ``lightning_al ÷ lightning`` is the library's own cost and ``lightning ÷ plain`` Lightning's.
4. **baal** (when installed; ``pip install --no-deps baal structlog``; never a dependency of the package):
   ``ActiveLearningDataset`` (initial labels via its ``labelled`` mask), ``ModelWrapper`` with
   ``TrainingArgs(batch_size=32, workers=0, use_cuda=False)``, ``train_on_dataset`` with ``epoch`` set each
   round to ``round(300 / ceil(n / 32))`` (baal trains in whole epochs whose last batch is partial, so a fit
   runs 297 to 304 steps rather than exactly 300: the table reports its total), a fresh Adam each round,
   ``baal.active.ActiveLearningLoop(...).step()`` with ``predict_on_dataset`` (``iterations=20`` for BALD on
   an ``MCDropoutModule``, 1 for Entropy, none for Random) and its heuristics ``Random(seed=seed)``,
   ``Entropy()``, ``BALD()``. Test accuracy is the argmax of ``predict_on_dataset`` over the test set
   (for BALD, of the mean softmax of 20 passes, since baal's patched dropout stays on at test time).

Reported per implementation × strategy: the whole experiment's wall time (from building the datamodule or
model to the last round; fastest and median over seeds) and its ratio to the plain loop's; the area under
the test-accuracy curve (trapezoid over the label counts divided by their span: the mean accuracy over the
labelling range); a per-round breakdown (train, test, score, select and the rest of the round: lightning_al
from its history rows' ``train_seconds``, ``test_seconds``, ``score_seconds``, ``select_seconds``, the same
phases timed in the plain and baal loops); the sha1 of every round's selected dataset ids (sorted per round)
per strategy and seed, so that later changes to the library can be checked to select the same samples; and
whether two lightning_al runs with the same seed select and measure identically (determinism).

Run: ``python -m benchmarks.experiment [--seeds 2] [--rounds 25] [--steps 300] [--strategies Random Entropy
BALD] [--impls lightning_al plain baal] [--quick] [--profile ARM]``. ``--quick`` is 1 seed, 2 rounds, 10
steps. ``--profile Entropy`` runs one lightning_al Entropy experiment (seed 0) under cProfile and prints its
top 30 functions by cumulative and by own time and its total calls, beside the plain loop's total calls.
The full run takes about 4 minutes on 2 CPU cores; timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import hashlib
import io
import json
import logging
import pstats
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.suite import SuiteRow

ARMS = ("Random", "Entropy", "BALD")
IMPLS = ("lightning_al", "lightning", "plain", "baal")
REFERENCE = "plain"
PHASES = ("train", "test", "score", "select", "rest")
# Warnings that Lightning repeats on every fit and predict call; they say nothing about the measurement.
_QUIET = (
    ".*LeafSpec.*",
    ".*does not have many workers.*",
    ".*predict returned None.*",
    ".*Converting a tensor with requires_grad=True to a scalar.*",  # baal's loss metric, every batch
)


@dataclass(frozen=True)
class Protocol:
    """One experiment's sizes: ``rounds`` queries of ``query_size`` after ``initial`` labels, ``steps`` per fit."""

    rounds: int = 25
    steps: int = 300
    initial: int = 20
    query_size: int = 10
    batch_size: int = 32
    mc_samples: int = 20
    hidden: int = 128  # the MLP's hidden width: 128 is the demos' model, wider ones cost more per step

    def __post_init__(self) -> None:
        for name in ("rounds", "steps", "initial", "query_size", "batch_size", "mc_samples", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected `{name}` to be an integer >= 1, but got {value!r}.")
        final = self.initial + self.rounds * self.query_size
        if self.steps * self.batch_size < final:
            raise ValueError(
                f"Expected `steps * batch_size` ({self.steps} * {self.batch_size}) to cover the final {final} labels "
                "(one epoch must hold them all, or lightning_al's epoch would run more steps), but it does not."
            )


QUICK = Protocol(rounds=2, steps=10)


@dataclass(frozen=True)
class RoundRecord:
    """One fit: its labelled count, test accuracy, phase seconds, optimiser steps and the ids it then selected."""

    num_labelled: int
    test_accuracy: float
    seconds: dict[str, float]
    steps: int
    selected: tuple[int, ...] = ()

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


@dataclass
class Run:
    """One implementation's whole experiment for one strategy and seed."""

    impl: str
    arm: str
    seed: int
    seconds: float
    rounds: list[RoundRecord] = field(default_factory=list)

    @property
    def accuracies(self) -> list[float]:
        return [r.test_accuracy for r in self.rounds]

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.rounds)

    def aulc(self) -> float:
        """Trapezoid area of test accuracy over the label counts, divided by their span (mean accuracy).

        The area is `benchmarks.curve_summary.area_under_curve`'s, ``sum_i (n_{i+1} - n_i)(a_i + a_{i+1}) / 2``.
        """
        n, a = [r.num_labelled for r in self.rounds], self.accuracies
        area = sum((n[i + 1] - n[i]) * (a[i] + a[i + 1]) / 2 for i in range(len(n) - 1))
        return area / (n[-1] - n[0])

    def selections(self) -> list[list[int]]:
        """Each round's selected dataset ids, sorted (the last fit selects nothing)."""
        return [sorted(r.selected) for r in self.rounds if r.selected]

    def selection_hash(self) -> str:
        return hashlib.sha1(json.dumps(self.selections()).encode()).hexdigest()


# ----- shared set-up -----------------------------------------------------------------------------
def digits() -> tuple[Any, Any]:
    """The demos' pool and test splits of scikit-learn's digits."""
    from lightning_al.datasets import Digits

    return Digits("pool"), Digits("test")


def initial_ids(pool_size: int, count: int, seed: int) -> Tensor:
    """The initial labelled ids: ``ActiveDataModule``'s rule (the first ``count`` of a seeded permutation)."""
    return torch.randperm(pool_size, generator=torch.Generator().manual_seed(seed))[:count]


def initial_model(seed: int, hidden: int = 128) -> Any:
    """The demo's `MLPClassifier` (``hidden`` wide), its weights drawn from ``torch.manual_seed(seed)``."""
    from lightning_al.models import MLPClassifier

    torch.manual_seed(seed)
    return MLPClassifier(in_features=64, num_classes=10, hidden=hidden)


def _adam(params: Iterator[nn.Parameter], hparams: Any) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=hparams.lr, weight_decay=hparams.weight_decay)


class _Clock:
    """Seconds since the last ``lap`` (or construction)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        spent, self.last = now - self.last, now
        return spent


def _phases(train: float, test: float, score: float, select: float, total: float) -> dict[str, float]:
    return {
        "train": train,
        "test": test,
        "score": score,
        "select": select,
        "rest": total - train - test - score - select,
    }


# ----- 1. lightning_al ---------------------------------------------------------------------------
def run_lightning_al(
    arm: str, seed: int, protocol: Protocol, data: tuple[Any, Any], callbacks: Sequence[Any] = ()
) -> Run:
    """The experiment through ``ActiveDataModule`` + ``ActiveLearningLoop``; ``callbacks`` go to every fit."""
    import lightning_al as al

    pool, test = data
    start = time.perf_counter()
    dm = al.ActiveDataModule(
        pool,
        test_set=test,
        initial_labelled=protocol.initial,
        batch_size=protocol.batch_size,
        min_steps_per_epoch=protocol.steps,
        seed=seed,
    )
    expected = initial_ids(len(pool), protocol.initial, seed).sort().values
    if not torch.equal(dm.labelled_ids, expected):
        raise RuntimeError("Expected the datamodule's initial labels to follow `initial_ids`; the rule has changed.")
    strategies = {
        "Random": al.strategies.Random,
        "Entropy": al.strategies.Entropy,
        "BALD": lambda: al.strategies.BALD(estimator=al.estimators.MCDropout(mc_samples=protocol.mc_samples)),
    }
    loop = al.ActiveLearningLoop(
        strategy=strategies[arm](),
        query_size=protocol.query_size,
        rounds=protocol.rounds,
        trainer_kwargs=dict(max_epochs=1, accelerator="cpu", callbacks=list(callbacks)),
        seed=seed,
        progress=False,
    )
    spans: list[float] = []
    clock = _Clock()
    clock.last = start
    history = loop.run(initial_model(seed, protocol.hidden), dm, on_round_end=lambda row: spans.append(clock.lap()))
    seconds = time.perf_counter() - start
    rounds = []
    for row, span in zip(history, spans, strict=True):
        timed = [row.get(f"{phase}_seconds", 0.0) for phase in ("train", "test", "score", "select")]
        n = int(row["num_labelled"])
        rounds.append(
            RoundRecord(
                num_labelled=n,
                test_accuracy=float(row["test_accuracy"]),
                seconds=_phases(*timed, span),
                # One epoch of max(steps, ceil(n / batch)) full batches (min_steps_per_epoch); the tests count them.
                steps=max(protocol.steps, -(-n // protocol.batch_size)),
                selected=tuple(row.get("selected_ids", ())),
            )
        )
    return Run("lightning_al", arm, seed, seconds, rounds)


# ----- 2. the plain PyTorch loop -----------------------------------------------------------------
def _shuffled_batches(n: int, steps: int, batch_size: int, generator: torch.Generator) -> Tensor:
    """``(steps, batch_size)`` positions in ``0..n-1``: fresh permutations, concatenated and cut into batches."""
    repeats = -(-steps * batch_size // n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(repeats)])
    return order[: steps * batch_size].view(steps, batch_size)


def _pool_scores(net: nn.Module, x: Tensor, arm: str, mc_samples: int) -> Tensor:
    """Entropy of the softmax, or BALD's mutual information over ``mc_samples`` dropout passes (higher first)."""
    net.eval()
    if arm == "Entropy":
        return torch.special.entr(net(x).softmax(-1)).sum(-1)
    for module in net.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    probs_T_N_C = torch.stack([net(x).softmax(-1) for _ in range(mc_samples)])
    net.eval()
    mean_entropy = torch.special.entr(probs_T_N_C).sum(-1).mean(0)
    return torch.special.entr(probs_T_N_C.mean(0)).sum(-1) - mean_entropy


class _GatheredBatches(torch.utils.data.TensorDataset):
    """A ``TensorDataset`` whose batches are gathered whole (``x[idx]``), as the plain loop batches."""

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        index = torch.tensor(indices)
        return tuple(tensor[index] for tensor in self.tensors)


def _fit_with_trainer(model: Any, x: Tensor, y: Tensor, batches: Tensor) -> None:
    """``Trainer.fit`` of the LightningModule ``model`` over exactly ``batches`` (rows of positions in ``x``, ``y``)."""
    import pytorch_lightning as pl

    from lightning_al.trainer_args import quiet_banners

    loader = torch.utils.data.DataLoader(
        _GatheredBatches(x, y), batch_sampler=batches.tolist(), collate_fn=lambda batch: list(batch)
    )
    with quiet_banners():  # the per-fit banners, as the loop silences them
        trainer = pl.Trainer(
            max_epochs=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
        )
        trainer.fit(model, train_dataloaders=loader)


def run_lightning(arm: str, seed: int, protocol: Protocol, data: tuple[Any, Any]) -> Run:
    """The plain loop with its fits run by Lightning's ``Trainer.fit``: the floor of any library built on it."""
    return replace(run_plain(arm, seed, protocol, data, trainer_fit=True), impl="lightning")


def run_plain(
    arm: str,
    seed: int,
    protocol: Protocol,
    data: tuple[Any, Any],
    on_select: Callable[[nn.Module, Tensor, Tensor], None] | None = None,
    trainer_fit: bool = False,
) -> Run:
    """The experiment as a plain PyTorch loop; ``on_select(net, unlabelled_ids, picked_ids)`` sees every query.

    With ``trainer_fit``, each fit is ``Trainer.fit`` of the `MLPClassifier` over the same batches instead.
    """
    pool, test = data
    start = time.perf_counter()
    x_pool, y_pool = pool.tensors
    x_test, y_test = test.tensors
    model = initial_model(seed, protocol.hidden)
    net, hparams = model.net, model.hparams
    init = copy.deepcopy(net.state_dict())
    labelled = torch.zeros(len(pool), dtype=torch.bool)
    labelled[initial_ids(len(pool), protocol.initial, seed)] = True
    picker = torch.Generator().manual_seed(seed)
    rounds = []
    clock = _Clock()
    clock.last = start
    for r in range(protocol.rounds + 1):
        ids = labelled.nonzero().flatten()
        net.load_state_dict(init)
        optimizer = _adam(net.parameters(), hparams)
        torch.manual_seed(seed + r)  # dropout during training
        shuffles = torch.Generator().manual_seed(seed * 1_000_003 + ids.numel())
        x, y = x_pool[ids], y_pool[ids]
        batches = _shuffled_batches(ids.numel(), protocol.steps, protocol.batch_size, shuffles)
        if trainer_fit:  # its DataLoader iterator draws the one int64 below itself
            model.train()  # Lightning keeps modules in the mode the fit finds them in (eval after the test)
            _fit_with_trainer(model, x, y, batches)
        else:
            # The one int64 that a DataLoader iterator draws from the global generator (its workers' base seed):
            # drawn here too, the training dropout masks match lightning_al's draw for draw (see the docstring).
            torch.empty((), dtype=torch.int64).random_()
            net.train()
            for batch in batches:
                loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        train = clock.lap()
        net.eval()
        with torch.inference_mode():
            accuracy = float((net(x_test).argmax(-1) == y_test).float().mean())
        test_seconds = clock.lap()
        score = select = 0.0
        picked = torch.empty(0, dtype=torch.long)
        if r < protocol.rounds:
            unlabelled = (~labelled).nonzero().flatten()
            if arm == "Random":
                picked = unlabelled[torch.randperm(unlabelled.numel(), generator=picker)[: protocol.query_size]]
                select = clock.lap()
            else:
                with torch.inference_mode():
                    scores = _pool_scores(net, x_pool[unlabelled], arm, protocol.mc_samples)
                score = clock.lap()
                picked = unlabelled[scores.topk(protocol.query_size).indices]
                select = clock.lap()
            if on_select is not None:
                on_select(net, unlabelled, picked)
            labelled[picked] = True
        total = train + test_seconds + score + select + clock.lap()
        rounds.append(
            RoundRecord(
                num_labelled=ids.numel(),
                test_accuracy=accuracy,
                seconds=_phases(train, test_seconds, score, select, total),
                steps=protocol.steps,
                selected=tuple(picked.tolist()),
            )
        )
    return Run("plain", arm, seed, time.perf_counter() - start, rounds)


# ----- 3. baal -----------------------------------------------------------------------------------
def baal_missing() -> str | None:
    """None when baal imports, else why not (the benchmark then skips it)."""
    try:
        import baal.active
        import baal.bayesian.dropout
        import baal.modelwrapper  # noqa: F401
    except ImportError as error:
        return f"{type(error).__name__}: {error}"
    return None


def _quiet_baal() -> None:
    """baal logs every train, test and predict call through structlog at info level: keep warnings only."""
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def run_baal(arm: str, seed: int, protocol: Protocol, data: tuple[Any, Any]) -> Run:
    """The experiment through baal's own API (see the module docstring for its settings)."""
    import numpy as np
    from baal.active import ActiveLearningDataset, ActiveLearningLoop, heuristics
    from baal.bayesian.dropout import MCDropoutModule
    from baal.modelwrapper import ModelWrapper, TrainingArgs

    _quiet_baal()
    pool, test = data
    start = time.perf_counter()
    np.random.seed(seed)
    mask = np.zeros(len(pool), dtype=int)
    mask[initial_ids(len(pool), protocol.initial, seed).numpy()] = 1
    active_set = ActiveLearningDataset(pool, labelled=mask, random_state=seed)
    model = initial_model(seed, protocol.hidden)
    net: nn.Module = MCDropoutModule(model.net) if arm == "BALD" else model.net
    iterations = protocol.mc_samples if arm == "BALD" else 1
    init = copy.deepcopy(net.state_dict())
    args = TrainingArgs(
        batch_size=protocol.batch_size, use_cuda=False, workers=0, criterion=nn.CrossEntropyLoss(), epoch=1
    )
    wrapper = ModelWrapper(net, args)
    heuristic = {"Random": lambda: heuristics.Random(seed=seed), "Entropy": heuristics.Entropy, "BALD": heuristics.BALD}
    scored = [0.0]

    def probabilities(dataset: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        out = wrapper.predict_on_dataset(dataset, **kwargs)
        scored[0] += time.perf_counter() - began
        return out

    loop = ActiveLearningLoop(
        active_set,
        probabilities,
        heuristic[arm](),
        query_size=protocol.query_size,
        iterations=iterations,
        verbose=False,
    )
    y_test = test.tensors[1].numpy()
    rounds = []
    clock = _Clock()
    clock.last = start
    for r in range(protocol.rounds + 1):
        n = len(active_set)
        wrapper.load_state_dict(init)
        args.optimizer = _adam(net.parameters(), model.hparams)
        per_epoch = -(-n // protocol.batch_size)
        args.epoch = max(1, round(protocol.steps / per_epoch))
        torch.manual_seed(seed + r)
        wrapper.train_on_dataset(active_set)
        train = clock.lap()
        logits_N_C_T = wrapper.predict_on_dataset(test, iterations=iterations, verbose=False)
        probs_N_C = torch.from_numpy(logits_N_C_T).softmax(1).mean(-1)
        accuracy = float((probs_N_C.argmax(-1).numpy() == y_test).mean())
        test_seconds = clock.lap()
        score = select = 0.0
        picked: tuple[int, ...] = ()
        if r < protocol.rounds:
            before = active_set.labelled_map.copy()
            scored[0] = 0.0
            loop.step()
            step = clock.lap()
            score, select = scored[0], step - scored[0]
            picked = tuple(np.flatnonzero(active_set.labelled_map != before).tolist())
        total = train + test_seconds + score + select + clock.lap()
        rounds.append(
            RoundRecord(n, accuracy, _phases(train, test_seconds, score, select, total), args.epoch * per_epoch, picked)
        )
    return Run("baal", arm, seed, time.perf_counter() - start, rounds)


RUNNERS: dict[str, Callable[[str, int, Protocol, tuple[Any, Any]], Run]] = {
    "lightning_al": run_lightning_al,
    "lightning": run_lightning,
    "plain": run_plain,
    "baal": run_baal,
}


# ----- the experiment ----------------------------------------------------------------------------
@dataclass
class Results:
    """Every run, the lightning_al repeats of the first seed (determinism), and the implementations skipped."""

    protocol: Protocol
    runs: list[Run]
    repeats: list[Run]
    skipped: dict[str, str]
    seconds: float

    def of(self, impl: str, arm: str) -> list[Run]:
        return [run for run in self.runs if run.impl == impl and run.arm == arm]

    def deterministic(self) -> dict[str, bool]:
        """Per strategy: the repeat selected the same ids in the same order and measured the same accuracies."""
        verdict = {}
        for repeat in self.repeats:
            first = next(r for r in self.runs if (r.impl, r.arm, r.seed) == (repeat.impl, repeat.arm, repeat.seed))
            same_ids = [r.selected for r in first.rounds] == [r.selected for r in repeat.rounds]
            verdict[repeat.arm] = same_ids and first.accuracies == repeat.accuracies
        return verdict


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            for message in _QUIET:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        torch.set_num_threads(threads)


def experiment(
    protocol: Protocol = Protocol(),
    seeds: Sequence[int] = (0, 1),
    arms: Sequence[str] = ARMS,
    impls: Sequence[str] = IMPLS,
    determinism: bool = True,
    log: Callable[[str], None] | None = None,
) -> Results:
    """Run every (seed, strategy, implementation), interleaved, on one thread; repeat lightning_al's first seed."""
    for name, values, known in (("arms", arms, ARMS), ("impls", impls, IMPLS)):
        unknown = [value for value in values if value not in known]
        if unknown or not values:
            raise ValueError(f"Expected `{name}` to be a non-empty subset of {list(known)}, but got {list(values)}.")
    skipped = {}
    if "baal" in impls and (reason := baal_missing()) is not None:
        skipped["baal"] = reason
    active = [impl for impl in impls if impl not in skipped]
    data = digits()
    started = time.perf_counter()
    runs, repeats = [], []
    with _one_thread():
        warm = Protocol(rounds=1, steps=5, initial=protocol.initial, query_size=protocol.query_size)
        for impl in active:  # first use of Lightning, torch kernels, baal: outside the timings
            RUNNERS[impl](arms[-1], 0, warm, data)
        for seed in seeds:
            for arm in arms:
                for impl in active:
                    run = RUNNERS[impl](arm, seed, protocol, data)
                    runs.append(run)
                    if log is not None:
                        log(f"seed {seed} {arm:<8} {impl:<13} {run.seconds:7.2f} s  AULC {run.aulc():.4f}")
                if determinism and seed == seeds[0] and "lightning_al" in active:
                    repeats.append(run_lightning_al(arm, seed, protocol, data))
    return Results(protocol, runs, repeats, skipped, time.perf_counter() - started)


# ----- reporting ---------------------------------------------------------------------------------
def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}" if reference else "—"


def summary_table(results: Results) -> str:
    """Wall time (fastest, median) and ratio to the plain loop, steps, AULC and final accuracy per impl × arm."""
    lines = [
        "| implementation | strategy | fastest s | median s | × plain (fastest) | × plain (median) | steps/run "
        "| AULC (mean acc.) | final acc. | picks = plain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    arms = list(dict.fromkeys(run.arm for run in results.runs))
    impls = list(dict.fromkeys(run.impl for run in results.runs))
    for arm in arms:
        plain = results.of(REFERENCE, arm)
        ref_fast = min(r.seconds for r in plain) if plain else None
        ref_median = statistics.median(r.seconds for r in plain) if plain else None
        for impl in impls:
            runs = results.of(impl, arm)
            seconds = [r.seconds for r in runs]
            fast, median = min(seconds), statistics.median(seconds)
            aulc = statistics.mean(r.aulc() for r in runs)
            final = statistics.mean(r.accuracies[-1] for r in runs)
            steps = statistics.mean(r.steps for r in runs)
            plain_hash = {r.seed: r.selection_hash() for r in plain}
            same = sum(r.selection_hash() == plain_hash.get(r.seed) for r in runs)
            lines.append(
                f"| {impl} | {arm} | {fast:.2f} | {median:.2f} | {_ratio(fast, ref_fast)} | "
                f"{_ratio(median, ref_median)} | {steps:.0f} | {aulc:.4f} | {final:.4f} | {same}/{len(runs)} seeds |"
            )
    return "\n".join(lines)


def breakdown_table(results: Results) -> str:
    """Mean seconds per round of each phase (over every round of every seed), and the training ms per step."""
    lines = [
        "| implementation | strategy | train | (ms/step) | test | score | select | rest | round |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in dict.fromkeys(run.arm for run in results.runs):
        for impl in dict.fromkeys(run.impl for run in results.runs):
            rounds = [r for run in results.of(impl, arm) for r in run.rounds]
            mean = {phase: statistics.mean(r.seconds[phase] for r in rounds) for phase in PHASES}
            per_step = 1000 * sum(r.seconds["train"] for r in rounds) / sum(r.steps for r in rounds)
            cells = " | ".join(f"{mean[phase]:.4f}" for phase in PHASES[1:])
            total = statistics.mean(r.total for r in rounds)
            lines.append(f"| {impl} | {arm} | {mean['train']:.4f} | {per_step:.3f} | {cells} | {total:.4f} |")
    return "\n".join(lines)


def hash_table(results: Results) -> str:
    """The sha1 (first 12 hex digits) of every round's sorted selected ids, per impl × strategy × seed."""
    seeds = list(dict.fromkeys(run.seed for run in results.runs))
    lines = ["| implementation | strategy | " + " | ".join(f"seed {s}" for s in seeds) + " |"]
    lines.append("|---|---|" + "---|" * len(seeds))
    for arm in dict.fromkeys(run.arm for run in results.runs):
        for impl in dict.fromkeys(run.impl for run in results.runs):
            by_seed = {run.seed: run.selection_hash()[:12] for run in results.of(impl, arm)}
            lines.append(f"| {impl} | {arm} | " + " | ".join(by_seed.get(s, "—") for s in seeds) + " |")
    return "\n".join(lines)


def report(results: Results) -> str:
    p = results.protocol
    seeds = sorted({run.seed for run in results.runs})
    head = [
        f"Digits experiment: {p.initial} initial labels + {p.query_size} x {p.rounds} rounds ({p.rounds + 1} fits), "
        f"{p.steps} Adam steps of batch {p.batch_size} per fit, MLP 64-{p.hidden}-{p.hidden}-10, "
        f"BALD T={p.mc_samples}, "
        f"seeds {seeds}, 1 torch thread; "
        f"{results.seconds:.0f} s in all.",
    ]
    head += [f"skipped {impl}: {reason}" for impl, reason in results.skipped.items()]
    parts = ["\n".join(head), "## Whole experiment", summary_table(results)]
    parts += ["## Mean seconds per round (every round of every seed)", breakdown_table(results)]
    parts += ["## Selected ids, sha1 of every round's sorted ids", hash_table(results)]
    verdict = results.deterministic()
    if verdict:
        cells = ", ".join(f"{arm}: {'identical' if same else 'DIFFERENT'}" for arm, same in verdict.items())
        parts.append(f"lightning_al determinism (seed {seeds[0]} run twice, selections and accuracies): {cells}")
    return "\n\n".join(parts)


def suite_rows(quick: bool = False) -> list[SuiteRow]:
    """One row per impl × strategy: the fastest whole experiment, against the plain loop's (no determinism repeat)."""
    protocol, seeds = (QUICK, (0,)) if quick else (Protocol(), (0, 1))
    return suite_rows_of(experiment(protocol, seeds=seeds, determinism=False))


# ----- profile -----------------------------------------------------------------------------------
def _stats_text(profile: cProfile.Profile, sort: str, limit: int) -> str:
    stream = io.StringIO()
    pstats.Stats(profile, stream=stream).sort_stats(sort).print_stats(limit)
    text = stream.getvalue()
    for prefix in sorted({p for p in sys.path if p.endswith("site-packages")}, key=len, reverse=True):
        text = text.replace(prefix + "/", "")
    return text


def profile(arm: str, protocol: Protocol, limit: int = 30) -> str:
    """cProfile of one lightning_al experiment (seed 0): top ``limit`` by cumulative and own time, total calls."""
    data = digits()
    texts = []
    with _one_thread():
        for impl in ("lightning_al", "plain"):
            RUNNERS[impl](arm, 0, replace(protocol, rounds=1, steps=5), data)  # warm-up
        calls = {}
        for impl in ("lightning_al", "plain"):
            profiler = cProfile.Profile()
            profiler.enable()
            run = RUNNERS[impl](arm, 0, protocol, data)
            profiler.disable()
            stats = pstats.Stats(profiler)
            calls[impl] = (stats.total_calls, run.seconds, run.steps)  # type: ignore[attr-defined]
            if impl == "lightning_al":
                texts.append(f"## lightning_al {arm}: top {limit} by cumulative time\n")
                texts.append(_stats_text(profiler, "cumulative", limit))
                texts.append(f"## lightning_al {arm}: top {limit} by own time (tottime)\n")
                texts.append(_stats_text(profiler, "tottime", limit))
    for impl, (count, seconds, steps) in calls.items():
        texts.append(
            f"{impl}: {count:,} function calls in {seconds:.2f} s (profiled), {steps} optimiser steps, "
            f"{count / steps:,.0f} calls per step"
        )
    return "\n".join(texts)


def main(argv: list[str] | None = None) -> list[SuiteRow]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..S-1")
    parser.add_argument("--rounds", type=int, default=None, help="queries (default 25; --quick: 2)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per fit (default 300; --quick: 10)")
    parser.add_argument("--hidden", type=int, default=128, help="the MLP's hidden width (the demos' model: 128)")
    parser.add_argument("--strategies", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 rounds, 10 steps: checks that it all runs")
    parser.add_argument("--no-determinism", action="store_true", help="skip the repeated lightning_al runs")
    parser.add_argument("--profile", choices=ARMS, help="profile one lightning_al run of this strategy instead")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    base = QUICK if args.quick else Protocol()
    try:
        protocol = replace(
            base,
            rounds=args.rounds if args.rounds is not None else base.rounds,
            steps=args.steps if args.steps is not None else base.steps,
            hidden=args.hidden,
        )
    except ValueError as error:
        parser.error(str(error))
    if args.profile is not None:
        print(profile(args.profile, protocol))
        return []
    seeds = range(1 if args.quick else args.seeds)
    if "baal" in args.impls and (reason := baal_missing()) is not None:
        print(f"baal is not importable, skipped ({reason})", flush=True)
    results = experiment(
        protocol, seeds, args.strategies, args.impls, not args.no_determinism, log=lambda s: print(s, flush=True)
    )
    print("\n" + report(results))
    return suite_rows_of(results)


def suite_rows_of(results: Results) -> list[SuiteRow]:
    """The suite's rows of measured ``results`` (the fastest run per impl × strategy against the plain loop's)."""
    p = results.protocol
    seeds = len({run.seed for run in results.runs})
    benchmark = f"digits experiment, MLP hidden {p.hidden}, {p.rounds + 1} fits x {p.steps} steps, {seeds} seed(s)"
    rows = []
    for arm in dict.fromkeys(run.arm for run in results.runs):
        plain = results.of(REFERENCE, arm)
        reference = min(r.seconds for r in plain) if plain else None
        impls = dict.fromkeys(run.impl for run in results.runs)
        for impl in sorted(impls, key=lambda name: name != REFERENCE):
            runs = results.of(impl, arm)
            fast = min(r.seconds for r in runs)
            note = (
                f"median {statistics.median(r.seconds for r in runs):.2f} s, "
                f"AULC {statistics.mean(r.aulc() for r in runs):.4f}"
            )
            if impl == REFERENCE or reference is None:
                rows.append(SuiteRow(benchmark, f"{impl} {arm}", fast, note=note))
            else:
                rows.append(SuiteRow(benchmark, f"{impl} {arm}", fast, f"{REFERENCE} {arm}", fast / reference, note))
    return rows


if __name__ == "__main__":
    main()
