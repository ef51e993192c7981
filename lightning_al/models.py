"""Small ready-made classifiers for examples, tests and CLI configs."""

from __future__ import annotations

import torch
from torch import nn

from lightning_al import namespace


class MLPClassifier(namespace.default().LightningModule):
    """A two-hidden-layer MLP with dropout: ``(B, in_features)`` → logits ``(B, num_classes)``.

    Trained with cross-entropy and Adam; logs ``train_loss`` per epoch. Its dropout layers make
    it usable with :class:`~lightning_al.estimators.MCDropout`. A LightningModule of the default namespace
    (``pytorch_lightning`` when installed, else ``lightning.pytorch``).
    """

    def __init__(
        self,
        in_features: int = 64,
        num_classes: int = 10,
        hidden: int = 128,
        dropout: float = 0.25,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
