"""Datasets that ship with a package, for examples, tests and CLI configs (no download)."""

from __future__ import annotations

import torch
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
