"""An existing PyTorch Lightning project turned into active learning with a few added lines.

Everything above ``main`` is a plain Lightning project, written as one writes it without active
learning in mind: a small CNN on scikit-learn's 8×8 digit images and a ``LightningDataModule``
with its training, validation and test sets. ``main`` then trains it by active learning instead
of on the whole training set; the added lines are marked ``# + active learning``. Nothing in the
model or the datamodule changes: ``x, y = batch`` still works, and what ``validation_step`` and
``test_step`` log lands in the returned history.

    python examples/existing_project.py                       # Entropy: 20 labels + 5 queries of 20
    python examples/existing_project.py --strategy Margin --rounds 10
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_al as al  # + active learning


class DigitsCNN(pl.LightningModule):
    """Two 3×3 convolutions, a 2×2 max-pool and a small dense head: ``(B, 1, 8, 8)`` → logits ``(B, 10)``."""

    def __init__(self, lr: float = 2e-3, dropout: float = 0.25) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log(f"{stage}_loss", loss, on_epoch=True, on_step=False)
        self.log(f"{stage}_acc", (logits.argmax(dim=1) == y).float().mean(), on_epoch=True, on_step=False)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn's 1,797 digits as ``(1, 8, 8)`` images in [0, 1], split into stratified train / val / test sets."""

    def __init__(self, batch_size: int = 32, val_size: float = 0.15, test_size: float = 0.25, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.val_size, self.test_size, self.seed = batch_size, val_size, test_size, seed

    def setup(self, stage: str | None = None) -> None:
        x, y = load_digits(return_X_y=True)
        images = torch.tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
        labels = torch.tensor(y)
        rest, test = train_test_split(range(len(y)), test_size=self.test_size, random_state=self.seed, stratify=y)
        train, val = train_test_split(
            rest, test_size=self.val_size / (1 - self.test_size), random_state=self.seed, stratify=y[rest]
        )
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(images[ids], labels[ids]) for ids in (train, val, test)
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


def main(
    epochs: int = 20,
    seed: int = 0,
    strategy: str = "Entropy",  # + active learning
    initial_labelled: int = 20,  # + active learning
    query_size: int = 20,  # + active learning
    rounds: int = 5,  # + active learning
    output_dir: str | None = None,  # + active learning
) -> list[dict]:
    pl.seed_everything(seed)
    model = DigitsCNN()
    datamodule = DigitsDataModule(seed=seed)
    active = al.ActiveDataModule.from_datamodule(  # + active learning: labelled set + pool over its train set
        datamodule, initial_labelled=initial_labelled, min_steps_per_epoch=10, seed=seed
    )
    loop = al.ActiveLearningLoop(  # + active learning: fit, test, query, label; `rounds` times
        strategy=getattr(al.strategies, strategy)(),
        query_size=query_size,
        rounds=rounds,
        trainer_kwargs=dict(max_epochs=epochs),
        seed=seed,
        output_dir=output_dir,
    )
    return loop.run(model, active)  # + active learning: one dict per fit


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="Entropy")  # + active learning: a class of al.strategies
    parser.add_argument("--initial-labelled", type=int, default=20)  # + active learning
    parser.add_argument("--query-size", type=int, default=20)  # + active learning
    parser.add_argument("--rounds", type=int, default=5)  # + active learning
    parser.add_argument("--output-dir")  # + active learning
    torch.set_num_threads(1)  # a model this small only loses time to intra-op threads on a CPU
    main(**vars(parser.parse_args()))  # + active learning: the loop prints one line per round
