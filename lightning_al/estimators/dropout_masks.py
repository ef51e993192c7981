"""Dropout keep-masks drawn in bulk from random bits: ``keep / q`` with ``keep ~ Bernoulli(q)``.

``q`` is ``1 - p`` rounded to a multiple of ``2**-KEEP_BITS`` (exact for p = 0.5, 0.25, ...), and the
scale ``1 / q`` uses that ``q``, so every unit keeps its mean exactly. Random 64-bit words are combined
bitwise into bits that are 1 with probability ``q`` and read out 8 at a time from a small table: one
random bit per element for p = 0.5, many times cheaper on CPU than sampling a uniform per element.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

KEEP_BITS = 16  # resolution of the sampled keep probability: multiples of 2**-16

__all__ = ["KEEP_BITS", "keep_numerator", "scaled_keep_mask"]


def keep_numerator(p: float) -> int:
    """``round((1 - p) * 2**KEEP_BITS)``: the sampled keep probability is this over ``2**KEEP_BITS``."""
    return min(max(round((1.0 - p) * (1 << KEEP_BITS)), 0), 1 << KEEP_BITS)


def scaled_keep_mask(
    shape: tuple[int, ...],
    p: float,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
    workspace: Tensor | None = None,
) -> Tensor:
    """``keep / q`` of shape ``shape`` with i.i.d. ``keep ~ Bernoulli(q)``, ``q = keep_numerator(p) / 2**16``.

    ``q`` is ``1 - p`` to within ``2**-17`` (exactly for p = 0.5, 0.25, ...), and the scale ``1 / q`` uses the
    sampled ``q``, so ``E[keep / q] = 1`` exactly. Random 64-bit words are combined bitwise from the lowest
    set bit ``b_i`` of ``q = sum_i b_i 2**(i - 16)`` upwards: ``bits <- r | bits`` where ``b_i = 1``, else
    ``r & bits``, which makes every bit 1 with probability ``q`` (one word per 64 elements per binary digit of
    ``q``: a single word for p = 0.5). The bits are then read out 8 at a time from a ``(256, 8)`` table,
    into ``workspace`` (a flat tensor of ``64 * ceil(numel / 64)`` elements of ``dtype``) when given.

    Args:
        shape: shape of the mask.
        p: drop probability.
        generator: source of the random words (on ``device``).
        dtype: dtype of the result.
        device: device of the result.
        workspace: memory to write the result into, or None for a fresh tensor.
    """
    numerator, numel = keep_numerator(p), math.prod(shape)
    if numerator in (0, 1 << KEEP_BITS):
        return torch.full(shape, float(numerator > 0), dtype=dtype, device=device)
    words = -(-numel // 64)
    bits_W = None
    lowest = (numerator & -numerator).bit_length() - 1
    for digit in range(lowest, KEEP_BITS):
        random_W = torch.empty(words, dtype=torch.int64, device=device).random_(-(1 << 63), None, generator=generator)
        if bits_W is None:
            bits_W = random_W
        elif (numerator >> digit) & 1:
            bits_W = random_W.bitwise_or_(bits_W)
        else:
            bits_W = random_W.bitwise_and_(bits_W)
    table_256_8 = _scaled_bit_table(numerator, dtype, device)
    indices = bits_W.view(torch.uint8).int()
    if workspace is None:
        scaled = table_256_8.index_select(0, indices)  # (8 * words, 8)
    else:
        scaled = torch.index_select(table_256_8, 0, indices, out=workspace.view(8 * words, 8))
    return scaled.view(-1)[:numel].view(shape)


@functools.lru_cache(maxsize=16)
def _scaled_bit_table(numerator: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``table[v, j] = bit j of v, times 2**KEEP_BITS / numerator``: shape ``(256, 8)``."""
    bits_256_8 = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    return (bits_256_8.double() * ((1 << KEEP_BITS) / numerator)).to(device=device, dtype=dtype)
