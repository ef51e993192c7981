"""Samplers for tiny labelled sets."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class RepeatedShuffleSampler(Sampler[int]):
    """Shuffled positions ``0..n-1``, repeated in fresh permutations until ``num_samples`` are drawn.

    With a handful of labels and ``batch_size`` larger than the labelled set, an epoch is
    a single step; repeating keeps a minimum number of optimisation steps per epoch while
    every sample appears at most once more than any other. Each epoch draws new
    permutations from ``generator``.
    """

    def __init__(self, n: int, num_samples: int, generator: torch.Generator) -> None:
        if n < 1:
            raise ValueError(f"Expected `n` to be positive, but got {n}.")
        self.n = n
        self.num_samples = max(n, num_samples)
        self.generator = generator

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        repeats = -(-self.num_samples // self.n)
        order = torch.cat([torch.randperm(self.n, generator=self.generator) for _ in range(repeats)])
        return iter(order[: self.num_samples].tolist())
