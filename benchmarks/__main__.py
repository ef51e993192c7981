"""The benchmark suite: every comparison measured side by side in one run, one table of ratios.

    python -m benchmarks                  # the full suite (about 4 minutes on 2 CPU cores)
    python -m benchmarks --quick          # tiny sizes, to check that everything runs
    python -m benchmarks --only scoring batchbald
    python -m benchmarks --only segmentation   # opt-in parts run only when named

Parts (each a module of this package with a ``suite_rows(quick)`` function):

- ``scoring``: Entropy, head-only MC-dropout BALD (T = 20) and BADGE through the loop's scoring path,
  against one plain forward pass over the same pool (the floor), for an MLP and a CNN;
- ``batchbald``: the library's BatchBALD against a naive implementation from the paper's definition
  (and ``batchbald_redux`` when installed), with whether the picks are identical;
- ``diversity``: k-center greedy and BADGE at N = 200,000, time and extra peak memory;
- ``loop``: the active-learning loop's per-round overhead (all but fit and scoring) against the round;
- ``segmentation`` (opt-in, about 2.5 minutes): head-only MC-dropout BALD (T = 20) on 10,000 64×64 images
  against one plain forward, each in a fresh process with its peak memory (``segmentation_scoring``);
- ``experiment`` (opt-in, about 3 minutes): the whole digits experiment (26 fits of 300 steps, Random, Entropy
  and BALD, 2 seeds) through lightning_al, a plain PyTorch loop and baal when installed (``experiment``).

The learning curves of the multi-label and segmentation tasks are a separate command,
``python -m benchmarks.task_curves`` (about 10 minutes), as ``python -m benchmarks.learning_curves`` is.

The table is printed and written, with the machine and the command, to ``--output``
(``benchmarks/results/suite.md``; ``suite_quick.md`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from benchmarks.suite import SuiteRow

PARTS = {
    "scoring": "scoring",
    "batchbald": "batchbald",
    "diversity": "diversity",
    "loop": "loop_overhead",
    "segmentation": "segmentation_scoring",
    "experiment": "experiment",
}
# Parts left out of a plain `python -m benchmarks` (they run when named in --only).
OPT_IN = ("segmentation", "experiment")
DEFAULT_PARTS = [part for part in PARTS if part not in OPT_IN]
RESULTS = Path(__file__).resolve().parent / "results"
# Warnings that Lightning repeats on every predict call and that say nothing about the measurements.
_QUIET = (".*LeafSpec.*", ".*does not have many workers.*", ".*predict returned None.*")


def machine() -> str:
    """CPU model and count, torch version and threads, and the GPU if torch sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}{gpu}"


def markdown(rows: list[SuiteRow]) -> str:
    lines = ["| benchmark | case | seconds | ratio | against | note |", "|---|---|---|---|---|---|"]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.3g}"
        against = row.reference or "(reference)"
        lines.append(f"| {row.benchmark} | {row.case} | {row.seconds:.3f} | {ratio} | {against} | {row.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every part runs")
    parser.add_argument(
        "--only", nargs="+", choices=list(PARTS), help=f"run these parts only (opt-in: {', '.join(OPT_IN)})"
    )
    parser.add_argument("--output", type=Path, help="markdown file (default: benchmarks/results/suite.md)")
    args = parser.parse_args(argv)
    for message in _QUIET:
        warnings.filterwarnings("ignore", message=message)
    output = args.output or RESULTS / ("suite_quick.md" if args.quick else "suite.md")
    rows: list[SuiteRow] = []
    started = time.perf_counter()
    for part in args.only or DEFAULT_PARTS:
        part_start = time.perf_counter()
        print(f"[benchmarks] {part} ...", flush=True)
        module = importlib.import_module(f"benchmarks.{PARTS[part]}")
        part_rows = module.suite_rows(quick=args.quick)
        rows += part_rows
        print(markdown(part_rows), flush=True)
        print(f"[benchmarks] {part}: {time.perf_counter() - part_start:.0f} s", flush=True)
    command = (
        "python -m benchmarks"
        + (" --quick" if args.quick else "")
        + (f" --only {' '.join(args.only)}" if args.only else "")
    )
    text = (
        f"# Benchmark suite\n\nMachine: {machine()}.\nCommand: `{command}` ({time.perf_counter() - started:.0f} s).\n"
        "Each ratio divides a case by the reference named beside it, measured in the same run.\n\n"
        f"{markdown(rows)}\n"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"\n{text}\nwritten to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
