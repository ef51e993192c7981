"""Endless shuffled batches of the unlabelled pool, for callbacks that train on it beside the model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from lightning_al import distributed
from lightning_al.data.batches import move_indexed_batch


class UnlabelledBatches:
    """Endless batches of model inputs from the unlabelled pool, reshuffled each pass with their own generator.

    The shuffles come from a generator seeded with ``seed``; the global RNG is left alone.

    Under DDP, rank ``r`` of ``W`` draws from the pool positions ``r, r + W, ...`` only, so the ranks
    contribute different unlabelled samples to each averaged step (the whole pool when it has fewer
    than ``W`` samples).
    """

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self._loader: DataLoader | None = None
        self._iter: Iterator[Any] | None = None

    def restart(self, seed: int | None = None) -> None:
        """Forget the pool (it changes between fits); with ``seed``, also re-seed the shuffles."""
        if seed is not None:
            self.generator.manual_seed(seed)
        self._loader = self._iter = None

    def next(self, dm: Any, batch_size: int, device: torch.device) -> Any | None:
        """The inputs of the next batch (``batch_size`` samples at most) of ``dm``'s unlabelled pool on ``device``.

        None if the pool is empty. The loader is built at the first call after `restart`.
        """
        if self._loader is None:
            pool = dm.pool_dataloader()
            if len(pool.dataset) == 0:
                return None
            rank, world = distributed.rank_and_world()
            dataset = pool.dataset
            if world > 1 and len(dataset) >= world:
                dataset = Subset(dataset, range(rank, len(dataset), world))
            self._loader = DataLoader(
                dataset,
                batch_size=batch_size,
                shuffle=True,
                generator=self.generator,  # shuffles and worker seeds leave the global RNG alone
                collate_fn=pool.collate_fn,
                num_workers=pool.num_workers,
            )
        batch = next(self._iter, None) if self._iter is not None else None
        if batch is None:
            self._iter = iter(self._loader)
            batch = next(self._iter)
        return dm.inputs(move_indexed_batch(batch, device))
