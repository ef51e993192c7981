"""Argument checks shared by constructors: one wording for every refusal."""

from __future__ import annotations

from typing import Any


def check_int(name: str, value: Any, minimum: int | None = None, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an int (not a bool) ``>= minimum``, or None when ``optional``."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        expected = "an int" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if optional else "")
        raise ValueError(f"Expected `{name}` to be {expected}, but got {value!r}.")
