"""One row of the benchmark suite's table (``python -m benchmarks``).

Every benchmark module that takes part in the suite exposes ``suite_rows(quick: bool) -> list[SuiteRow]``:
it measures its cases side by side in one run and returns one row per case, each with the ratio to
the reference it was measured against.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SuiteRow:
    """One measured case.

    Attributes:
        benchmark: the comparison this row belongs to, e.g. ``"pool scoring, N=200,000"``.
        case: what was measured, e.g. ``"BALD, head-only dropout (T=20)"``.
        seconds: its time (the fastest of the benchmark's repeats).
        reference: what ``ratio`` divides by, e.g. ``"plain forward"``; empty for a reference row.
        ratio: ``seconds`` over the reference's seconds (or another stated quantity); None when not applicable.
        note: anything else measured, e.g. ``"identical picks"`` or ``"peak +39 MiB"``.
    """

    benchmark: str
    case: str
    seconds: float
    reference: str = ""
    ratio: float | None = None
    note: str = ""
