"""Time a training epoch with and without ``ForgettingCallback``.

A small MLP (32 → 256 → 256 → 10) on 20,000 synthetic samples, all labelled except one
(``ActiveDataModule``, batch size 128, CPU). Runs with and without the callback alternate
so that a change in the machine's load hits both alike; the first epoch of every run is a
warm-up and the remaining epochs are timed.

Run: ``python -m benchmarks.callback_overhead [--n 20000] [--repeats 3] [--epochs 3]``.
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import TensorDataset

import lightning_al as al
from lightning_al.callbacks.forgetting import ForgettingCallback


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
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def synthetic(n: int, in_features: int = 32, num_classes: int = 10) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(num_classes, in_features, generator=g) * 2
    y = torch.randint(0, num_classes, (n,), generator=g)
    return TensorDataset(centres[y] + torch.randn(n, in_features, generator=g), y)


def epoch_seconds(data: TensorDataset, epochs: int, with_callback: bool) -> list[float]:
    """Seconds of each epoch after the first (a warm-up)."""
    dm = al.ActiveDataModule(data, initial_labelled=len(data) - 1, batch_size=128, seed=0)
    timer = EpochTimer()
    callbacks = [timer, ForgettingCallback()] if with_callback else [timer]
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=epochs + 1,
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(MLP(), datamodule=dm)
    return timer.seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per run (after one warm-up epoch)")
    args = parser.parse_args()
    data = synthetic(args.n)
    times: dict[bool, list[float]] = {False: [], True: []}
    for repeat in range(args.repeats):
        for with_callback in (False, True) if repeat % 2 == 0 else (True, False):
            times[with_callback] += epoch_seconds(data, args.epochs, with_callback)
    # the fastest epoch is the least disturbed by other load on the machine; the median is shown too
    base, forgetting = min(times[False]), min(times[True])
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, n={args.n}, batch 128, CPU")
    print(f"epochs timed per setting: {len(times[False])}")
    print(f"without ForgettingCallback: min epoch {base:.3f} s, median {median[False]:.3f} s")
    print(f"with    ForgettingCallback: min epoch {forgetting:.3f} s, median {median[True]:.3f} s")
    print(f"all epochs without: {[round(t, 3) for t in times[False]]}")
    print(f"all epochs with:    {[round(t, 3) for t in times[True]]}")
    ratio = forgetting / base
    print(f"ratio of min epochs with/without: {ratio:.3f}  (overhead {100 * (ratio - 1):+.1f}%)")


if __name__ == "__main__":
    main()
