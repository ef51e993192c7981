"""Time pool scoring through the loop's scoring path against one plain forward pass over the same pool.

The pool is synthetic (``N`` samples of 784 features, 10 classes) behind an
:class:`~lightning_al.ActiveDataModule`. Two models (``--model``):

- **mlp**: 784→512→512→10 with ReLU, dropout (p = 0.5) before the last layer. Its head is large next to
  its backbone: ``T = 20`` passes through the last layer are ``20 · 512 · 10`` multiply-adds per sample,
  15% of the backbone's 663,552, computed as a matrix product with 10 output columns, which CPUs run at
  a fraction of the speed of the backbone's square ones;
- **cnn**: the inputs as 1×28×28 images through conv(16)–pool–conv(32)–pool–linear(1568→128), then
  dropout (p = 0.5) and linear(128→10): a convolutional backbone with a dropout head, the usual shape of an
  image classifier; the head's ``T = 20`` passes are 2% of the backbone's 1.2 million multiply-adds.

Methods:

- **floor**: ``model(x)`` for every batch of the pool dataloader, in eval mode under
  ``torch.inference_mode`` (the physical floor: read the pool once, one forward);
- **forward only**: the same forward on batches already in memory (no dataloader), for reference;
- **Entropy**, **BALD** (``T`` MC-dropout passes: dropout in the head only, with consistent masks (the
  default) or fresh masks per sample; or dropout after every hidden layer) and **BADGE** (probabilities,
  embeddings and the k-means++ selection), each through the loop's own scoring-and-selection step
  (``ActiveLearningLoop._score_and_select``), selection included.

Each method runs ``--repeats`` times, the methods taking turns, and the fastest run counts (the
machine may be shared). ``--million`` instead scores a pool of 1,000,000 samples (inputs generated
on the fly from a small table, so the data itself takes no memory) with Entropy and BALD (``T``
passes, head-only dropout) and reports the peak resident memory.

Run: ``python -m benchmarks.scoring [--model mlp|cnn] [--n 200000] [--mc-samples 20] [--repeats 3] [--million]``.
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
from benchmarks.suite import SuiteRow
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


class PoolCNN(pl.LightningModule):
    """``(B, 784)`` read as 1×28×28 → conv 3×3 (16) → ReLU → max-pool 2 → conv 3×3 (32) → ReLU → max-pool 2
    → linear 1568→128 → ReLU → dropout (p = 0.5) → linear 128→10."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(128, CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


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


FLOOR = "floor: plain forward over the pool loader"


def measure(
    model_kind: str,
    n: int,
    mc_samples: int,
    query_size: int,
    batch_size: int,
    repeats: int,
    seed: int = 0,
    everywhere: bool = True,
) -> dict[str, float]:
    """Seconds of each method on a pool of ``n`` (fastest of ``repeats``, methods taking turns); key ``FLOOR`` first.

    ``everywhere`` adds BALD with dropout after every hidden layer (the MLP only).
    """
    x = torch.randn(n, FEATURES, generator=torch.Generator().manual_seed(seed))
    dm = al.ActiveDataModule(TensorDataset(x, torch.arange(n) % CLASSES), eval_batch_size=batch_size)
    torch.manual_seed(seed)
    model = PoolCNN() if model_kind == "cnn" else PoolMLP()
    batches = list(x.split(batch_size))
    T, k = mc_samples, query_size

    def forward_only() -> None:
        model.eval()
        with torch.inference_mode():
            for batch in batches:
                model(batch)

    entropy = scoring_step(al.strategies.Entropy(), k)
    bald_head = scoring_step(al.strategies.BALD(mc_samples=T), k)  # consistent masks, the default
    bald_independent = scoring_step(al.strategies.BALD(estimator=MCDropout(T, consistent_masks=False)), k)
    badge = scoring_step(al.strategies.BADGE(), k)
    methods: dict[str, Callable[[], Any]] = {
        FLOOR: lambda: plain_forward(model, dm),
        "forward only (batches in memory)": forward_only,
        "Entropy": lambda: entropy(model, dm),
        f"BALD, head-only dropout (T={T})": lambda: bald_head(model, dm),
        f"BALD, head-only, independent masks (T={T})": lambda: bald_independent(model, dm),
        f"BADGE (k={k})": lambda: badge(model, dm),
    }
    if everywhere and model_kind == "mlp":
        dropout_everywhere = PoolMLP(dropout_everywhere=True)
        dropout_everywhere.load_state_dict(model.state_dict(), strict=False)
        bald_everywhere = scoring_step(al.strategies.BALD(mc_samples=T), k)
        methods[f"BALD, dropout everywhere (T={T})"] = lambda: bald_everywhere(dropout_everywhere, dm)
    return best_times(methods, repeats)


def describe(model_kind: str) -> str:
    if model_kind == "cnn":
        return "CNN conv16-pool-conv32-pool-fc128 (ReLU), dropout 0.5, fc10"
    return f"{FEATURES}-{HIDDEN}-{HIDDEN}-{CLASSES} MLP (ReLU), dropout 0.5 before the last layer"


def compare(args: argparse.Namespace) -> None:
    seconds = measure(
        args.model,
        args.n,
        args.mc_samples,
        args.query_size,
        args.batch_size,
        args.repeats,
        args.seed,
        everywhere=not args.skip_everywhere,
    )
    floor = seconds[FLOOR]
    print(
        f"Pool scoring: N={args.n} x {FEATURES} features, {CLASSES} classes, batch size {args.batch_size}, "
        f"k={args.query_size}"
    )
    print(f"model: {describe(args.model)}; best of {args.repeats} runs")
    print(f"machine: {machine()}")
    print(f"{'method':<48}{'seconds':>10}{'x floor':>10}{'samples/s':>12}")
    for name, value in seconds.items():
        print(f"{name:<48}{value:>10.2f}{value / floor:>10.2f}{args.n / value:>12.0f}")


def suite_rows(quick: bool = False) -> list[SuiteRow]:
    """Entropy, head-only BALD (T = 20) and BADGE against the floor, for the MLP (N = 200,000) and the CNN (20,000)."""
    rows = []
    for model_kind, n in (("mlp", 200_000), ("cnn", 20_000)):
        n = 4_000 if quick else n
        seconds = measure(model_kind, n, 20, 100, 1024, 1 if quick else 3, everywhere=False)
        floor = seconds.pop(FLOOR)
        seconds.pop("forward only (batches in memory)")
        benchmark = f"pool scoring, {model_kind.upper()}, N={n:,}"
        rows.append(SuiteRow(benchmark, "plain forward over the pool (floor)", floor))
        rows += [SuiteRow(benchmark, name, value, "floor", value / floor) for name, value in seconds.items()]
    return rows


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
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="the model scored (see above)")
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
