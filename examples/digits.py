"""Active learning on scikit-learn's digits: Random vs LeastConfidence vs Margin vs Entropy.

Runs every strategy over several seeds (in parallel over the CPU cores), then prints
test accuracy against the number of labels, the labels each strategy needs to reach
the target accuracy, and saves a learning-curve plot.

    python examples/digits.py                      # the default protocol (3 seeds)
    python examples/digits.py --seeds 1 --rounds 5 # a quick look
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from tqdm import tqdm

import lightning_al as al
from lightning_al.datasets import Digits
from lightning_al.models import MLPClassifier
from lightning_al.plotting import labels_to_reach, learning_curve, plot_learning_curves

DigitsMLP = MLPClassifier


def digits_splits(test_size: float = 0.33) -> tuple[Digits, Digits]:
    """The 1,797 digits, scaled to [0, 1], split into a pool and a held-out test set (stratified, fixed)."""
    return Digits("pool", test_size), Digits("test", test_size)


@dataclass(frozen=True)
class Arm:
    """One contender: how to build its strategy, its model and any extra training callbacks."""

    strategy: Callable[[], al.Strategy]
    model: Callable[[], pl.LightningModule] = DigitsMLP
    callbacks: Callable[[], list[pl.Callback]] = list


ARMS = {
    "Random": Arm(al.strategies.Random),
    "LeastConfidence": Arm(al.strategies.LeastConfidence),
    "Margin": Arm(al.strategies.Margin),
    "Entropy": Arm(al.strategies.Entropy),
}


def run_experiment(name: str, arm: Arm, seed: int, args: argparse.Namespace, progress=None) -> list[dict]:
    torch.set_num_threads(1)
    # Lightning 2.6 itself trips a torch pytree deprecation on every fit; it says nothing about this run.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    pool, test = digits_splits()
    datamodule = al.ActiveDataModule(
        pool, test_set=test, initial_labelled=args.initial, batch_size=32, min_steps_per_epoch=4, seed=seed
    )
    pl.seed_everything(seed, verbose=False)
    model = arm.model()
    run_dir = Path(args.output) / f"{name}_seed{seed}" if args.output else None
    if run_dir is not None:
        shutil.rmtree(run_dir, ignore_errors=True)  # every invocation runs the protocol afresh
    loop = al.ActiveLearningLoop(
        strategy=arm.strategy(),
        query_size=args.query_size,
        rounds=args.rounds,
        trainer_kwargs=dict(max_epochs=args.epochs, accelerator="cpu", callbacks=arm.callbacks()),
        seed=seed,
        output_dir=str(run_dir) if run_dir is not None else None,
        progress=False,  # the parent process shows one bar over every run
    )
    on_round_end = (lambda row: progress.put(1)) if progress is not None else None
    return loop.run(model, datamodule, on_round_end=on_round_end)


def summarise(results: dict[str, list[list[dict]]], target: float) -> str:
    """Markdown tables: mean test accuracy per label count, and labels needed to reach ``target``."""
    names = list(results)
    curves = {name: learning_curve(runs) for name, runs in results.items()}
    means = {name: dict(zip(c.num_labelled.tolist(), c.mean.tolist(), strict=True)) for name, c in curves.items()}
    counts = sorted(set().union(*means.values()))
    lines = ["| labels | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for count in counts:
        cells = [f"{means[name][count]:.3f}" if count in means[name] else "—" for name in names]
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"| strategy | labels to reach {target:.0%} test accuracy (mean ± std over seeds) | per seed |",
        "|---|---|---|",
    ]
    for name in names:
        reached = [labels_to_reach(run, target) for run in results[name]]
        if all(r is not None for r in reached):
            spread = statistics.stdev(reached) if len(reached) > 1 else 0.0
            cell = f"{statistics.mean(reached):.0f} ± {spread:.0f}"
        else:
            cell = f"not reached by some seeds (> {counts[-1]})"
        lines.append(f"| {name} | {cell} | {reached} |")
    return "\n".join(lines)


def main(arms: dict[str, Arm], description: str, default_output: str, default_arms: list[str] | None = None) -> None:
    """Command line: run ``arms`` over seeds in parallel, then print, save and plot the learning curves."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--initial", type=int, default=20)
    parser.add_argument("--query-size", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--strategies", nargs="+", default=default_arms or list(arms), choices=list(arms))
    parser.add_argument("--output", default=default_output)
    args = parser.parse_args()

    start = time.perf_counter()
    jobs = [(name, seed) for name in args.strategies for seed in range(args.seeds)]
    results: dict[str, list[list[dict]]] = {name: [None] * args.seeds for name in args.strategies}
    with mp.Manager() as manager, ProcessPoolExecutor(max_workers=args.workers) as pool:
        progress = manager.Queue()
        futures = {
            pool.submit(run_experiment, name, arms[name], seed, args, progress): (name, seed) for name, seed in jobs
        }
        with tqdm(total=len(jobs) * (args.rounds + 1), desc="rounds", unit="round") as bar:
            pending = set(futures)
            while pending:
                while not progress.empty():
                    progress.get()
                    bar.update()
                done = {f for f in pending if f.done()}
                for future in done:
                    name, seed = futures[future]
                    results[name][seed] = future.result()
                pending -= done
                time.sleep(0.2)
            while not progress.empty():
                progress.get()
                bar.update()

    table = summarise(results, args.target)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    seeds = f"{args.seeds} seed{'s' if args.seeds > 1 else ''}"
    plot_learning_curves(
        results, target=args.target, title=f"digits: mean ± std over {seeds}", path=output / "learning_curves.png"
    )
    (output / "summary.md").write_text(table + "\n")
    (output / "results.json").write_text(json.dumps(results))
    print(table)
    print(f"\nplot: {output / 'learning_curves.png'}; per-run history: {output}/<strategy>_seed<k>/history.json")
    print(f"wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(ARMS, __doc__, default_output="examples/results/digits")
