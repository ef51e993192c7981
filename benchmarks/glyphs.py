"""Glyphs: a generated 8×8 image dataset of ten stroke shapes, the learning-curve benchmark's second dataset.

Every image is one of ten shapes drawn with strokes on a 12×12 canvas (horizontal bar, vertical bar,
diagonal, anti-diagonal, plus, cross, square outline, ring, corner, tee), each at a random offset and
stroke intensity, softened by a 3×3 box blur,
cropped to the central 8×8 window after a random shift of up to ``max_shift`` pixels, then with pixel noise
of standard deviation ``noise`` and clipped to [0, 1]. Items are ``(x, y)`` with ``x`` of shape ``(64,)``, as
scikit-learn's digits, so every benchmark arm runs on it unchanged.

Unlike digits, the classes are defined by shape alone under shift and noise, some pairs (plus / tee,
square / ring, bar / corner) differ in a few pixels, and a shift moves a stroke off the window, so the task
needs more labels than digits and the nearest neighbours in pixel space are less reliable.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

CLASSES = ("hbar", "vbar", "diagonal", "antidiagonal", "plus", "cross", "square", "ring", "corner", "tee")
_CANVAS = 12  # the shapes are drawn here, then an 8×8 window is cut out
_SIZE = 8


def _template(name: str) -> Tensor:
    """The shape ``name`` drawn in 1-pixel strokes on the canvas, centred, ``(12, 12)``."""
    c = torch.zeros(_CANVAS, _CANVAS)
    lo, hi, mid = 3, 8, 5  # the shape's box on the canvas, inclusive, and its centre row/column
    span = torch.arange(lo, hi + 1)
    if name in ("hbar", "plus", "tee"):
        c[lo if name == "tee" else mid, lo : hi + 1] = 1
    if name in ("vbar", "plus", "tee"):
        c[lo : hi + 1, mid] = 1
    if name in ("diagonal", "cross"):
        c[span, span] = 1
    if name in ("antidiagonal", "cross"):
        c[span, hi + lo - span] = 1
    if name == "square":
        c[lo, lo : hi + 1] = c[hi, lo : hi + 1] = 1
        c[lo : hi + 1, lo] = c[lo : hi + 1, hi] = 1
    if name == "ring":
        y, x = torch.meshgrid(torch.arange(_CANVAS), torch.arange(_CANVAS), indexing="ij")
        radius = ((y - 5.5) ** 2 + (x - 5.5) ** 2).sqrt()
        c[(radius > 2.0) & (radius < 3.2)] = 1
    if name == "corner":
        c[lo : hi + 1, lo] = 1
        c[hi, lo : hi + 1] = 1
    return c


def make_glyphs(n: int, seed: int, max_shift: int = 1, noise: float = 0.1) -> TensorDataset:
    """``n`` glyph images, classes balanced (``n // 10`` each, the rest to the first classes), drawn with ``seed``.

    Args:
        n: number of images.
        seed: seed of every random draw (class order, shifts, intensities, noise).
        max_shift: largest shift in pixels of the 8×8 window, in each direction.
        noise: standard deviation of the added pixel noise.

    Returns:
        a ``TensorDataset`` of ``x`` ``(n, 64)`` in [0, 1] (float32) and ``y`` ``(n,)`` in 0..9 (int64).
    """
    if n < 1 or max_shift < 0 or max_shift > (_CANVAS - _SIZE) // 2 or noise < 0:
        raise ValueError(f"Expected n >= 1, 0 <= max_shift <= 2 and noise >= 0, but got {n}, {max_shift}, {noise}.")
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(CLASSES)
    y = y[torch.randperm(n, generator=generator)]
    templates = torch.stack([_template(name) for name in CLASSES])  # (10, 12, 12)
    images = templates[y] * (0.6 + 0.4 * torch.rand(n, 1, 1, generator=generator))
    blurred = torch.nn.functional.avg_pool2d(images[:, None], 3, stride=1, padding=1)[:, 0]
    images = (images + blurred) / 2  # soft stroke edges; at most 1, so the clip below only bounds the noise
    offset = (_CANVAS - _SIZE) // 2
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    rows = offset + shifts[:, :1] + torch.arange(_SIZE)  # (n, 8)
    cols = offset + shifts[:, 1:] + torch.arange(_SIZE)
    windows = images[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (n, 8, 8)
    windows = windows + noise * torch.randn(windows.shape, generator=generator)
    return TensorDataset(windows.clamp(0, 1).reshape(n, _SIZE * _SIZE).float(), y.long())


def glyphs(pool_size: int = 1200, test_size: int = 600) -> tuple[TensorDataset, TensorDataset]:
    """The benchmark's glyph pool and test set (seeds 0 and 1: no image is in both)."""
    return make_glyphs(pool_size, seed=0), make_glyphs(test_size, seed=1)
