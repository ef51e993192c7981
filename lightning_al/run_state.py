"""A run directory's resumable state: one ``state.pt`` written atomically after every labelling step."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from lightning_al._atomic import atomic_open

STATE_FILE = "state.pt"
FORMAT = 1


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` via a temporary file, fsync and rename (never half-written).

    Raises:
        OSError: the write failed (disk full, file too large, I/O error); the message names ``path`` and the
            cause, and the file previously at ``path`` is left intact.
    """
    try:
        with atomic_open(path, "wb") as handle:
            torch.save(obj, handle)
    except (OSError, RuntimeError) as error:  # torch.save reports failed writes as RuntimeError too
        cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        kept = "the previous state there is intact" if Path(path).exists() else "nothing was written there"
        message = f"Could not save the run state to `{path}` ({cause}); {kept}."
        code = getattr(error, "errno", None)
        raise (OSError(code, message) if isinstance(code, int) else OSError(message)) from error


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state written by `save_atomic` with ``weights_only=True`` (tensors, numbers, strings and
    containers only: nothing else is unpickled), refusing files that are not a lightning_al run state."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(
            f"Expected `{path}` to be a lightning_al run state, but it could not be read ({error})."
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"Expected `{path}` to be a lightning_al run state of format {FORMAT}, but got "
            f"{'format ' + repr(state.get('format')) if isinstance(state, dict) else type(state).__name__}."
        )
    return state


def check_fingerprint(path: str | os.PathLike, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a run whose pool or strategy differ from the current ones, naming each difference."""
    differences = [
        f"{key}: saved {saved.get(key)!r}, now {value!r}" for key, value in current.items() if saved.get(key) != value
    ]
    if differences:
        raise ValueError(
            f"Expected the run in `{path}` to match this loop and datamodule, but they differ ("
            + "; ".join(differences)
            + "). Use another `output_dir` for a different experiment."
        )
