"""Time the active-learning loop's per-round overhead: everything in a round but the fit and the pool scoring.

A synthetic pool (``N`` samples of 784 features around 10 class centres, a ``TensorDataset``) with a test
set of ``N / 10`` samples behind an :class:`~lightning_al.ActiveDataModule` (training batch 64, evaluation
batch 1024); the model is the scoring benchmark's MLP 784→512→512→10 (:class:`benchmarks.scoring.PoolMLP`)
trained with SGD. The loop runs Entropy with query size ``k`` for ``--rounds`` queries, ``--epochs``
epochs per fit, progress off, a quiet Trainer (no logger, checkpoints, bar or summary) and an
``output_dir`` in a temporary directory, so the resumable ``state.pt`` and ``history.json`` are written
every round as in a real run.

A round runs from the end of the previous one (the loop's ``on_round_end`` call; the first from the call
to ``run``) to its own ``on_round_end`` call. Its parts are the loop's timings in the round's history row:

- **fit**: ``train_seconds`` (seeding, the fit Trainer's construction, ``Trainer.fit``); of which the
  training epochs alone are timed by a callback, the rest being Lightning's setup and teardown;
- **scoring**: ``score_seconds`` (an evaluation Trainer and the pool's forward passes with the running top k);
- **test**: ``test_seconds``, **selection**: ``select_seconds``;
- **bookkeeping**: the rest of the round (weight reset, labelling, state and history files, the row).

**Overhead** is everything but fit and scoring: test + selection + bookkeeping, as a share of the round.
The first round (Lightning's first use, the run's setup) is reported apart, as is the last row, which only
fits and tests the final labelled set; the headline is the mean of the rounds in between. The construction
of a ``Trainer`` (one a round, the fit's, counted inside fit; the passes share one per run) is also timed apart.

Run: ``python -m benchmarks.loop_overhead [--n 20000] [--rounds 4] [--query-size 100] [--epochs 1]
[--initial 1000] [--threads T] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import lightning_al as al
from benchmarks.scoring import CLASSES, FEATURES, PoolMLP, machine
from benchmarks.suite import SuiteRow

TRAIN_BATCH, EVAL_BATCH = 64, 1024
TOTAL = "loop round (total)"
TRAINERS = "Trainer construction (x1, inside fit; the passes share one per run)"
# Trainers the loop builds in a round: the fit's (the test and scoring passes share one Trainer per run).
TRAINERS_PER_ROUND = 1
# (name, what it covers) of each part of a round, in the order of the table.
PARTS = (
    ("fit", "train_seconds"),
    ("scoring", "score_seconds"),
    ("test", "test_seconds"),
    ("selection", "select_seconds"),
    ("bookkeeping", "the rest"),
)


class TrainedPoolMLP(PoolMLP):
    """:class:`~benchmarks.scoring.PoolMLP` with a cross-entropy training step and SGD (lr 0.05)."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class EpochClock(pl.Callback):
    """Wall-clock seconds spent inside the training epochs of each fit (one entry per fit)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(0.0)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds[-1] += time.perf_counter() - self._start


class RoundClock:
    """``on_round_end`` hook: the wall-clock span of every round, from the previous round's end (or ``start``)."""

    def __init__(self) -> None:
        self.spans: list[float] = []
        self._last = time.perf_counter()

    def start(self) -> None:
        self._last = time.perf_counter()

    def __call__(self, row: dict[str, Any]) -> None:
        now = time.perf_counter()
        self.spans.append(now - self._last)
        self._last = now


@dataclass(frozen=True)
class RoundBreakdown:
    """One round's wall-clock seconds and the parts the loop timed; ``bookkeeping`` is what is left."""

    total: float
    fit: float
    scoring: float
    test: float
    selection: float
    fit_epochs: float

    @classmethod
    def of(cls, row: dict[str, Any], span: float, fit_epochs: float) -> RoundBreakdown:
        """The breakdown of a history ``row`` whose round took ``span`` seconds (absent timings count 0)."""
        return cls(
            total=span,
            fit=row.get("train_seconds", 0.0),
            scoring=row.get("score_seconds", 0.0),
            test=row.get("test_seconds", 0.0),
            selection=row.get("select_seconds", 0.0),
            fit_epochs=fit_epochs,
        )

    @property
    def bookkeeping(self) -> float:
        return self.total - self.fit - self.scoring - self.test - self.selection

    @property
    def overhead(self) -> float:
        """Everything but fit and scoring: ``test + selection + bookkeeping``."""
        return self.total - self.fit - self.scoring

    def part(self, name: str) -> float:
        return getattr(self, name)

    @staticmethod
    def mean(rounds: list[RoundBreakdown]) -> RoundBreakdown:
        if not rounds:
            raise ValueError("Expected at least one round to average, but got none.")
        sums = [sum(values) / len(rounds) for values in zip(*(_fields(r) for r in rounds), strict=True)]
        return RoundBreakdown(*sums)


def _fields(r: RoundBreakdown) -> tuple[float, ...]:
    return r.total, r.fit, r.scoring, r.test, r.selection, r.fit_epochs


@dataclass
class LoopRun:
    """What one timed run of the loop recorded: its history, round spans and training-epoch seconds."""

    history: list[dict[str, Any]]
    spans: list[float]
    fit_epochs: list[float]
    run_seconds: float
    rounds: list[RoundBreakdown] = field(init=False)

    def __post_init__(self) -> None:
        if not len(self.history) == len(self.spans) == len(self.fit_epochs):
            raise ValueError(
                f"Expected one span and one fit per history row ({len(self.history)}), "
                f"but got {len(self.spans)} spans and {len(self.fit_epochs)} fits."
            )
        self.rounds = [RoundBreakdown.of(*r) for r in zip(self.history, self.spans, self.fit_epochs, strict=True)]

    @property
    def first(self) -> RoundBreakdown:
        return self.rounds[0]

    @property
    def steady(self) -> RoundBreakdown:
        """The mean of the rounds after the first that also scored and selected (the last row only fits)."""
        return RoundBreakdown.mean(self.rounds[1:-1])

    @property
    def final(self) -> RoundBreakdown:
        return self.rounds[-1]


def synthetic(n: int, seed: int) -> TensorDataset:
    """``n`` samples of 784 features: a class centre (labels ``i % 10``) plus unit Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, FEATURES, generator=generator)
    y = torch.arange(n) % CLASSES
    return TensorDataset(centres[y] + torch.randn(n, FEATURES, generator=generator), y)


def measure(
    n: int = 20_000,
    rounds: int = 4,
    query_size: int = 100,
    epochs: int = 1,
    initial_labelled: int = 1_000,
    seed: int = 0,
    output_dir: str | Path | None = None,
) -> LoopRun:
    """Run the loop once (Entropy, CPU) and return what it timed; a temporary ``output_dir`` if None."""
    for name, value, low in (("n", n, 1), ("rounds", rounds, 2), ("query_size", query_size, 1), ("epochs", epochs, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"Expected `{name}` to be an integer >= {low}, but got {value!r}.")
    if not isinstance(initial_labelled, int) or not 1 <= initial_labelled <= n - rounds * query_size:
        raise ValueError(
            f"Expected `initial_labelled` to be an integer in [1, n - rounds * query_size = {n - rounds * query_size}]"
            f", but got {initial_labelled!r}."
        )
    with tempfile.TemporaryDirectory(prefix="loop_overhead_") as scratch:
        run_dir = Path(output_dir) if output_dir is not None else Path(scratch)
        dm = al.ActiveDataModule(
            synthetic(n, seed),
            test_set=synthetic(max(1, n // 10), seed + 1),
            initial_labelled=initial_labelled,
            batch_size=TRAIN_BATCH,
            eval_batch_size=EVAL_BATCH,
            seed=seed,
        )
        torch.manual_seed(seed)
        model = TrainedPoolMLP()
        epoch_clock, round_clock = EpochClock(), RoundClock()
        loop = al.ActiveLearningLoop(
            al.strategies.Entropy(),
            query_size=query_size,
            rounds=rounds,
            trainer_kwargs=dict(
                max_epochs=epochs,
                accelerator="cpu",
                callbacks=[epoch_clock],
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            ),
            seed=seed,
            output_dir=str(run_dir),
            progress=False,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's pytree helper on newer torch
            round_clock.start()
            start = time.perf_counter()
            history = loop.run(model, dm, on_round_end=round_clock)
            run_seconds = time.perf_counter() - start
    return LoopRun(history, round_clock.spans, epoch_clock.seconds, run_seconds)


def trainer_construction_seconds(repeats: int = 5) -> float:
    """Median seconds to build a quiet one-device CPU ``Trainer``, as the loop does three times a round."""
    banners = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning_fabric")]
    levels = [logger.level for logger in banners]
    for logger in banners:
        logger.setLevel(logging.WARNING)
    seconds = []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            pl.Trainer(
                accelerator="cpu",
                devices=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            seconds.append(time.perf_counter() - start)
    finally:
        for logger, level in zip(banners, levels, strict=True):
            logger.setLevel(level)
    return statistics.median(seconds)


def table(run: LoopRun) -> str:
    """Mean seconds per round of each part, its share of the round, and the first round beside it."""
    steady, first = run.steady, run.first
    lines = [
        f"{'part':<40}{'s/round':>10}{'share':>9}{'first round':>14}{'share':>9}",
        f"{TOTAL:<40}{steady.total:>10.3f}{1:>9.1%}{first.total:>14.3f}{1:>9.1%}",
    ]
    for name, covers in PARTS:
        label = f"{name} ({covers})"
        lines.append(
            f"{label:<40}{steady.part(name):>10.3f}{steady.part(name) / steady.total:>9.1%}"
            f"{first.part(name):>14.3f}{first.part(name) / first.total:>9.1%}"
        )
    for label, of_steady, of_first in (
        ("  fit: training epochs", steady.fit_epochs, first.fit_epochs),
        ("  fit: Trainer setup and teardown", steady.fit - steady.fit_epochs, first.fit - first.fit_epochs),
        ("overhead (all but fit and scoring)", steady.overhead, first.overhead),
    ):
        lines.append(
            f"{label:<40}{of_steady:>10.3f}{of_steady / steady.total:>9.1%}{of_first:>14.3f}"
            f"{of_first / first.total:>9.1%}"
        )
    return "\n".join(lines)


def suite_rows(quick: bool = False) -> list[SuiteRow]:
    """The round's total (reference), then each part with its share of the round (mean of the steady rounds)."""
    n, rounds, initial = (2_000, 3, 200) if quick else (20_000, 4, 1_000)
    run = measure(n=n, rounds=rounds, initial_labelled=initial)
    steady, first = run.steady, run.first
    benchmark = f"loop round, N={n:,}, k=100, Entropy, 1 epoch"
    rows = [
        SuiteRow(
            benchmark,
            TOTAL,
            steady.total,
            note=f"mean of {len(run.rounds) - 2} rounds after the first; first round {first.total:.2f} s",
        )
    ]
    notes = {"fit": f"training epochs {steady.fit_epochs:.3f} s, the rest Trainer setup"}
    for name, covers in PARTS:
        seconds = steady.part(name)
        rows.append(
            SuiteRow(benchmark, f"{name} ({covers})", seconds, TOTAL, seconds / steady.total, notes.get(name, ""))
        )
    rows.append(
        SuiteRow(
            benchmark,
            "overhead (all but fit and scoring)",
            steady.overhead,
            TOTAL,
            steady.overhead / steady.total,
            "test + selection + bookkeeping",
        )
    )
    trainers = TRAINERS_PER_ROUND * trainer_construction_seconds()
    rows.append(SuiteRow(benchmark, TRAINERS, trainers, TOTAL, trainers / steady.total, "timed apart, median of 5"))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="pool size N")
    parser.add_argument("--rounds", type=int, default=4, help="queries (>= 2: the first round is a warm-up)")
    parser.add_argument("--query-size", type=int, default=100, help="k, samples labelled per round")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per round")
    parser.add_argument("--initial", type=int, default=1_000, help="samples labelled before the first round")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="also print the run's cProfile, by cumulative time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, low in (("n", 1), ("rounds", 2), ("query_size", 1), ("epochs", 1), ("initial", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.initial + args.rounds * args.query_size > args.n:
        parser.error(
            f"--initial + --rounds * --query-size must be at most --n ({args.n}), "
            f"got {args.initial} + {args.rounds} * {args.query_size}"
        )
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    run = measure(args.n, args.rounds, args.query_size, args.epochs, args.initial, args.seed)
    if profiler is not None:
        profiler.disable()
    steady = run.steady
    trainer = trainer_construction_seconds()
    print(
        f"Loop rounds: N={args.n} x {FEATURES} features, {CLASSES} classes, {args.initial} labelled at first, "
        f"k={args.query_size}, {args.rounds} queries, {args.epochs} epoch(s) per fit, Entropy"
    )
    print(f"model: {FEATURES}-512-512-{CLASSES} MLP (SGD), batch {TRAIN_BATCH}, evaluation batch {EVAL_BATCH}")
    print(f"machine: {machine()}")
    print(f"steady rounds: mean of rounds 2..{args.rounds} (round 1 is the warm-up; the last row only fits and tests)")
    print(table(run))
    print(
        f"final row (fit and test only): {run.final.total:.3f} s, of which bookkeeping {run.final.bookkeeping:.3f} s; "
        f"whole run {run.run_seconds:.2f} s"
    )
    print(f"per round (s): {[round(r.total, 3) for r in run.rounds]}")
    print(
        f"Trainer construction (timed apart, median of 5): {trainer * 1000:.1f} ms; the loop builds "
        f"{TRAINERS_PER_ROUND} a round (the fit's), {TRAINERS_PER_ROUND * trainer / steady.total:.1%} "
        "of the round, counted inside fit"
    )
    print(
        f"overhead (all but fit and scoring) / round: {steady.overhead / steady.total:.1%}; "
        f"bookkeeping alone: {steady.bookkeeping / steady.total:.1%}"
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
