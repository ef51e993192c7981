"""Time a training epoch with and without ``ForgettingCallback`` (or any other callbacks).

A small MLP (32 → 256 → 256 → 10) on 20,000 synthetic samples, all labelled except one
(``ActiveDataModule``, batch size 128, CPU, one intra-op thread by default: on a shared
machine, threads that wait on each other for busy cores slow some epochs down a hundredfold).
Every repeat fits once per setting (no callback, then each callback), the order rotating from
one repeat to the next, so that a change in the machine's load hits every setting alike; the
first epoch of every fit is a warm-up and the remaining epochs are timed, in wall-clock time
and in the CPU time of the process (which leaves out the time other processes take the cores).

Reported per setting, each as a ratio to the same figure without a callback: the fastest and
the median epoch in wall-clock time, the median epoch in CPU time, and the paired CPU ratio
(the median over repeats of the ratio of a fit's median epoch to that of the fit without a
callback in the same repeat, which cancels slow drifts). The verdict passes when the median and
the paired CPU overheads are at most ``--target``; the wall-clock figures are shown but not
judged, as other load on a shared machine moves them by a few percent either way.

Run: ``python -m benchmarks.callback_overhead [--n 20000] [--repeats 8] [--epochs 3] [--threads 1]
[--target 0.05]``; ``--callback module:Class`` (repeatable) times other callbacks, constructed
without arguments.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import statistics
import time
import warnings
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import TensorDataset

import lightning_al as al

BASELINE = "no callback"
DEFAULT_CALLBACK = "lightning_al.callbacks.forgetting:ForgettingCallback"


class MLP(pl.LightningModule):
    def __init__(self, in_features: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class EpochTimer(pl.Callback):
    """Wall-clock and CPU seconds of every training epoch."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


def synthetic(n: int, in_features: int = 32, num_classes: int = 10) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(num_classes, in_features, generator=g) * 2
    y = torch.randint(0, num_classes, (n,), generator=g)
    return TensorDataset(centres[y] + torch.randn(n, in_features, generator=g), y)


def callback_factory(spec: str) -> Callable[[], pl.Callback]:
    """The class named by ``module:Class``."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"Expected `--callback` as module:Class, but got {spec!r}.")
    return getattr(importlib.import_module(module), name)


def epoch_seconds(data: TensorDataset, epochs: int, callback: pl.Callback | None) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds of each epoch after the first (a warm-up)."""
    dm = al.ActiveDataModule(data, initial_labelled=len(data) - 1, batch_size=128, seed=0)
    timer = EpochTimer()
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=epochs + 1,
        accelerator="cpu",
        callbacks=[timer] if callback is None else [timer, callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(MLP(), datamodule=dm)
    return timer.wall[1:], timer.cpu[1:]


def rotated(items: list[str], shift: int) -> list[str]:
    shift %= len(items)
    return items[shift:] + items[:shift]


def flat(fits: list[list[float]]) -> list[float]:
    return [t for fit in fits for t in fit]


def figures(wall: list[list[float]], cpu: list[list[float]], base_cpu: list[list[float]]) -> dict[str, float]:
    """Wall min and median, CPU median (seconds per epoch) and the paired CPU ratio of one setting's fits."""
    return {
        "wall min": min(flat(wall)),
        "wall median": statistics.median(flat(wall)),
        "CPU median": statistics.median(flat(cpu)),
        "CPU paired": statistics.median(
            statistics.median(fit) / statistics.median(base) for fit, base in zip(cpu, base_cpu, strict=True)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=8, help="fits per setting")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per fit (after one warm-up epoch)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--target", type=float, default=0.05, help="largest acceptable overhead (0.05 = 5%%)")
    parser.add_argument("--callback", action="append", help=f"module:Class to time (default {DEFAULT_CALLBACK})")
    args = parser.parse_args()
    factories = {spec: callback_factory(spec) for spec in args.callback or [DEFAULT_CALLBACK]}
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")

    data = synthetic(args.n)
    settings = [BASELINE, *factories]
    wall: dict[str, list[list[float]]] = {name: [] for name in settings}  # timed epochs of every fit
    cpu: dict[str, list[list[float]]] = {name: [] for name in settings}
    for repeat in range(args.repeats):
        for name in rotated(settings, repeat):
            fit_wall, fit_cpu = epoch_seconds(data, args.epochs, None if name == BASELINE else factories[name]())
            wall[name].append(fit_wall)
            cpu[name].append(fit_cpu)
    result = {name: figures(wall[name], cpu[name], cpu[BASELINE]) for name in settings}

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, n={args.n}, batch 128, CPU")
    print(f"{args.repeats} fits per setting, {args.epochs} timed epochs each ({len(flat(wall[BASELINE]))} epochs)")
    width = max(map(len, settings))
    for name in settings:
        seconds = ", ".join(f"{k} {v:.3f} s" for k, v in result[name].items() if k != "CPU paired")
        print(f"{name:>{width}}: {seconds}")
    for name in settings:
        print(f"{name:>{width}}: wall epochs {[round(t, 3) for t in flat(wall[name])]}")
    for name in factories:
        ratio = {k: v / result[BASELINE][k] for k, v in result[name].items() if k != "CPU paired"}
        ratio["CPU paired"] = result[name]["CPU paired"]
        verdict = "PASS" if max(ratio["CPU median"], ratio["CPU paired"]) - 1 <= args.target else "FAIL"
        overheads = ", ".join(f"{k} {100 * (r - 1):+.1f}% ({r:.3f})" for k, r in ratio.items())
        print(f"{verdict} {name}: overhead {overheads}; judged on CPU median and paired, target <= {args.target:.0%}")


if __name__ == "__main__":
    main()
