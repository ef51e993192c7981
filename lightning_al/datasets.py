"""Datasets that ship with a package, for examples, tests and CLI configs (no download)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


class Digits(TensorDataset):
    """scikit-learn's 1,797 handwritten 8×8 digits: items ``(x, y)`` with ``x`` of shape ``(64,)``
    scaled to [0, 1] and ``y`` in 0..9.

    A fixed stratified split separates the active-learning pool (``split="pool"``) from the
    held-out test set (``split="test"``). Requires scikit-learn (``pip install lightning-al[examples]``).

    Args:
        split: ``"pool"`` or ``"test"``.
        test_size: fraction of the samples held out for testing.
        seed: seed of the split.
    """

    def __init__(self, split: str = "pool", test_size: float = 0.33, seed: int = 0) -> None:
        if split not in ("pool", "test"):
            raise ValueError(f"Expected `split` to be 'pool' or 'test', but got {split!r}.")
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        x_pool, x_test, y_pool, y_test = train_test_split(
            x / 16.0, y, test_size=test_size, random_state=seed, stratify=y
        )
        x, y = (x_pool, y_pool) if split == "pool" else (x_test, y_test)
        super().__init__(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
        self.split = split


class MultiLabelDigits(TensorDataset):
    """Strips of three 8×8 slots, each empty or holding a scikit-learn digit: items ``(x, y)`` with ``x`` of
    shape ``(192,)`` in [0, 1] and ``y`` a float 0/1 vector of the 10 digits present (multi-label).

    Each strip draws 1 to 3 digits (of distinct classes) from the pool or test split of `Digits`, so the
    test strips never reuse a pool image. Generated on the fly, nothing is downloaded. Requires scikit-learn.

    Args:
        num_samples: strips to compose.
        split: ``"pool"`` or ``"test"`` (the split of `Digits` the digit images come from).
        seed: seed of the composition.
    """

    def __init__(self, num_samples: int = 1000, split: str = "pool", seed: int = 0) -> None:
        digits = Digits(split)
        images, classes = digits.tensors
        generator = torch.Generator().manual_seed(seed)
        x = torch.zeros(num_samples, 8, 24)
        y = torch.zeros(num_samples, 10)
        for n in range(num_samples):
            count = int(torch.randint(1, 4, (1,), generator=generator))
            slots = torch.randperm(3, generator=generator)[:count].tolist()
            chosen: set[int] = set()
            for slot in slots:
                while True:
                    index = int(torch.randint(len(classes), (1,), generator=generator))
                    if int(classes[index]) not in chosen:
                        break
                chosen.add(int(classes[index]))
                x[n, :, 8 * slot : 8 * slot + 8] = images[index].view(8, 8)
                y[n, int(classes[index])] = 1.0
        super().__init__(x.flatten(1), y)


class Shapes(TensorDataset):
    """Synthetic semantic segmentation: noisy grey images with squares (class 1) and discs (class 2) on a
    background (class 0). Both kinds take a random brightness, so only their shape tells them apart.

    Items ``(image, mask)``: ``image`` ``(1, size, size)`` float, ``mask`` ``(size, size)`` long, with the
    one-pixel outline of every shape set to ``ignore_index`` (boundary pixels that annotators leave out, as
    in Pascal VOC). Generated from ``seed``; nothing is downloaded.

    Args:
        num_samples: images.
        size: height and width.
        max_shapes: each image holds 1 to ``max_shapes`` shapes.
        noise: standard deviation of the pixel noise.
        ignore_index: value of the outline pixels in the masks, or None to label them.
        seed: seed of the generator.
    """

    num_classes = 3

    def __init__(
        self,
        num_samples: int = 500,
        size: int = 32,
        max_shapes: int = 3,
        noise: float = 0.35,
        ignore_index: int | None = 255,
        seed: int = 0,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        images = torch.zeros(num_samples, 1, size, size)
        masks = torch.zeros(num_samples, size, size, dtype=torch.long)
        for n in range(num_samples):
            for _ in range(int(torch.randint(1, max_shapes + 1, (1,), generator=generator))):
                cls = int(torch.randint(1, 3, (1,), generator=generator))
                r, c = (torch.randint(size // 8, size - size // 8, (2,), generator=generator)).tolist()
                half = int(torch.randint(max(2, size // 10), max(3, size // 5), (1,), generator=generator))
                if cls == 1:
                    inside = ((rows - r).abs() <= half) & ((cols - c).abs() <= half)
                else:
                    inside = (rows - r) ** 2 + (cols - c) ** 2 <= half**2
                masks[n][inside] = cls
                images[n, 0][inside] = float(torch.empty(1).uniform_(0.4, 1.0, generator=generator))
        images += noise * torch.randn(images.shape, generator=generator)
        if ignore_index is not None:  # outlines: pixels with a 4-neighbour of another class
            padded = nn.functional.pad(masks.float()[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
            centre = padded[:, 1:-1, 1:-1]
            edge = torch.zeros_like(masks, dtype=torch.bool)
            for dr, dc in ((0, 1), (2, 1), (1, 0), (1, 2)):
                edge |= padded[:, dr : dr + size, dc : dc + size] != centre
            masks[edge] = ignore_index
        super().__init__(images, masks)
