"""Time and memory of BALD on a segmentation pool: T = 20 MC-dropout passes against one plain forward.

The pool is ``--n`` (10,000) :class:`~lightning_al.datasets.Shapes` images of ``--size`` × ``--size`` (64 × 64)
pixels, scored by :class:`~lightning_al.models.SmallUNet` (width 16, untrained: the cost does not depend on the
weights), whose only dropout is the ``Dropout2d`` before its 1×1 head. Measured side by side in one run, each
method in a fresh process (so its peak resident memory is its own), the methods taking turns over
``--repeats`` runs; the fastest run counts:

- **floor**: one plain forward over the pool loader, in eval mode under ``torch.inference_mode``
  (:func:`benchmarks.scoring.plain_forward`);
- **Entropy**: one pass, scored per pixel and averaged per image, through the library's streaming path
  (:func:`lightning_al.scoring.stream_top_k` in a ``Trainer``, as the loop calls it);
- **BALD**: ``BALD(mc_samples=20)``, i.e. ``MCDropout(20, consistent_masks=True)``, through the same path: the
  encoder and decoder once per batch, the head's ``T`` passes, the per-pixel mutual information and its image
  mean, keeping a running top ``k``.

Peak memory is the measuring process's ``VmHWM`` (peak resident set), restarted with ``/proc/self/clear_refs`` once
the process holds the pool (images as float32) and the model, so loading the pool file does not count: *peak*
in all, and *over idle*: above the resident memory at that point. The CPU time (user and system) and the minor
page faults of the timed run come from ``getrusage``; system time is mostly the kernel zeroing fresh pages for
large temporary tensors.

``--profile`` also times, in this process on ``--profile-batches`` batches held in memory, each stage of
BALD's per-batch work: the forward before the head, the MC passes (``MCDropout.predict``: prefix, ``T`` head
passes, softmax), the finite-value check the scorer makes, the score (``BALD.batch_scores``: the per-pixel
kernel and the mean over pixels) and, for comparison, the score computed the ``(N·H·W, T, C)`` way
(``Segmentation.mc_units`` permuted copy, then ``functional.bald``), and the torch operators that take the
most time in each stage (``torch.profiler``). ``--allocator`` adds the floor and BALD run with glibc told to
keep freed blocks for reuse (:data:`KEEP_FREED`), at the batch size and at half of it.

Run: ``python -m benchmarks.segmentation_scoring [--n 10000] [--size 64] [--mc-samples 20] [--batch-size 64]
[--repeats 2] [--profile] [--allocator]`` (about 10 minutes with both flags on 2 CPU cores). Results go to the
``segmentation_scoring`` section of ``benchmarks/results/tasks.md`` (``--output``; ``--no-write`` prints only).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import lightning_al as al
from benchmarks.scoring import plain_forward
from benchmarks.suite import SuiteRow
from lightning_al import functional as F
from lightning_al.datasets import Shapes
from lightning_al.models import SmallUNet
from lightning_al.outputs import MC_PROBS, PoolOutputs
from lightning_al.scoring import _refuse_non_finite, stream_top_k
from lightning_al.tasks import Segmentation

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "tasks.md"
SECTION = "segmentation_scoring"
METHODS = ("floor", "entropy", "bald")
QUERY = 100
WIDTH = 16
_QUIET = (".*LeafSpec.*", ".*does not have many workers.*", ".*predict returned None.*", ".*GPU available.*")


def _status_mib(field: str) -> float | None:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process in MiB, None without ``/proc``."""
    try:
        with open("/proc/self/status") as status:
            line = next((line for line in status if line.startswith(f"{field}:")), None)
    except OSError:
        return None
    return None if line is None else int(line.split()[1]) / 1024


def _reset_peak() -> bool:
    """Restart the peak-RSS count at the current RSS (Linux ``clear_refs``); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def _peak_mib() -> float:
    return _status_mib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_pool(n: int, size: int, path: Path, seed: int = 0) -> float:
    """Write ``n`` Shapes images (float32) and masks (uint8) to ``path``; returns the seconds it took."""
    start = time.perf_counter()
    images, masks = Shapes(n, size=size, seed=seed).tensors
    torch.save({"images": images, "masks": masks.to(torch.uint8)}, path)
    return time.perf_counter() - start


def load_pool(path: Path, batch_size: int) -> al.ActiveDataModule:
    data = torch.load(path, weights_only=True)
    pool = TensorDataset(data["images"], data["masks"])
    return al.ActiveDataModule(pool, task=Segmentation(3), eval_batch_size=batch_size)


def seeded_model(seed: int = 0) -> SmallUNet:
    torch.manual_seed(seed)
    return SmallUNet(in_channels=1, num_classes=3, width=WIDTH).eval()


def _trainer() -> Any:
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def streamed_scoring(strategy: al.strategies.Strategy) -> Callable[[nn.Module, al.ActiveDataModule], Tensor]:
    """The library's streaming path for ``strategy`` on the datamodule's task: ``stream_top_k`` in a Trainer."""

    def run(model: nn.Module, dm: al.ActiveDataModule) -> Tensor:
        estimator = strategy.estimator or al.estimators.Softmax()
        estimator.bind(dm.task)
        needs = strategy.requires_for(dm.task)
        top = stream_top_k(
            _trainer(), model, dm.pool_dataloader(), estimator, needs, dm.inputs, strategy.batch_scores, QUERY
        )
        return top.result()[0]

    return run


def worker(method: str, data: Path, batch_size: int, mc_samples: int, threads: int) -> dict[str, Any]:
    """One timed run of ``method`` in this (fresh) process: seconds, peak RSS and RSS when idle."""
    torch.set_num_threads(threads)
    for message in _QUIET:
        warnings.filterwarnings("ignore", message=message)
    dm = load_pool(data, batch_size)
    model = seeded_model()
    reset = _reset_peak()  # the peak of loading the pool file is not the method's
    idle = (_status_mib("VmRSS") if reset else None) or _peak_mib()
    if method == "floor":
        run: Callable[[], Any] = lambda: plain_forward(model, dm)  # noqa: E731
    else:
        strategy = al.strategies.Entropy() if method == "entropy" else al.strategies.BALD(mc_samples=mc_samples)
        scoring = streamed_scoring(strategy)
        run = lambda: scoring(model, dm)  # noqa: E731
    warm_up(method, model, dm, mc_samples)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "method": method,
        "seconds": seconds,
        "peak_mib": _peak_mib(),
        "idle_mib": idle,
        "user_s": after.ru_utime - before.ru_utime,
        "system_s": after.ru_stime - before.ru_stime,
        "minor_faults": after.ru_minflt - before.ru_minflt,
    }


def warm_up(method: str, model: nn.Module, dm: al.ActiveDataModule, mc_samples: int) -> None:
    """``method`` on the pool's first batch, untimed (one-time kernel set-up and allocations)."""
    first = dm.unlabelled_ids[: dm.eval_batch_size]
    if method == "floor":
        with torch.inference_mode():
            model(dm.inputs(next(iter(dm.pool_dataloader(first)))))
        return
    strategy = al.strategies.Entropy() if method == "entropy" else al.strategies.BALD(mc_samples=mc_samples)
    estimator = strategy.estimator or al.estimators.Softmax()
    estimator.bind(dm.task)
    needs = strategy.requires_for(dm.task)
    stream_top_k(_trainer(), model, dm.pool_dataloader(first), estimator, needs, dm.inputs, strategy.batch_scores, 1)


# glibc settings that keep freed blocks of up to 32 MiB in the heap for reuse instead of unmapping them (by
# default blocks above a dynamic threshold are unmapped on free, and the next allocation of that size is fresh
# pages the kernel must zero: minor page faults, counted as system time).
KEEP_FREED = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def measure(
    data: Path,
    batch_size: int,
    mc_samples: int,
    repeats: int,
    threads: int,
    methods: tuple[str, ...] = METHODS,
    env: dict[str, str] | None = None,
) -> dict[str, dict[str, float]]:
    """Per method: the fastest of ``repeats`` fresh-process runs (``env`` added to their environment), and the
    largest peak and idle RSS seen."""
    best: dict[str, dict[str, float]] = {}
    for repeat in range(repeats):
        for method in methods if repeat % 2 == 0 else methods[::-1]:
            command = [
                sys.executable, "-m", "benchmarks.segmentation_scoring", "--worker", method, "--data", str(data),
                "--batch-size", str(batch_size), "--mc-samples", str(mc_samples), "--threads", str(threads),
            ]  # fmt: skip
            environment = {**os.environ, **(env or {})}
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"Expected the {method} measurement to succeed, but it failed:\n{done.stderr[-3000:]}"
                )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            old = best.get(method)
            fastest = old if old and old["seconds"] <= result["seconds"] else result  # its CPU times go with it
            best[method] = {
                **{key: fastest[key] for key in ("seconds", "user_s", "system_s", "minor_faults")},
                "peak_mib": max(result["peak_mib"], old["peak_mib"]) if old else result["peak_mib"],
                "idle_mib": max(result["idle_mib"], old["idle_mib"]) if old else result["idle_mib"],
            }
    return best


# ----- profile of BALD's per-batch stages ---------------------------------------------------------------
def before_head(model: SmallUNet, x: Tensor) -> Tensor:
    """``SmallUNet.forward`` up to the head's input (the part MC dropout computes once per batch)."""
    skip = model.down(x)
    bottom = model.bottom(nn.functional.max_pool2d(skip, 2))
    return model.decode(torch.cat([skip, model.up(bottom)], dim=1))


def profile(
    data: Path, batch_size: int, mc_samples: int, batches: int, threads: int
) -> tuple[dict[str, float], dict[str, list[tuple[str, float, int]]]]:
    """Seconds of each stage of BALD's work summed over ``batches`` in-memory batches (fastest of 2 sweeps), and
    the torch operators that take the most time in each of BALD's stages (:data:`BALD_STAGES`)."""
    torch.set_num_threads(threads)
    dm = load_pool(data, batch_size)
    model = seeded_model()
    task = dm.task
    strategy = al.strategies.BALD(mc_samples=mc_samples)
    estimator = strategy.estimator
    estimator.bind(task)
    inputs = [dm.inputs(batch) for batch, _ in zip(dm.pool_dataloader(), range(batches), strict=False)]
    needs = strategy.requires_for(task)
    stages: dict[str, Callable[[Tensor, dict[str, Tensor]], Any]] = {
        "plain forward": lambda x, kept: model(x),
        "forward before the head": lambda x, kept: before_head(model, x),
        "MC passes (MCDropout.predict)": lambda x, kept: kept.update(estimator.predict(model, x, needs)),
        "finite-value check of mc_probs (the scorer's)": lambda x, kept: _refuse_non_finite(
            torch.arange(x.shape[0]), {MC_PROBS: kept[MC_PROBS]}
        ),
        "score: BALD.batch_scores (per-pixel kernel + mean)": lambda x, kept: strategy.batch_scores(
            PoolOutputs(ids=torch.arange(x.shape[0]), values={MC_PROBS: kept[MC_PROBS]}, task=task)
        ),
        "(N·HW, T, C) copy: mc_units(...).reshape": lambda x, kept: kept.update(
            units=task.mc_units(kept[MC_PROBS]).reshape(-1, *kept[MC_PROBS].shape[1:3])
        ),
        "functional.bald on (N·HW, T, C)": lambda x, kept: F.bald(kept["units"]),
    }
    best = dict.fromkeys(stages, float("inf"))
    with torch.inference_mode():
        for _ in range(2):
            totals = dict.fromkeys(stages, 0.0)
            for x in inputs:
                kept: dict[str, Tensor] = {}
                for name, stage in stages.items():
                    start = time.perf_counter()
                    stage(x, kept)
                    totals[name] += time.perf_counter() - start
            best = {name: min(best[name], totals[name]) for name in stages}
    return best, _operator_profile(inputs, [(name, stages[name]) for name in BALD_STAGES])


# The stages of BALD's streamed path, in order (the rest of the profile is for comparison).
BALD_STAGES = (
    "MC passes (MCDropout.predict)",
    "finite-value check of mc_probs (the scorer's)",
    "score: BALD.batch_scores (per-pixel kernel + mean)",
)


def _operator_profile(
    inputs: list[Tensor], stages: list[tuple[str, Callable[[Tensor, dict[str, Tensor]], Any]]], top: int = 6
) -> dict[str, list[tuple[str, float, int]]]:
    """Per stage, its ``top`` torch operators by self CPU seconds over ``inputs`` (``torch.profiler``)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    result = {}
    with torch.inference_mode():
        kept_per_batch: list[dict[str, Tensor]] = [{} for _ in inputs]
        for name, stage in stages:
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                for x, kept in zip(inputs, kept_per_batch, strict=True):
                    stage(x, kept)
            events = sorted(prof.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
            result[name] = [(event.key, event.self_cpu_time_total / 1e6, event.count) for event in events[:top]]
    return result


# ----- report ---------------------------------------------------------------------------------------------
def machine(threads: int) -> str:
    cpu = "CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}, no GPU used"


def table(results: dict[str, dict[str, float]], mc_samples: int) -> str:
    names = {
        "floor": "plain forward over the pool loader (floor)",
        "entropy": "Entropy: one pass, streamed (`stream_top_k`)",
        "bald": f"BALD, T = {mc_samples} (head-only MC dropout, consistent masks), streamed",
    }
    floor = results["floor"]["seconds"]
    lines = [
        "| method | seconds | × floor | CPU user / system s | minor page faults | peak RSS | over idle |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, values in results.items():
        lines.append(
            f"| {names[method]} | {values['seconds']:.2f} | **{values['seconds'] / floor:.2f}** | "
            f"{values.get('user_s', 0.0):.1f} / {values.get('system_s', 0.0):.1f} | "
            f"{values.get('minor_faults', 0):,} | {values['peak_mib']:.0f} MiB | "
            f"+{values['peak_mib'] - values['idle_mib']:.0f} MiB |"
        )
    return "\n".join(lines)


def operator_table(operators: dict[str, list[tuple[str, float, int]]]) -> str:
    lines = ["| stage | torch operator | self CPU seconds | calls |", "|---|---|---|---|"]
    for stage, rows in operators.items():
        for key, seconds, count in rows:
            lines.append(f"| {stage} | `{key}` | {seconds:.3f} | {count} |")
    return "\n".join(lines)


def allocator_table(default: dict[str, dict[str, float]], kept: dict[int, dict[str, dict[str, float]]]) -> str:
    """Floor and BALD with glibc keeping freed memory (:data:`KEEP_FREED`), per batch size, against the default."""
    floor = default["floor"]["seconds"]
    lines = [
        "| method | batch | seconds | × floor, same settings | × default floor | CPU user / system s "
        "| minor page faults | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch_size, results in kept.items():
        for method, name in (("floor", "plain forward (floor)"), ("bald", "BALD, streamed")):
            values = results[method]
            lines.append(
                f"| {name} | {batch_size} | {values['seconds']:.2f} | "
                f"**{values['seconds'] / results['floor']['seconds']:.2f}** | {values['seconds'] / floor:.2f} | "
                f"{values['user_s']:.1f} / {values['system_s']:.1f} | {values['minor_faults']:,} | "
                f"{values['peak_mib']:.0f} MiB |"
            )
    return "\n".join(lines)


def profile_table(stages: dict[str, float], batches: int, batch_size: int) -> str:
    forward = stages["plain forward"]
    lines = [
        f"| stage ({batches} batches of {batch_size}, in memory) | seconds | × plain forward |",
        "|---|---|---|",
    ]
    for name, seconds in stages.items():
        lines.append(f"| {name} | {seconds:.3f} | {seconds / forward:.2f} |")
    head = stages["MC passes (MCDropout.predict)"] - stages["forward before the head"]
    lines.append(f"| of the MC passes: all but the forward before the head | {head:.3f} | {head / forward:.2f} |")
    return "\n".join(lines)


def suite_rows(quick: bool = False) -> list[SuiteRow]:
    """The floor and BALD (T = 20) on 10,000 64×64 images (quick: 200 of 32×32), each in a fresh process."""
    n, size, repeats = (200, 32, 1) if quick else (10_000, 64, 1)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "pool.pt"
        make_pool(n, size, data)
        results = measure(data, 64, 20, repeats, torch.get_num_threads(), methods=("floor", "bald"))
    benchmark = f"segmentation pool scoring, SmallUNet, N={n:,} {size}×{size}"
    floor, bald = results["floor"], results["bald"]

    def memory(values: dict[str, float]) -> str:
        return f"peak RSS {values['peak_mib']:.0f} MiB (+{values['peak_mib'] - values['idle_mib']:.0f} over idle)"

    return [
        SuiteRow(benchmark, "plain forward over the pool (floor)", floor["seconds"], note=memory(floor)),
        SuiteRow(
            benchmark,
            "BALD, head-only MC dropout (T=20), streamed",
            bald["seconds"],
            "floor",
            bald["seconds"] / floor["seconds"],
            memory(bald),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="pool images")
    parser.add_argument("--size", type=int, default=64, help="image height and width (even)")
    parser.add_argument("--mc-samples", type=int, default=20, help="MC-dropout passes T")
    parser.add_argument("--batch-size", type=int, default=64, help="pool batch size")
    parser.add_argument("--repeats", type=int, default=2, help="fresh-process runs per method (the fastest counts)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per measurement")
    parser.add_argument("--profile", action="store_true", help="also time BALD's per-batch stages")
    parser.add_argument(
        "--allocator", action="store_true", help="also floor and BALD with glibc keeping freed memory (1 run each)"
    )
    parser.add_argument("--profile-batches", type=int, default=8, help="batches the profile times")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file whose section is (re)written")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("n", "mc_samples", "batch_size", "repeats", "threads", "profile_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.size < 2 or args.size % 2:
        parser.error(f"--size must be even and >= 2, got {args.size}")
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.data, args.batch_size, args.mc_samples, args.threads)))
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "pool.pt"
        generated = make_pool(args.n, args.size, data)
        print(f"pool of {args.n:,} {args.size}×{args.size} images generated in {generated:.1f} s", flush=True)
        results = measure(data, args.batch_size, args.mc_samples, args.repeats, args.threads)
        kept = {}
        if args.allocator:
            for batch_size in dict.fromkeys((args.batch_size, max(1, args.batch_size // 2))):
                kept[batch_size] = measure(
                    data, batch_size, args.mc_samples, 1, args.threads, ("floor", "bald"), env=KEEP_FREED
                )
        profiled = (
            profile(data, args.batch_size, args.mc_samples, args.profile_batches, args.threads)
            if args.profile
            else None
        )
    ratio = results["bald"]["seconds"] / results["floor"]["seconds"]
    flags = [flag for flag in (argv if argv is not None else sys.argv[1:]) if flag != "--no-write"]
    command = " ".join(["python -m benchmarks.segmentation_scoring", *flags])
    text = (
        "## Pool scoring on segmentation: BALD against one forward\n\n"
        f"`{command}` ({time.perf_counter() - started:.0f} s). Pool: {args.n:,} `Shapes` images of "
        f"{args.size}×{args.size} (float32 images, {args.n * args.size**2 * 4 / 2**20:.0f} MiB), batches of "
        f"{args.batch_size}; model: `SmallUNet(width={WIDTH})` in eval mode, `Dropout2d(0.25)` before its 1×1 head "
        f"only. Machine: {machine(args.threads)}. Each method in a fresh process after one untimed batch, fastest "
        f"of {args.repeats} run{'s' if args.repeats > 1 else ''} taking turns; *peak RSS* is the process's peak "
        "resident memory counted from the moment it holds the pool and the model (`VmHWM` after "
        "`/proc/self/clear_refs`), *over idle* its rise above the resident memory at that moment; CPU times and "
        "minor page faults of the fastest run from `getrusage`.\n\n"
        f"{table(results, args.mc_samples)}\n\n"
        f"BALD with T = {args.mc_samples} costs **{ratio:.2f}×** one plain forward (goal: ≤ 2×)."
    )
    if kept:
        settings = " ".join(f"{key}={value}" for key, value in KEEP_FREED.items())
        text += (
            "\n\nThe same measurements with glibc told to keep freed blocks of up to 32 MiB for reuse "
            f"(`{settings}`, one run each). By default a freed block above glibc's dynamic threshold is "
            "returned to the kernel, and the next batch's tensors of that size start as fresh pages the kernel "
            "zeroes (the minor page faults, counted as system time); blocks over 32 MiB are always returned.\n\n"
            f"{allocator_table(results, kept)}"
        )
    if profiled is not None:
        stages, operators = profiled
        text += (
            f"\n\nWhere BALD's time goes, per stage, summed over {args.profile_batches} batches held in memory "
            "(fastest of 2 sweeps; the last two rows are the `(N·H·W, T, C)` form of the score, for comparison):\n\n"
            f"{profile_table(stages, args.profile_batches, args.batch_size)}\n\n"
            "The torch operators with the most self CPU time in each of BALD's stages (`torch.profiler`, same "
            "batches; the profiler adds its own overhead):\n\n"
            f"{operator_table(operators)}"
        )
    print(text, flush=True)
    if not args.no_write:
        from benchmarks.task_curves import write_section

        write_section(args.output, SECTION, text)
        print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
