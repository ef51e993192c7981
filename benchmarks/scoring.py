"""Time pool scoring through the loop's scoring path against one plain forward pass over the same pool.

The pool is synthetic (``N`` samples of 784 features, 10 classes) behind an
:class:`~lightning_al.ActiveDataModule`; the model is an MLP 784→512→512→10 with ReLU. Methods:

- **floor**: ``model(x)`` for every batch of the pool dataloader, in eval mode under
  ``torch.inference_mode`` (the physical floor: read the pool once, one forward);
- **forward only**: the same forward on batches already in memory (no dataloader), for reference;
- **Entropy**, **BALD** (``T`` MC-dropout passes, dropout in the head only, with fresh or consistent
  masks, or after every hidden layer) and **BADGE** (probabilities, embeddings and the k-means++
  selection), each through the loop's own scoring-and-selection step
  (``ActiveLearningLoop._score_and_select``), selection included.

Each method runs ``--repeats`` times, the methods taking turns, and the fastest run counts (the
machine may be shared). ``--million`` instead scores a pool of 1,000,000 samples (inputs generated
on the fly from a small table, so the data itself takes no memory) with Entropy and BALD (``T``
passes, head-only dropout) and reports the peak resident memory.

Run: ``python -m benchmarks.scoring [--n 200000] [--mc-samples 20] [--repeats 3] [--million]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

import lightning_al as al
from lightning_al.estimators.mc_dropout import MCDropout
from lightning_al.loop import ActiveLearningLoop

FEATURES, CLASSES, HIDDEN = 784, 10, 512


class PoolMLP(pl.LightningModule):
    """784→512→512→10 MLP with ReLU; dropout (p = 0.5) before the last layer, or after every hidden layer."""

    def __init__(self, dropout_everywhere: bool = False) -> None:
        super().__init__()
        hidden_dropout = [nn.Dropout(0.5)] if dropout_everywhere else []
        self.net = nn.Sequential(
            nn.Linear(FEATURES, HIDDEN),
            nn.ReLU(),
            *hidden_dropout,
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(HIDDEN, CLASSES),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class GeneratedPool(Dataset):
    """``size`` samples cycling through a fixed table of ``(4096, 784)`` random inputs; labels ``i % 10``."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.table = torch.randn(4096, FEATURES, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.table[index % self.table.shape[0]], index % CLASSES


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def scoring_step(strategy: al.strategies.Strategy, query_size: int) -> Callable[[nn.Module, Any], dict[str, Any]]:
    """The loop's scoring and selection for one round; returns the round's row."""
    loop = ActiveLearningLoop(strategy, query_size=query_size, trainer_kwargs=dict(accelerator="cpu"), progress=False)

    def run(model: nn.Module, dm: al.ActiveDataModule) -> dict[str, Any]:
        row: dict[str, Any] = {}
        loop._score_and_select(model, dm, query_size, row)
        return row

    return run


def plain_forward(model: nn.Module, dm: al.ActiveDataModule) -> None:
    model.eval()
    with torch.inference_mode():
        for batch in dm.pool_dataloader():
            model(dm.inputs(batch))


def best_times(methods: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` runs of each method, the methods taking turns (order reversed every run)."""
    best = dict.fromkeys(methods, float("inf"))
    order = list(methods)
    for repeat in range(repeats):
        for name in order if repeat % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            methods[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def machine() -> str:
    return f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), device cpu"


def compare(args: argparse.Namespace) -> None:
    x = torch.randn(args.n, FEATURES, generator=torch.Generator().manual_seed(args.seed))
    dm = al.ActiveDataModule(TensorDataset(x, torch.arange(args.n) % CLASSES), eval_batch_size=args.batch_size)
    torch.manual_seed(args.seed)
    head, everywhere = PoolMLP(), PoolMLP(dropout_everywhere=True)
    everywhere.load_state_dict(head.state_dict(), strict=False)
    batches = list(x.split(args.batch_size))
    T, k = args.mc_samples, args.query_size

    def forward_only() -> None:
        head.eval()
        with torch.inference_mode():
            for batch in batches:
                head(batch)

    entropy = scoring_step(al.strategies.Entropy(), k)
    bald_head = scoring_step(al.strategies.BALD(mc_samples=T), k)
    bald_consistent = scoring_step(al.strategies.BALD(estimator=MCDropout(T, consistent_masks=True)), k)
    bald_everywhere = scoring_step(al.strategies.BALD(mc_samples=T), k)
    badge = scoring_step(al.strategies.BADGE(), k)
    methods: dict[str, Callable[[], Any]] = {
        "floor: plain forward over the pool loader": lambda: plain_forward(head, dm),
        "forward only (batches in memory)": forward_only,
        "Entropy": lambda: entropy(head, dm),
        f"BALD, head-only dropout (T={T})": lambda: bald_head(head, dm),
        f"BALD, head-only, consistent masks (T={T})": lambda: bald_consistent(head, dm),
        f"BALD, dropout everywhere (T={T})": lambda: bald_everywhere(everywhere, dm),
        f"BADGE (k={k})": lambda: badge(head, dm),
    }
    if args.skip_everywhere:
        del methods[f"BALD, dropout everywhere (T={T})"]
    seconds = best_times(methods, args.repeats)
    floor = seconds["floor: plain forward over the pool loader"]
    print(f"Pool scoring: N={args.n} x {FEATURES} features, {CLASSES} classes, batch size {args.batch_size}, k={k}")
    print(f"model: {FEATURES}-{HIDDEN}-{HIDDEN}-{CLASSES} MLP (ReLU), dropout 0.5; best of {args.repeats} runs")
    print(f"machine: {machine()}")
    print(f"{'method':<48}{'seconds':>10}{'x floor':>10}{'samples/s':>12}")
    for name, value in seconds.items():
        print(f"{name:<48}{value:>10.2f}{value / floor:>10.2f}{args.n / value:>12.0f}")


def million(args: argparse.Namespace) -> None:
    n, T, k = 1_000_000, args.mc_samples, args.query_size
    dm = al.ActiveDataModule(GeneratedPool(n, args.seed), eval_batch_size=args.batch_size)
    torch.manual_seed(args.seed)
    model = PoolMLP()
    print(f"Streaming pool scoring: N={n} x {FEATURES} features, {CLASSES} classes, batch size {args.batch_size}")
    print(f"machine: {machine()}; peak RSS before scoring {peak_rss_mib():.0f} MiB")
    print(f"(the pool's MC samples alone would take N*T*C*4 bytes = {n * T * CLASSES * 4 / 2**20:.0f} MiB)")
    for name, strategy in (("Entropy", al.strategies.Entropy()), (f"BALD (T={T})", al.strategies.BALD(T))):
        start = time.perf_counter()
        row = scoring_step(strategy, k)(model, dm)
        seconds = time.perf_counter() - start
        print(
            f"{name:<16} {seconds:8.1f} s  {n / seconds:9.0f} samples/s  peak RSS so far {peak_rss_mib():7.0f} MiB  "
            f"top id {row['selected_ids'][0]}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="pool size N")
    parser.add_argument("--mc-samples", type=int, default=20, help="MC-dropout passes T")
    parser.add_argument("--batch-size", type=int, default=1024, help="pool batch size")
    parser.add_argument("--query-size", type=int, default=100, help="k, samples selected")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method (the fastest counts)")
    parser.add_argument("--skip-everywhere", action="store_true", help="leave out BALD with dropout everywhere")
    parser.add_argument("--million", action="store_true", help="score 1,000,000 samples, report peak memory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("n", "mc_samples", "batch_size", "query_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    million(args) if args.million else compare(args)


if __name__ == "__main__":
    main()
