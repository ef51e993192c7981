"""Tensor validation shared by the functional kernels.

Argument checks (types, ranges of Python values) live with each function; these
helpers check tensor *contents* and shapes so every kernel refuses bad input the same
way, with a message that names the argument and what was received.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__}"


def check_finite(name: str, values: Tensor) -> None:
    """Raise if ``values`` holds NaN or inf; the message lists the offending rows."""
    bad = ~torch.isfinite(values)
    if bad.any():
        rows = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten()
        shown = rows[:10].tolist()
        more = f" (and {rows.numel() - len(shown)} more)" if rows.numel() > len(shown) else ""
        raise ValueError(f"Expected `{name}` to be finite, but rows {shown}{more} contain NaN or inf.")


def check_probs(name: str, probs: Tensor, ndim: int, class_dim: int = -1, extra_dims: bool = False) -> None:
    """Check that ``probs`` is a floating tensor of ``ndim`` dims whose axis ``class_dim`` is a distribution.

    Rows must be finite, in ``[0, 1]`` and sum to 1 (tolerance scaled to the dtype). With ``extra_dims``,
    trailing unit axes after the first ``ndim`` are accepted (e.g. ``(N, T, C, H, W)`` with ``ndim=3``).
    """
    if not isinstance(probs, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {_describe(probs)}.")
    if probs.ndim != ndim and not (extra_dims and probs.ndim > ndim):
        axes = "N, C" if ndim == 2 else "N, T, C"
        raise ValueError(
            f"Expected `{name}` to have shape ({axes}{', ...' if extra_dims else ''}), but got {_describe(probs)}."
        )
    if not probs.is_floating_point():
        raise TypeError(f"Expected `{name}` to hold floating-point probabilities, but got {_describe(probs)}.")
    if probs.shape[class_dim] < 1:
        raise ValueError(f"Expected `{name}` to have at least one class, but got {_describe(probs)}.")
    if probs.numel() == 0:
        return
    lowest, highest = torch.aminmax(probs)  # one pass; NaN or inf fail the test and get the detailed checks
    if not (lowest >= 0 and highest <= 1):
        _refuse_outside(name, probs)
    atol = 1e-2 if torch.finfo(probs.dtype).bits <= 16 else 1e-3
    sums = probs.sum(dim=class_dim).double().reshape(probs.shape[0], -1)  # summed in place: no float64 copy
    low, high = torch.aminmax(sums)  # one pass; the rows are looked for only when a sum is off
    if max(float(high) - 1, 1 - float(low)) > atol:
        worst_per_row = (sums - 1).abs().amax(dim=1)
        row = int(worst_per_row.argmax())
        raise ValueError(
            f"Expected each distribution in `{name}` to sum to 1, but row {row} has a distribution "
            f"summing to {float(sums[row][(sums[row] - 1).abs().argmax()]):.4g}. Apply softmax to logits first."
        )


def _refuse_outside(name: str, probs: Tensor) -> None:
    """Raise for the rows of ``probs`` that hold NaN or inf, else for the first with a value outside ``[0, 1]``."""
    check_finite(name, probs)
    outside = ((probs < 0) | (probs > 1)).reshape(probs.shape[0], -1).any(dim=1)
    raise ValueError(
        f"Expected `{name}` to hold probabilities in [0, 1], but got values in "
        f"[{probs.min().item():.4g}, {probs.max().item():.4g}] (first at row {int(outside.nonzero()[0])}). "
        "Apply softmax to logits first."
    )


def check_scores(name: str, scores: Tensor) -> None:
    """Check a 1-D finite score vector."""
    if not isinstance(scores, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {_describe(scores)}.")
    if scores.ndim != 1:
        raise ValueError(f"Expected `{name}` to have shape (N,), but got {_describe(scores)}.")
    if scores.is_floating_point() or scores.is_complex():
        check_finite(name, scores.reshape(-1, 1))


def as_count(name: str, value: object) -> int:
    """``value`` as a Python int (any integer type, numpy's included, but not bool), or a TypeError."""
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.is_floating_point()):
        raise TypeError(f"Expected `{name}` to be an int, but got {type(value).__name__}.")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"Expected `{name}` to be an int, but got {type(value).__name__}.") from None


def check_embeddings(
    name: str, values: Tensor, num_rows: int | None = None, rows_of: str = "", finite: bool = True
) -> None:
    """A floating 2-D tensor (finite unless ``finite=False``), with ``num_rows`` rows when given (as ``rows_of``)."""
    if not isinstance(values, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {_describe(values)}.")
    if values.ndim != 2:
        raise ValueError(f"Expected `{name}` to have shape (N, D), but got {_describe(values)}.")
    if not values.is_floating_point():
        raise TypeError(f"Expected `{name}` to hold floating-point values, but got {_describe(values)}.")
    if num_rows is not None and values.shape[0] != num_rows:
        raise ValueError(f"Expected `{name}` to have {num_rows} rows (as `{rows_of}`), but got {_describe(values)}.")
    if finite and values.numel():
        check_finite(name, values)


def check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"Expected `generator` to be a torch.Generator or None, but got {type(generator).__name__}.")
