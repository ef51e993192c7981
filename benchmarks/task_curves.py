"""Learning curves on the multi-label and segmentation tasks: Random, Entropy, BALD, CoreSet and suggestive
annotation, 3 seeds.

Two settings, both generated locally (nothing is downloaded):

- **multilabel**: :class:`~lightning_al.datasets.MultiLabelDigits` (strips of 1-3 digits, which of the 10
  digits appear) with :class:`~lightning_al.models.MultiLabelMLP`, as ``examples/multilabel.py``; metric
  ``test_map`` (macro average precision);
- **segmentation**: :class:`~lightning_al.datasets.Shapes` (squares and discs of random brightness) with the
  U-Net of ``examples/segmentation.py`` (head-only ``Dropout2d``, cosine learning rate over each fit);
  metric ``test_miou`` (mean IoU over the 3 classes, outlines ignored).

Every (setting, strategy, seed) run is one process of a pool (``--workers``, default: the CPU count), each
with one torch thread. Seed ``s`` fixes the initial labels, the initial weights (the same for every strategy)
and the training order. Writes ``tasks.md`` (the protocol, then per setting the area under the learning curve
divided by Random's, mean ± sample std over the seeds) and ``tasks_multilabel.png`` /
``tasks_segmentation.png`` (mean ± std curves) to ``--output`` (``benchmarks/results``); ``tasks.md`` keeps
the section that ``benchmarks.segmentation_scoring`` writes. ``--quick``: tiny protocol, 1 seed, into
``benchmarks/results/quick`` (seconds).

    python -m benchmarks.task_curves                 # about 10 minutes on 2 CPU cores
    python -m benchmarks.task_curves --quick
    python -m benchmarks.task_curves --settings segmentation --seeds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

import lightning_al as al
from benchmarks.curve_summary import mean_std, normalised_areas, summary_table
from lightning_al.models import MultiLabelMLP
from lightning_al.plotting import learning_curve, plot_learning_curves
from lightning_al.tasks import MultiLabel, Segmentation, Task

_EXAMPLES = str(Path(__file__).resolve().parents[1] / "examples")
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)

import multilabel as multilabel_example  # noqa: E402
import segmentation as segmentation_example  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results"
RESULTS_FILE = "tasks.md"
SECTION = "task_curves"
MC_SAMPLES = 20
STRATEGIES: dict[str, Callable[[], al.Strategy]] = {
    "Random": al.strategies.Random,
    "Entropy": al.strategies.Entropy,
    "BALD": lambda: al.strategies.BALD(mc_samples=MC_SAMPLES),
    "CoreSet": al.strategies.CoreSet,
    # The paper's committee (4 networks on bootstrap samples) in the paper's task, segmentation.
    "SuggestiveAnnotation": al.strategies.SuggestiveAnnotation,
}
# Lightning warnings that repeat every fit and say nothing about the benchmark.
_QUIET = (".*LeafSpec.*", ".*does not have many workers.*", ".*smaller than the logging interval.*")


@dataclass(frozen=True)
class TaskSetting:
    """One task's data, model and active-learning protocol (every run of the setting shares them).

    Attributes:
        name: ``"multilabel"`` or ``"segmentation"`` (the key of :data:`SETTINGS`, the plot's file stem).
        metric: the history key of the curves.
        targets: metric values whose labels-to-reach the detailed table lists.
        pool_size, test_size: samples in the pool and the test set.
        image_size: segmentation: image height and width.
        noise: segmentation: the pixel noise of :class:`~lightning_al.datasets.Shapes`.
        initial, query_size, rounds: initial random labels, labels per query, number of queries.
        epochs, min_steps_per_epoch, batch_size, lr: every fit (weights reset to the seed's initial values).
        width: segmentation: U-Net channels at full resolution.
        seeds: seeds ``0..seeds-1``.
    """

    name: str
    metric: str
    targets: tuple[float, ...]
    pool_size: int
    test_size: int
    initial: int
    query_size: int
    rounds: int
    epochs: int
    min_steps_per_epoch: int
    batch_size: int
    lr: float
    image_size: int = 0
    noise: float = 0.0
    width: int = 0
    seeds: int = 3

    @property
    def label_grid(self) -> list[int]:
        return [self.initial + r * self.query_size for r in range(self.rounds + 1)]

    def task(self) -> Task:
        return MultiLabel(10) if self.name == "multilabel" else Segmentation(3, ignore_index=255)

    def data(self) -> tuple[Dataset, Dataset]:
        """``(pool, test)``, built as the examples build them (the pool from seed 0, whatever the run's seed)."""
        if self.name == "multilabel":
            pool, test, _, _ = multilabel_example.digits_data(self.pool_size, self.test_size, seed=0)
            return pool, test
        data_args = argparse.Namespace(
            pool_size=self.pool_size, test_size=self.test_size, image_size=self.image_size, noise=self.noise, seed=0
        )
        return segmentation_example.shapes_data(data_args)

    def model(self) -> pl.LightningModule:
        if self.name == "multilabel":
            return MultiLabelMLP(in_features=192, num_labels=10, lr=self.lr)
        return segmentation_example.CosineUNet(in_channels=1, num_classes=3, width=self.width, lr=self.lr)

    def quick(self) -> TaskSetting:
        """The smoke-test protocol: the examples' ``--tiny`` sizes (2 rounds), 1 seed."""
        example = multilabel_example if self.name == "multilabel" else segmentation_example
        tiny = example.DEFAULTS["tiny"]
        fields = {field.name for field in dataclasses.fields(self)}
        changes = {key: value for key, value in tiny.items() if key in fields}
        return dataclasses.replace(self, **changes, min_steps_per_epoch=tiny["min_steps"], seeds=1)

    def describe(self) -> str:
        grid = self.label_grid
        steps = self.epochs * self.min_steps_per_epoch
        if self.name == "multilabel":
            data = (
                f"`MultiLabelDigits`: a pool of {self.pool_size:,} strips (192 features: three 8×8 slots, 1-3 of them "
                f"holding a scikit-learn digit of distinct classes) and a test set of {self.test_size:,} strips made "
                "from the held-out digit images; 10 labels (which digits appear). Model: `MultiLabelMLP` "
                f"(192-128-128-10, ReLU, dropout 0.25 after each hidden layer, BCE with logits, Adam lr {self.lr:g}, "
                "weight decay 1e-4). Sample scores are summed over the 10 labels (`MultiLabel(10)`, reduction "
                f"'sum'). Metric: test macro average precision (`test_map`)."
            )
        else:
            data = (
                f"`Shapes(size={self.image_size}, noise={self.noise})`: a pool of {self.pool_size:,} and a test set "
                f"of {self.test_size:,} {self.image_size}×{self.image_size} images, 1-3 squares (class 1) and discs "
                "(class 2) of random brightness on background (class 0), outlines 255 (ignored). Model: "
                f"`SmallUNet(width={self.width})` (two levels, batch norm, `Dropout2d(0.25)` before the 1×1 head "
                f"only) with Adam whose learning rate falls from {self.lr:g} to 0 along a cosine over each fit "
                "(`CosineUNet` in examples/segmentation.py). Image scores are the mean over pixels "
                "(`Segmentation(3)`). Metric: test mean IoU over the 3 classes (`test_miou`)."
            )
        return (
            f"**{self.name}.** {data} Protocol: {self.initial} random initial labels, then {self.rounds} queries of "
            f"{self.query_size} ({grid[0]}-{grid[-1]} labels, {len(grid)} fits); each fit {self.epochs} epochs of at "
            f"least {self.min_steps_per_epoch} batches of {self.batch_size} (≥ {steps} steps, the labelled set "
            "repeated within an epoch), from the seed's initial weights."
        )


SETTINGS: dict[str, TaskSetting] = {
    "multilabel": TaskSetting(
        name="multilabel",
        metric="test_map",
        targets=(0.6, 0.7),
        pool_size=1000,
        test_size=500,
        initial=20,
        query_size=20,
        rounds=14,
        epochs=10,
        min_steps_per_epoch=20,
        batch_size=32,
        lr=1e-3,
    ),
    "segmentation": TaskSetting(
        name="segmentation",
        metric="test_miou",
        targets=(0.8, 0.85),
        pool_size=300,
        test_size=200,
        image_size=32,
        noise=0.15,
        width=16,
        initial=4,
        query_size=4,
        rounds=12,
        epochs=8,
        min_steps_per_epoch=25,
        batch_size=8,
        lr=3e-3,
    ),
}


def run_one(setting: TaskSetting, strategy: str, seed: int) -> list[dict[str, Any]]:
    """One seed of one strategy on one setting, in this process with one torch thread; its history."""
    torch.set_num_threads(1)
    for message in _QUIET:
        warnings.filterwarnings("ignore", message=message)
    pool, test = setting.data()
    datamodule = al.ActiveDataModule(
        pool,
        test_set=test,
        task=setting.task(),
        initial_labelled=setting.initial,
        batch_size=setting.batch_size,
        eval_batch_size=128,
        min_steps_per_epoch=setting.min_steps_per_epoch,
        seed=seed,
    )
    pl.seed_everything(seed, verbose=False)
    model = setting.model()  # before the strategy: every strategy starts from the seed's weights
    loop = al.ActiveLearningLoop(
        STRATEGIES[strategy](),
        query_size=setting.query_size,
        rounds=setting.rounds,
        trainer_kwargs=dict(max_epochs=setting.epochs, accelerator="cpu", enable_progress_bar=False),
        seed=seed,
        progress=False,
    )
    return loop.run(model, datamodule)


def write_section(
    path: Path, name: str, text: str, title: str = "# Active learning on multi-label and segmentation tasks"
) -> None:
    """Put ``text`` between ``<!-- name -->`` markers in ``path``, replacing that section and keeping the others."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else f"{title}\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else f"{old.rstrip()}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new if new.endswith("\n") else new + "\n")


def plot(setting: TaskSetting, results: dict[str, list[list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=["black", *plt.get_cmap("tab10").colors])
    seeds = max(len(runs) for runs in results.values())
    title = f"{setting.name}: mean ± std over {seeds} seed{'s' if seeds > 1 else ''}"
    plot_learning_curves(results, setting.metric, title=title, ax=ax)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def combined_table(chosen: list[TaskSetting], results: dict[str, dict[str, list[list[dict]]]]) -> str:
    """Strategies × settings: AULC ÷ Random (mean ± std over seeds), and the metric at the first and last fit."""
    header = ["strategy"]
    for setting in chosen:
        header += [f"{setting.name}: AULC ÷ Random", f"{setting.name}: {setting.metric} first → last"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    areas = {s.name: normalised_areas(results[s.name], s.metric) for s in chosen}
    for strategy in STRATEGIES:
        cells = [strategy]
        for setting in chosen:
            runs = results[setting.name].get(strategy)
            if not runs:
                cells += ["", ""]
                continue
            mean, std = mean_std(areas[setting.name][strategy])
            curve = learning_curve(runs, setting.metric)
            cells += [f"{mean:.3f} ± {std:.3f}", f"{curve.mean[0]:.3f} → {curve.mean[-1]:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_ratios(setting: TaskSetting, runs_by_strategy: dict[str, list[list[dict]]]) -> dict[str, list[float]]:
    """Per strategy, each seed's AULC divided by Random's AULC *of the same seed* (same initial labels and weights)."""
    areas = normalised_areas(runs_by_strategy, setting.metric)
    return {name: [a / r for a, r in zip(values, areas["Random"], strict=True)] for name, values in areas.items()}


def report(
    chosen: list[TaskSetting], results: dict[str, dict[str, list[list[dict]]]], seconds: float, command: str
) -> str:
    workers_note = f"Wall time {seconds:.0f} s (`{command}`)."
    parts = [
        "## Learning curves",
        "",
        "Each strategy runs with seeds 0 to n-1; seed s fixes the initial labels, the initial weights (the same for "
        "every strategy) and the training order, so the strategies of one seed start alike. One torch thread per run, "
        f"runs in parallel on the CPU cores. {workers_note} Strategies: Random, Entropy, BALD (T = {MC_SAMPLES} "
        "passes of MC dropout with consistent masks, the default), CoreSet (k-center greedy on the model's embedding: "
        "the MLP's last hidden layer, or the U-Net head's input averaged over pixels), SuggestiveAnnotation (4 "
        "bootstrap members trained every round, the loop's model not among them; their variance averaged over classes "
        "and labels or pixels, then max-cover on the first member's embedding among the 2k most disputed).",
        "",
        *[setting.describe() + "\n" for setting in chosen],
        "*AULC ÷ Random*: trapezoid area under the learning curve over the number of labels (on the shared label grid) "
        "divided by Random's mean area; mean ± sample std over the seeds (Random's own spread is its seeds' spread). "
        "*paired*: each seed's area divided by Random's area with the same seed (same initial labels and weights), "
        "mean ± std; *per seed*: each seed's area divided by Random's mean area, seeds 0, 1, 2, ...",
        "",
        combined_table(chosen, results),
        "",
    ]
    for setting in chosen:
        runs = results[setting.name]
        paired = paired_ratios(setting, runs)
        areas = normalised_areas(runs, setting.metric)
        grid = setting.label_grid
        shown = grid[:: max(1, len(grid) // 4)] + ([grid[-1]] if (len(grid) - 1) % max(1, len(grid) // 4) else [])
        parts += [
            f"### {setting.name}",
            "",
            summary_table(runs, setting.targets, setting.metric),
            "",
            "| strategy | paired AULC ÷ Random | per seed | "
            + " | ".join(f"{setting.metric} at {n}" for n in shown)
            + " |",
            "|---" * (3 + len(shown)) + "|",
        ]
        for name, strategy_runs in runs.items():
            curve = learning_curve(strategy_runs, setting.metric)
            at = dict(zip(curve.num_labelled.tolist(), curve.mean.tolist(), strict=True))
            mean, std = mean_std(paired[name])
            cells = [f"{at[n]:.3f}" if n in at else "—" for n in shown]
            per_seed = ", ".join(f"{area:.3f}" for area in areas[name])
            parts.append(f"| {name} | {mean:.3f} ± {std:.3f} | {per_seed} | " + " | ".join(cells) + " |")
        parts += ["", f"![{setting.name}](tasks_{setting.name}.png)", ""]
    return "\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--seeds", type=int, help="seeds 0..n-1 (default 3; --quick 1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel runs (default: CPUs)")
    parser.add_argument("--quick", action="store_true", help="tiny protocol, 2 rounds, 1 seed")
    parser.add_argument("--output", type=Path, help=f"default: {DEFAULT_OUTPUT} (with --quick: .../quick)")
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.output is None:
        args.output = DEFAULT_OUTPUT / "quick" if args.quick else DEFAULT_OUTPUT
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    chosen = []
    for name in args.settings:
        setting = SETTINGS[name].quick() if args.quick else SETTINGS[name]
        seeds = args.seeds if args.seeds is not None else (1 if args.quick else setting.seeds)
        chosen.append(dataclasses.replace(setting, seeds=seeds))
    jobs = [(setting, strategy, seed) for setting in chosen for strategy in STRATEGIES for seed in range(setting.seeds)]
    # Longest first (segmentation fits cost the most), so the pool's last jobs are short.
    jobs.sort(key=lambda job: job[0].name != "segmentation")
    print(f"{len(jobs)} runs on {args.workers} workers → {args.output}", flush=True)
    histories: dict[tuple[str, str, int], list[dict]] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as executor:
        futures = {executor.submit(run_one, *job): (job[0].name, job[1], job[2]) for job in jobs}
        for done, future in enumerate(as_completed(futures), start=1):
            key = futures[future]
            histories[key] = future.result()
            print(
                f"[{done}/{len(jobs)}] {key[0]} {key[1]} seed {key[2]}: {time.perf_counter() - start:.0f} s", flush=True
            )
    results = {
        setting.name: {
            strategy: [histories[(setting.name, strategy, seed)] for seed in range(setting.seeds)]
            for strategy in STRATEGIES
        }
        for setting in chosen
    }
    seconds = time.perf_counter() - start
    command = "python -m benchmarks.task_curves" + (" --quick" if args.quick else "")
    if args.settings != list(SETTINGS):
        command += f" --settings {' '.join(args.settings)}"
    if args.seeds is not None:
        command += f" --seeds {args.seeds}"
    text = report(chosen, results, seconds, command)
    write_section(args.output / RESULTS_FILE, SECTION, text)
    for setting in chosen:
        plot(setting, results[setting.name], args.output / f"tasks_{setting.name}.png")
    print(f"\n{text}\n\nwritten to {args.output / RESULTS_FILE} and tasks_<setting>.png; wall time {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
