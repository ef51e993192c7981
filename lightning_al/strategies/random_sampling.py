"""Uniform random sampling: the baseline every strategy must beat."""

from __future__ import annotations

import torch

from lightning_al.outputs import PoolOutputs
from lightning_al.strategies.base import Selection, Strategy, check_query_size
from lightning_al.tasks import ALL_TASKS


class Random(Strategy):
    """Query ``k`` unlabelled samples uniformly at random, without replacement; needs no model output."""

    tasks = ALL_TASKS

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """``k`` ids drawn uniformly without replacement from ``outputs.ids`` (no scores)."""
        check_query_size(k, len(outputs))
        picked = torch.randperm(len(outputs), generator=generator)[:k]
        return Selection(ids=outputs.ids[picked])
