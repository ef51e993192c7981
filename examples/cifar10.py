"""BADGE on CIFAR-10 (Ash et al. 2020, "Deep Batch Active Learning by Diverse, Uncertain Gradient Lower Bounds").

Protocol: 1,000 random initial labels, queries of 1,000 chosen by BADGE (k-means++ seeding on the
last-layer gradient embeddings), a fresh fit from the same initial weights every round, test accuracy on
the 10,000 test images. Training batches are augmented (random crop, horizontal flip); the pool is scored
from the same images without augmentation (``pool_set``), so augmentation never reaches acquisition.
The embedding BADGE needs is the input of the CNN's last linear layer, found without touching the model.

torchvision is needed and is not a dependency of this package: install the build that matches your
torch (see https://pytorch.org/get-started/locally/), e.g. in an environment whose torch came from PyPI:

    pip install -e ".[examples,wandb]" torchvision
    python examples/cifar10.py                            # downloads CIFAR-10 into ./data; GPU if available
    python examples/cifar10.py --rounds 4 --epochs 15     # a shorter run
    python examples/cifar10.py --wandb --wandb-project al-cifar10

The first run downloads CIFAR-10 (about 170 MB) into ``--data-root``. ``--output`` receives
``history.json`` (one row per round), the resumable ``state.pt`` (continue with ``--resume``) and
``learning_curve.png``.
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

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3×3 convolutions with batch norm and ReLU, then a 2×2 max-pool (halves the side)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class CIFAR10CNN(pl.LightningModule):
    """``(B, 3, 32, 32)`` → logits ``(B, 10)``: three conv blocks (32, 64, 128 channels, 32 → 4 pixels),
    dense 256 with dropout, dense 10. BADGE's embedding is the 256-d input of the last layer."""

    def __init__(self, lr: float = 1e-3, weight_decay: float = 5e-4, max_epochs: int = 30) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(conv_block(3, 32), conv_block(32, 64), conv_block(64, 128), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.hparams.max_epochs)
        return [optimizer], [schedule]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data", help="where CIFAR-10 is downloaded to")
    parser.add_argument("--initial", type=int, default=1000)
    parser.add_argument("--query-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="examples/results/cifar10")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --output")
    parser.add_argument("--wandb", action="store_true", help="log the experiment to Weights & Biases")
    parser.add_argument("--wandb-project", default="lightning-al-cifar10")
    return parser.parse_args(argv)


def load_datasets(root: str) -> tuple[Dataset, Dataset, Dataset]:
    """CIFAR-10's 50,000 training images twice (augmented for training, plain for scoring the pool) and its
    10,000 test images, downloaded into ``root`` if absent."""
    try:
        from torchvision import datasets, transforms
    except ImportError as error:
        raise ImportError(
            "examples/cifar10.py needs torchvision: install the build matching your torch (`pip install torchvision`)."
        ) from error
    normalize = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    augment = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    plain = transforms.Compose([transforms.ToTensor(), normalize])
    train = datasets.CIFAR10(root, train=True, download=True, transform=augment)
    pool = datasets.CIFAR10(root, train=True, download=True, transform=plain)
    test = datasets.CIFAR10(root, train=False, download=True, transform=plain)
    return train, pool, test


def make_logger(args: argparse.Namespace) -> Logger | bool:
    """A W&B logger with ``--wandb`` (the loop logs every round to it as one run), else no logger."""
    if not args.wandb:
        return False
    from pytorch_lightning.loggers import WandbLogger

    return WandbLogger(project=args.wandb_project, name=f"BADGE-seed{args.seed}")


def run(args: argparse.Namespace, train_set: Dataset, pool_set: Dataset, test_set: Dataset) -> list[dict]:
    """Active learning with BADGE on ``train_set`` (scored from ``pool_set``); returns the loop's history."""
    pl.seed_everything(args.seed, verbose=False)
    datamodule = al.ActiveDataModule(
        train_set,
        pool_set=pool_set,
        test_set=test_set,
        initial_labelled=args.initial,
        batch_size=args.batch_size,
        eval_batch_size=1024,
        num_workers=args.num_workers,
        seed=args.seed,
    )
    loop = al.ActiveLearningLoop(
        strategy=al.strategies.BADGE(),
        query_size=args.query_size,
        rounds=args.rounds,
        trainer_kwargs=dict(max_epochs=args.epochs, accelerator="auto", devices=1, logger=make_logger(args)),
        seed=args.seed,
        output_dir=args.output or None,
    )
    return loop.run(CIFAR10CNN(max_epochs=args.epochs), datamodule, resume=args.resume)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    train_set, pool_set, test_set = load_datasets(args.data_root)
    history = run(args, train_set, pool_set, test_set)
    if args.output:
        path = Path(args.output) / "learning_curve.png"
        plot_learning_curves({"BADGE": [history]}, title="CIFAR-10, BADGE", path=path)
        print(f"history: {Path(args.output) / 'history.json'}; plot: {path}")
    return history


if __name__ == "__main__":
    main()
