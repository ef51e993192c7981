"""The per-round record of an active-learning run, kept as plain dicts and JSON on disk."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file, fsync and rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of a Lightning metrics dict as plain floats."""
    out = {}
    for name, value in metrics.items():
        if (hasattr(value, "numel") and value.numel() == 1) or (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            out[name] = float(value)
    return out
