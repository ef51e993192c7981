"""BALD with MC dropout on MNIST, after Gal, Islam & Ghahramani 2017 ("Deep Bayesian Active Learning with Image Data").

Protocol: 20 class-balanced initial labels (2 per class), queries of 10 chosen by BALD on 20 MC-dropout
passes, a fresh fit from the same initial weights every round, test accuracy on the 10,000 test digits.
The CNN is the one of that paper (two 4×4 convolutions, max-pooling, dropout, a dense layer, dropout).

torchvision is needed and is not a dependency of this package: install the build that matches your
torch (see https://pytorch.org/get-started/locally/), e.g. in an environment whose torch came from PyPI:

    pip install -e ".[examples,wandb]" torchvision
    python examples/mnist.py                              # downloads MNIST into ./data; GPU if available
    python examples/mnist.py --rounds 20 --epochs 20      # a shorter run
    python examples/mnist.py --wandb --wandb-project al-mnist

The first run downloads MNIST (about 12 MB) into ``--data-root``. ``--output`` receives ``history.json``
(one row per round), the resumable ``state.pt`` (continue with ``--resume``) and ``learning_curve.png``.
With the defaults (100 rounds, 50 epochs each) expect tens of minutes on a GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from torch import nn
from torch.utils.data import Dataset

import lightning_al as al
from lightning_al.plotting import plot_learning_curves

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class MNISTCNN(pl.LightningModule):
    """``(B, 1, 28, 28)`` → logits ``(B, 10)``: conv 32@4×4, ReLU, conv 32@4×4, ReLU, max-pool 2, dropout,
    dense 128, ReLU, dropout, dense 10 (Gal et al. 2017). The layers before the first dropout run once per
    batch when MC dropout scores the pool."""

    def __init__(self, lr: float = 1e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=4),
            nn.ReLU(),
            nn.Conv2d(32, 32, kernel_size=4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.25), nn.Linear(32 * 11 * 11, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data", help="where MNIST is downloaded to")
    parser.add_argument("--initial-per-class", type=int, default=2)
    parser.add_argument("--query-size", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="examples/results/mnist")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --output")
    parser.add_argument("--wandb", action="store_true", help="log the experiment to Weights & Biases")
    parser.add_argument("--wandb-project", default="lightning-al-mnist")
    return parser.parse_args(argv)


def load_datasets(root: str) -> tuple[Dataset, Dataset]:
    """MNIST's 60,000 training digits (the pool) and 10,000 test digits, downloaded into ``root`` if absent."""
    try:
        from torchvision import datasets, transforms
    except ImportError as error:
        raise ImportError(
            "examples/mnist.py needs torchvision: install the build matching your torch (`pip install torchvision`)."
        ) from error
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
    train = datasets.MNIST(root, train=True, download=True, transform=transform)
    test = datasets.MNIST(root, train=False, download=True, transform=transform)
    return train, test


def make_logger(args: argparse.Namespace) -> Logger | bool:
    """A W&B logger with ``--wandb`` (the loop logs every round to it as one run), else no logger."""
    if not args.wandb:
        return False
    from pytorch_lightning.loggers import WandbLogger

    return WandbLogger(project=args.wandb_project, name=f"BALD-seed{args.seed}")


def run(args: argparse.Namespace, train_set: Dataset, test_set: Dataset) -> list[dict]:
    """Active learning with BALD on ``train_set``; returns the loop's history."""
    pl.seed_everything(args.seed, verbose=False)
    datamodule = al.ActiveDataModule(
        train_set,
        test_set=test_set,
        initial_per_class=args.initial_per_class,
        batch_size=args.batch_size,
        eval_batch_size=1024,
        min_steps_per_epoch=10,
        num_workers=args.num_workers,
        seed=args.seed,
    )
    loop = al.ActiveLearningLoop(
        strategy=al.strategies.BALD(mc_samples=args.mc_samples),
        query_size=args.query_size,
        rounds=args.rounds,
        trainer_kwargs=dict(max_epochs=args.epochs, accelerator="auto", devices=1, logger=make_logger(args)),
        seed=args.seed,
        output_dir=args.output or None,
    )
    return loop.run(MNISTCNN(), datamodule, resume=args.resume)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    train_set, test_set = load_datasets(args.data_root)
    history = run(args, train_set, test_set)
    if args.output:
        path = Path(args.output) / "learning_curve.png"
        plot_learning_curves({"BALD": [history]}, title="MNIST, BALD (MC dropout)", path=path)
        print(f"history: {Path(args.output) / 'history.json'}; plot: {path}")
    return history


if __name__ == "__main__":
    main()
