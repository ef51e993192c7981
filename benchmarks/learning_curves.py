"""Learning curves of every strategy the library ships, against Random, on digits and on imbalanced digits.

For each setting of :data:`benchmarks.settings.SETTINGS` and each of its arms (every strategy in
:data:`benchmarks.arms.ARMS`), runs the setting's protocol over its seeds, in parallel over the
CPU cores, with one progress bar over all rounds. Writes to ``--output`` (``benchmarks/results``):

- ``<setting>.md``: the protocol, then per strategy the labels needed to reach 80 / 90 / 95 % test
  accuracy, the area under the learning curve normalised to Random's, and seconds per round;
- ``<setting>.png``: the learning curves (mean ± std over seeds), one panel per strategy family;
- ``runs/<setting>/<strategy>_seed<k>/``: each run's ``history.json`` and resumable ``state.pt``.

An interrupted benchmark continues where it stopped when run again (finished runs are read back,
unfinished ones resume after their last completed round); a changed protocol is refused rather
than mixed into old runs. ``--quick`` runs a tiny protocol (2 rounds of 2 epochs, 1 seed) into
``benchmarks/results/quick``.

    python -m benchmarks.learning_curves                    # the full benchmark
    python -m benchmarks.learning_curves --quick --strategies Random Entropy
    python -m benchmarks.learning_curves --settings digits_imbalanced --seeds 5 --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import sys
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from tqdm import tqdm

import lightning_al as al
from benchmarks.arms import ARMS, FAMILIES, VARIANT_ARMS
from benchmarks.curve_summary import summary_table
from benchmarks.settings import SETTINGS, TARGETS, Setting
from lightning_al.plotting import plot_learning_curves
from lightning_al.sweep import run_dir_name

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results"
PROTOCOL_FILE = "protocol.json"
# Lightning warnings that repeat every fit and say nothing about the benchmark.
_QUIET = (
    ".*LeafSpec.*",
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*predict returned None.*",
)


def prepare_run(setting: Setting, arm_name: str, seed: int) -> tuple[al.ActiveDataModule, pl.LightningModule, dict]:
    """This process set to one quiet thread, then one arm's datamodule, seeded model and loop arguments."""
    torch.set_num_threads(1)
    for message in _QUIET:
        warnings.filterwarnings("ignore", message=message)
    arm = ARMS[arm_name]
    pool, test = setting.data()
    datamodule = al.ActiveDataModule(
        pool,
        test_set=test,
        initial_labelled=setting.initial,
        batch_size=setting.batch_size,
        min_steps_per_epoch=setting.min_steps_per_epoch,
        seed=seed,
    )
    pl.seed_everything(seed, verbose=False)
    model = arm.model()
    loop_kwargs = dict(
        strategy=arm.strategy(),
        query_size=setting.query_size,
        rounds=setting.rounds,
        trainer_kwargs=dict(max_epochs=setting.epochs, accelerator="cpu", callbacks=arm.callbacks()),
        seed=seed,
        progress=False,
    )
    return datamodule, model, loop_kwargs


def run_arm(setting: Setting, arm_name: str, seed: int, run_dir: Path, progress: Any = None) -> list[dict]:
    """Run (or resume, or read back) one arm's protocol with one seed; return its history."""
    datamodule, model, loop_kwargs = prepare_run(setting, arm_name, seed)
    loop = al.ActiveLearningLoop(**loop_kwargs, output_dir=str(run_dir))
    on_round_end = (lambda row: progress.put(1)) if progress is not None else None
    return loop.run(model, datamodule, on_round_end=on_round_end, resume=True)


def rounds_done(run_dir: Path) -> int:
    """Rows already in the run's ``history.json`` (0 if it has not started)."""
    path = run_dir / "history.json"
    return len(json.loads(path.read_text())) if path.exists() else 0


def check_protocol(setting: Setting, runs_dir: Path) -> None:
    """Record the setting's protocol beside its runs; refuse to resume runs made with another one."""
    protocol = {key: value for key, value in setting.protocol().items() if key not in ("arms", "seeds")}
    path = runs_dir / PROTOCOL_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != protocol:
            changed = sorted(key for key in protocol.keys() | saved.keys() if saved.get(key) != protocol.get(key))
            raise SystemExit(
                f"Expected the runs in {runs_dir} to share the current protocol, but {changed} changed. "
                "Delete that folder to start over, or pass another --output."
            )
    runs_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(protocol, indent=1) + "\n")


def protocol_text(setting: Setting, arms: list[str], seeds: int) -> str:
    """The protocol in words, for the head of the setting's table."""
    grid = setting.label_grid
    seed_range = "Seed 0" if seeds == 1 else f"Seeds 0-{seeds - 1}"
    return (
        f"**Data.** {setting.recipe}\n\n"
        f"**Protocol.** {setting.initial} initial labels drawn uniformly from the pool, then {setting.rounds} "
        f"queries of {setting.query_size} ({grid[0]}-{grid[-1]} labels, {len(grid)} fits). Model: the digits MLP "
        "(64-128-128-10, ReLU, dropout 0.25, Adam lr 1e-3, weight decay 1e-4; MAL swaps in a cosine classifier, "
        "BALD-BayesByBackprop a Bayes-by-backprop MLP), refitted every round from the same initial weights for "
        f"{setting.epochs} epochs, batch {setting.batch_size}, at least {setting.min_steps_per_epoch} steps an "
        f"epoch, on CPU with one thread. {seed_range} (initial labels, weights, batches, random choices); "
        f"every figure is mean ± sample std over the seeds. Strategies: {', '.join(arms)} (their settings: "
        "benchmarks/arms.py).\n\n"
        f"**Columns.** *labels to X*: fewest labels at which a seed's {setting.metric.replace('_', ' ')} reached X "
        "(on the grid above); *AULC ÷ Random*: trapezoid area under the curve over the number of labels, on the "
        "label grid shared by every run, divided by Random's mean area (1 = Random); *s / round*: wall seconds of "
        "a round's fit (with any extra models), test, pool scoring and selection, averaged over the rounds."
    )


def plot_setting(setting: Setting, results: dict[str, list[list[dict]]], path: Path, seeds: int) -> None:
    """One panel per strategy family present in ``results``, each with Random for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (family, [name for name in names if name in results])
        for family, names in FAMILIES.items()
        if any(name in results for name in names)
    ] or [("Random", [])]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.2 * rows), sharey=True, squeeze=False)
    for ax, (family, names) in zip(axes.flat, panels, strict=False):
        ax.set_prop_cycle(color=["black", *plt.get_cmap("tab10").colors])
        plot_learning_curves({name: results[name] for name in ["Random", *names]}, setting.metric, ax=ax)
        ax.set_title(family)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle(f"{setting.name}: mean ± std over {seeds} seed{'s' if seeds > 1 else ''}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument(
        "--strategies", nargs="+", choices=list(ARMS), help="default: each setting's arms; Random is always run"
    )
    parser.add_argument("--seeds", type=int, help="number of seeds (0..n-1); default: each setting's")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel runs (default: CPUs)")
    parser.add_argument("--quick", action="store_true", help="tiny protocol: 2 rounds of 2 epochs, 1 seed")
    parser.add_argument("--output", type=Path, help=f"default: {DEFAULT_OUTPUT} (with --quick: .../quick)")
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"Expected --seeds to be at least 1, but got {args.seeds}.")
    if args.workers < 1:
        parser.error(f"Expected --workers to be at least 1, but got {args.workers}.")
    if args.output is None:
        args.output = DEFAULT_OUTPUT / "quick" if args.quick else DEFAULT_OUTPUT
    return args


def plan(args: argparse.Namespace) -> list[tuple[Setting, list[str], int]]:
    """Per chosen setting: its protocol (quick or full), the arms to run (Random first) and the seed count."""
    chosen = []
    for name in args.settings:
        setting = SETTINGS[name].quick() if args.quick else SETTINGS[name]
        if args.seeds is not None:
            setting = dataclasses.replace(setting, seeds=args.seeds)
        wanted = args.strategies or setting.arms
        arms = ["Random", *(arm for arm in setting.arms if arm in wanted and arm != "Random")]
        arms += [arm for arm in VARIANT_ARMS if arm in wanted]  # run only when named
        chosen.append((setting, arms, setting.seeds))
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    chosen = plan(args)
    jobs = []  # (setting, arm, seed, run_dir)
    for setting, arms, seeds in chosen:
        runs_dir = args.output / "runs" / setting.name
        check_protocol(setting, runs_dir)
        jobs += [(setting, arm, seed, runs_dir / run_dir_name(arm, seed)) for arm in arms for seed in range(seeds)]
    print(f"{len(jobs)} runs ({', '.join(s.name for s, _, _ in chosen)}) on {args.workers} workers → {args.output}")
    histories: dict[tuple[str, str, int], list[dict]] = {}
    failures = []
    total = sum(setting.rounds + 1 for setting, *_ in jobs)
    done = sum(min(rounds_done(run_dir), setting.rounds + 1) for setting, _, _, run_dir in jobs)
    with mp.Manager() as manager, ProcessPoolExecutor(max_workers=args.workers) as executor:
        progress = manager.Queue()
        futures: dict[Future, tuple[str, str, int]] = {
            executor.submit(run_arm, setting, arm, seed, run_dir, progress): (setting.name, arm, seed)
            for setting, arm, seed, run_dir in jobs
        }
        with tqdm(total=total, initial=done, desc="rounds", unit="round", smoothing=0.05) as bar:
            pending = set(futures)
            while pending:
                time.sleep(0.2)
                while not progress.empty():
                    progress.get()
                    bar.update()
                for future in [f for f in pending if f.done()]:
                    pending.discard(future)
                    key = futures[future]
                    if future.exception() is not None:
                        failures.append(key)
                        tqdm.write(f"{key[1]} seed {key[2]} on {key[0]} failed: {future.exception()!r}")
                    else:
                        histories[key] = future.result()
            while not progress.empty():
                progress.get()
                bar.update()
    for setting, arms, seeds in chosen:
        results = {
            arm: [histories[key] for key in ((setting.name, arm, s) for s in range(seeds)) if key in histories]
            for arm in arms
        }
        results = {arm: runs for arm, runs in results.items() if runs}
        if "Random" not in results:
            print(f"{setting.name}: Random failed, so there is no reference for the table.", file=sys.stderr)
            continue
        table = summary_table(results, TARGETS, setting.metric)
        text = f"# Learning curves: {setting.name}\n\n{protocol_text(setting, list(results), seeds)}\n\n{table}\n"
        (args.output / f"{setting.name}.md").write_text(text)
        plot_setting(setting, results, args.output / f"{setting.name}.png", seeds)
        print(f"\n## {setting.name}\n\n{table}")
    print(
        f"\ntables and plots: {args.output}/<setting>.md, .png; runs: {args.output}/runs/<setting>/<strategy>_seed<k>"
    )
    print(f"wall time: {time.perf_counter() - start:.0f} s")
    if failures:
        print(f"{len(failures)} runs failed: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
