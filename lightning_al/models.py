"""Small ready-made classifiers for examples, tests and CLI configs."""

from __future__ import annotations

import torch
from torch import nn

from lightning_al import namespace


class EpochMeanLoss:
    """Logs ``train_loss`` once per epoch: the mean of the steps' losses, weighted by their batch sizes.

    The value ``self.log("train_loss", loss, on_epoch=True, on_step=False)`` logs, summed by the
    model itself: Lightning's per-step logging costs more than a step of a small model.
    Call `record_loss` in ``training_step``.
    """

    def on_train_epoch_start(self) -> None:
        """Start the epoch's sums."""
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0

    def record_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """Add a step's mean ``loss`` (a scalar) over ``batch_size`` samples to the epoch's sums."""
        weighted = loss.detach() * batch_size
        self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
        self._loss_count += batch_size

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean training loss as ``train_loss``."""
        if self._loss_count:
            self.log("train_loss", self._loss_sum / self._loss_count)  # type: ignore[attr-defined]


class MLPClassifier(EpochMeanLoss, namespace.default().LightningModule):
    """A two-hidden-layer MLP with dropout: ``(B, in_features)`` → logits ``(B, num_classes)``.

    Trained with cross-entropy and Adam; logs ``train_loss`` per epoch. Its dropout layers make
    it usable with `lightning_al.estimators.MCDropout`. A LightningModule of the default namespace
    (``pytorch_lightning`` when installed, else ``lightning.pytorch``).

    Args:
        in_features: input size.
        num_classes: number of classes.
        hidden: width of the hidden layers.
        dropout: dropout probability after each hidden layer.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
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
        """Logits ``(B, num_classes)`` of inputs ``x`` ``(B, in_features)``."""
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the batch ``(x, y)``: inputs ``(B, in_features)``, class ids ``(B,)``."""
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.record_loss(loss, x.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with ``lr`` and ``weight_decay``."""
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


class MultiLabelMLP(MLPClassifier):
    """`MLPClassifier` for multi-label targets: logits ``(B, num_labels)`` trained with
    ``binary_cross_entropy_with_logits`` on float 0/1 targets ``(B, num_labels)`` (use with
    `lightning_al.tasks.MultiLabel`).

    Args:
        in_features: input size.
        num_labels: number of labels.
        hidden: width of the hidden layers.
        dropout: dropout probability after each hidden layer.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
    """

    def __init__(
        self,
        in_features: int = 192,
        num_labels: int = 10,
        hidden: int = 128,
        dropout: float = 0.25,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__(in_features, num_labels, hidden, dropout, lr, weight_decay)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Binary cross-entropy of the batch ``(x, y)``: inputs ``(B, in_features)``, 0/1 ``(B, num_labels)``."""
        x, y = batch
        loss = nn.functional.binary_cross_entropy_with_logits(self(x), y.float())
        self.record_loss(loss, x.shape[0])
        return loss


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class SmallUNet(EpochMeanLoss, namespace.default().LightningModule):
    """A two-level U-Net (Ronneberger et al. 2015): ``(B, in_channels, H, W)`` → logits ``(B, num_classes, H, W)``.

    ``H`` and ``W`` must be even. Dropout sits only before the 1×1 head (``head.0``, an ``nn.Dropout2d``), so
    MC dropout runs the encoder and decoder once per batch and only the head ``T`` times. Trained with
    pixel-wise cross-entropy that skips ``ignore_index``; use with `lightning_al.tasks.Segmentation`.

    Args:
        in_channels: input channels.
        num_classes: number of classes.
        width: channels of the first level (the second has ``2 * width``).
        dropout: ``nn.Dropout2d`` probability before the head.
        ignore_index: mask value of unlabelled pixels, left out of the loss.
        lr: Adam learning rate.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        width: int = 16,
        dropout: float = 0.25,
        ignore_index: int = 255,
        lr: float = 3e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.down = _conv_block(in_channels, width)
        self.bottom = _conv_block(width, 2 * width)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.decode = _conv_block(2 * width, width)
        self.head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(width, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` of images ``x`` ``(B, in_channels, H, W)``."""
        skip = self.down(x)
        bottom = self.bottom(nn.functional.max_pool2d(skip, 2))
        return self.head(self.decode(torch.cat([skip, self.up(bottom)], dim=1)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Pixel-wise cross-entropy of the batch ``(x, mask)``: images ``(B, C_in, H, W)``, masks ``(B, H, W)``."""
        x, mask = batch
        loss = nn.functional.cross_entropy(self(x), mask.long(), ignore_index=self.hparams.ignore_index)
        self.record_loss(loss, x.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with ``lr``."""
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
