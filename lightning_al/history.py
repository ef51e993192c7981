"""The per-round record of an active-learning run, kept as plain dicts and JSON on disk."""

from __future__ import annotations

import json
import os
from typing import Any

from lightning_al._atomic import atomic_open


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file, fsync and rename (never half-written)."""
    with atomic_open(path, "w") as handle:
        json.dump(data, handle, indent=1)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of a Lightning metrics dict as plain floats."""
    out = {}
    for name, value in metrics.items():
        if (hasattr(value, "numel") and value.numel() == 1) or (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            out[name] = float(value)
    return out
