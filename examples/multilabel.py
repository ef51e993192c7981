"""Multi-label active learning: which of the 10 digits appear in a strip of 1 to 3 digit images.

The task is given once, ``ActiveDataModule(..., task=MultiLabel(10))``: labels are 0/1 vectors, the model's
logits go through a sigmoid per label, every uncertainty score is summed over the labels' Bernoulli
distributions, and the loop records the test set's macro average precision (``test_map``) and macro F1
(``test_f1``) after every fit.

    python examples/multilabel.py                          # MultiLabelDigits, entropy (~15 s on 2 cores)
    python examples/multilabel.py --strategy bald          # MC dropout over the MLP's two dropout layers
    python examples/multilabel.py --strategy coreset --rounds 12
    python examples/multilabel.py --tiny                   # a few seconds: tiny pool, 2 rounds
    python examples/multilabel.py --dataset yeast          # a real multi-label set (downloads once)

``--dataset digits`` (the default) needs no download: :class:`~lightning_al.datasets.MultiLabelDigits` composes
strips of three 8×8 slots from scikit-learn's digits (192 features, 10 labels; the test strips use other digit
images than the pool's). ``--dataset yeast`` downloads the Yeast gene-function set from OpenML
(``fetch_openml("yeast", version=4)``, 2,417 genes, 103 expression features, 14 function labels; cached under
``--data-root``), standardises the features with the pool's statistics and holds out a fixed 20% as test set.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset, TensorDataset

import lightning_al as al
from lightning_al.datasets import MultiLabelDigits
from lightning_al.models import MultiLabelMLP
from lightning_al.tasks import MultiLabel

STRATEGIES: dict[str, Callable[[argparse.Namespace], al.Strategy]] = {
    "random": lambda args: al.strategies.Random(),
    "entropy": lambda args: al.strategies.Entropy(),
    "margin": lambda args: al.strategies.Margin(),
    "bald": lambda args: al.strategies.BALD(mc_samples=args.mc_samples),
    "meanstd": lambda args: al.strategies.MeanSTD(mc_samples=args.mc_samples),
    "coreset": lambda args: al.strategies.CoreSet(),
    "badge": lambda args: al.strategies.BADGE(),
}
# Defaults of each data path, and of --tiny; flags left unset take them.
DEFAULTS = {
    "digits": dict(
        pool_size=1000, test_size=500, initial=20, query_size=20, rounds=8, epochs=10, min_steps=20, lr=1e-3
    ),
    "yeast": dict(
        pool_size=None, test_size=None, initial=50, query_size=50, rounds=10, epochs=10, min_steps=20, lr=1e-3
    ),
    "tiny": dict(pool_size=120, test_size=80, initial=10, query_size=10, rounds=2, epochs=5, min_steps=20, lr=3e-3),
}
YEAST_TEST_FRACTION = 0.2


def digits_data(pool_size: int, test_size: int, seed: int = 0) -> tuple[Dataset, Dataset, int, int]:
    """``(pool, test, in_features, num_labels)`` of :class:`MultiLabelDigits` (pool and test from disjoint digits)."""
    pool = MultiLabelDigits(pool_size, split="pool", seed=seed)
    test = MultiLabelDigits(test_size, split="test", seed=seed + 1)
    return pool, test, 192, 10


def yeast_data(data_root: str, seed: int = 0) -> tuple[Dataset, Dataset, int, int]:
    """``(pool, test, 103, 14)``: OpenML's Yeast, split 80 / 20 with ``seed``, features standardised on the pool."""
    from sklearn.datasets import fetch_openml
    from sklearn.model_selection import train_test_split

    x, y = fetch_openml("yeast", version=4, return_X_y=True, as_frame=False, parser="liac-arff", data_home=data_root)
    y = y == "TRUE"  # 14 columns of "TRUE" / "FALSE"
    x_pool, x_test, y_pool, y_test = train_test_split(x, y, test_size=YEAST_TEST_FRACTION, random_state=seed)
    x_pool, x_test = torch.tensor(x_pool, dtype=torch.float32), torch.tensor(x_test, dtype=torch.float32)
    mean, std = x_pool.mean(dim=0), x_pool.std(dim=0).clamp_min(1e-6)
    pool = TensorDataset((x_pool - mean) / std, torch.tensor(y_pool, dtype=torch.float32))
    test = TensorDataset((x_test - mean) / std, torch.tensor(y_test, dtype=torch.float32))
    return pool, test, x.shape[1], y.shape[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("digits", "yeast"), default="digits", help="see the module docstring")
    parser.add_argument("--data-root", default="data", help="yeast: download cache")
    parser.add_argument("--strategy", choices=list(STRATEGIES), default="entropy")
    parser.add_argument("--mc-samples", type=int, default=20, help="MC-dropout passes of bald and meanstd")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (digits only): a smoke test in seconds")
    parser.add_argument("--pool-size", type=int, help="digits: strips in the pool (1000; tiny 120)")
    parser.add_argument("--test-size", type=int, help="digits: strips in the test set (500; tiny 80)")
    parser.add_argument("--initial", type=int, help="labels drawn at random before round 0 (digits 20, yeast 50)")
    parser.add_argument("--query-size", type=int, help="labels per round (digits 20, yeast 50)")
    parser.add_argument("--rounds", type=int, help="queries (digits 8, yeast 10)")
    parser.add_argument("--epochs", type=int, help="epochs per fit (10; tiny 5)")
    parser.add_argument("--min-steps", type=int, help="training steps per epoch at least (20)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size")
    parser.add_argument("--lr", type=float, help="Adam learning rate (1e-3; tiny 3e-3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.tiny and args.dataset != "digits":
        parser.error("--tiny runs the generated digits only")
    for name, value in DEFAULTS["tiny" if args.tiny else args.dataset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.min_steps < 0 or args.rounds < 0:
        parser.error("--min-steps and --rounds must be >= 0")
    for name in ("initial", "query_size", "epochs", "batch_size", "mc_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.dataset == "digits":
        for name in ("pool_size", "test_size"):
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.initial + args.rounds * args.query_size > args.pool_size:
            parser.error("--initial + --rounds * --query-size exceeds --pool-size")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the experiment of the command line ``argv``; prints one line per round and returns the history."""
    args = parse_args(argv)
    # Lightning itself trips a torch pytree deprecation on every fit; it says nothing about this run.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    if args.dataset == "digits":
        pool, test, in_features, num_labels = digits_data(args.pool_size, args.test_size, args.seed)
    else:
        pool, test, in_features, num_labels = yeast_data(str(Path(args.data_root)), args.seed)
    datamodule = al.ActiveDataModule(
        pool,
        test_set=test,
        task=MultiLabel(num_labels),
        initial_labelled=args.initial,
        batch_size=args.batch_size,
        min_steps_per_epoch=args.min_steps,
        seed=args.seed,
    )
    pl.seed_everything(args.seed, verbose=False)
    model = MultiLabelMLP(in_features=in_features, num_labels=num_labels, lr=args.lr)
    loop = al.ActiveLearningLoop(
        strategy=STRATEGIES[args.strategy](args),
        query_size=args.query_size,
        rounds=args.rounds,
        trainer_kwargs=dict(max_epochs=args.epochs, accelerator="cpu", enable_progress_bar=False),
        seed=args.seed,
        progress=False,
    )
    print(f"{args.strategy} on {args.dataset}: pool {len(pool)}, test {len(test)}, {num_labels} labels", flush=True)
    print(f"{'round':>5}{'labelled':>10}{'test mAP':>10}{'test F1':>9}{'train s':>9}{'score s':>9}", flush=True)

    def report(row: dict) -> None:
        score = f"{row['score_seconds']:9.2f}" if "score_seconds" in row else f"{'-':>9}"
        print(
            f"{row['round']:>5}{row['num_labelled']:>10}{row['test_map']:>10.3f}{row['test_f1']:>9.3f}"
            f"{row.get('train_seconds', 0.0):>9.2f}{score}",
            flush=True,
        )

    history = loop.run(model, datamodule, on_round_end=report)
    return history


if __name__ == "__main__":
    main()
