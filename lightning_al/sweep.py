"""``lightning-al sweep``: every (strategy, seed) of a config as its own resumable run, then one table and figure.

    lightning-al sweep --config examples/configs/sweep.yaml
    lightning-al sweep --config examples/configs/sweep.yaml --workers 4

The config is an experiment config of ``lightning-al --config`` (``model``, ``data``, ``trainer``,
``loop``) with a ``sweep`` section:

- ``output_dir`` (required): the sweep's folder, one run directory ``<strategy>_seed<s>`` per run;
- ``strategies`` (required): name → strategy, by ``class_path`` (and ``init_args``) or a class path string;
- ``seeds``: distinct integers (default ``[0]``);
- ``workers``: runs at a time (default: the usable CPU cores, at most the number of runs);
- ``metric``: the history key compared (default ``test_accuracy``);
- ``reference``: areas under the curve are divided by this strategy's mean area (default ``Random``
  when the sweep has it; without a reference the areas are raw);
- ``target``: the level of the *labels to* column (default `lightning_al.curve_summary.common_target`).

Each run is one ``python -m lightning_al.cli`` process on ``<output_dir>/base.yaml`` (the config without
its ``sweep`` section) with its strategy as ``--loop.strategy`` and its seed as ``--seed_everything``
(initial weights), ``--data.seed`` (initial labels, batch order) and ``--loop.seed`` (the strategy's
random choices); these five keys of the config are replaced, so the ``loop`` section names no strategy.
Its output goes to ``<run_dir>/log.txt``. Each process gets ``OMP_NUM_THREADS = max(1, cores // workers)``
torch threads. At the end the sweep writes ``summary.md`` (`lightning_al.curve_summary.comparison_table`)
and ``curves.png`` (`lightning_al.plot_learning_curves`) to ``output_dir``.

Run again after a stop (kill the process group, or Ctrl-C), the sweep continues: finished runs are read
back, started ones continue with ``--resume`` from their ``state.pt``. The experiment (everything but the
``sweep`` section's ``seeds``, ``workers``, ``metric``, ``reference`` and ``target``) is saved to
``<output_dir>/sweep.yaml`` and a change to it is refused, naming the changed keys; seeds and strategies
may be added. A failed run does not stop the others: the sweep names it with its log and exits with 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightning_al.curve_summary import common_target, comparison_table
from lightning_al.plotting import History, plot_learning_curves
from lightning_al.run_state import STATE_FILE, load_state

SWEEP_KEYS = ("output_dir", "strategies", "seeds", "workers", "metric", "reference", "target")
# Keys of the experiment config that every run sets from its strategy, seed and run directory.
RUN_KEYS = (("seed_everything",), ("data", "seed"), ("loop", "seed"), ("loop", "strategy"), ("loop", "output_dir"))
BASE_FILE = "base.yaml"  # the experiment config every run starts from
SAVED_FILE = "sweep.yaml"  # the experiment the runs were made with, to refuse a changed one
SUMMARY_FILE = "summary.md"
FIGURE_FILE = "curves.png"
LOG_FILE = "log.txt"  # in each run directory: the run's output
HISTORY_FILE = "history.json"
# LightningCLI warns in every run that it got its arguments both from `args` and from `sys.argv` (the same ones).
_ARGV_WARNING = "ignore:LightningCLI's args parameter"


def run_dir_name(strategy: str, seed: int) -> str:
    """``<strategy>_seed<s>`` with every character other than letters, digits, ``._-`` replaced by ``-``.

    Args:
        strategy: the strategy's name in the sweep.
        seed: the run's seed.

    >>> run_dir_name("BALD (T=10)", 1)
    'BALD-T-10_seed1'
    """
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', strategy).strip('-')}_seed{seed}"


@dataclass(frozen=True)
class SweepRun:
    """One (strategy, seed) of a sweep and its run directory.

    Attributes:
        strategy: the strategy's name in the sweep.
        strategy_config: its ``{"class_path": ..., "init_args": ...}``.
        seed: the run's seed.
        directory: the run's ``loop.output_dir``.
    """

    strategy: str
    strategy_config: Mapping[str, Any]
    seed: int
    directory: Path

    @property
    def name(self) -> str:
        """The run directory's name, ``<strategy>_seed<s>``."""
        return self.directory.name

    @property
    def started(self) -> bool:
        """Whether the run saved a state to resume from."""
        return (self.directory / STATE_FILE).exists()

    @property
    def finished(self) -> bool:
        """Whether the run's saved state says its loop ended (and its history is on disk)."""
        if not self.started or not (self.directory / HISTORY_FILE).exists():
            return False
        try:
            return bool(load_state(self.directory / STATE_FILE)["loop"].get("finished", False))
        except ValueError:  # an unreadable state: the resumed process reports what is wrong with it
            return False

    def history(self) -> list[dict[str, Any]]:
        """The run's ``history.json``."""
        return json.loads((self.directory / HISTORY_FILE).read_text())

    def command(self, base_config: Path) -> list[str]:
        """The ``lightning-al`` process of this run on ``base_config`` (``--resume`` once it has a state).

        Args:
            base_config: the sweep's ``base.yaml``.
        """
        seed = str(self.seed)
        command = [sys.executable, "-m", "lightning_al.cli", "--config", str(base_config)]
        command += ["--loop.strategy", json.dumps(dict(self.strategy_config))]
        command += ["--seed_everything", seed, "--data.seed", seed, "--loop.seed", seed]
        command += ["--loop.output_dir", str(self.directory)]
        return command + (["--resume"] if self.started else [])


def _strategy_config(name: Any, value: Any) -> dict[str, Any]:
    """One entry of ``sweep.strategies`` as ``{"class_path": ..., "init_args": ...}``."""
    if not isinstance(name, str) or run_dir_name(name, 0) == "_seed0":
        raise ValueError(f"Expected the names of `sweep.strategies` to hold letters or digits, but got {name!r}.")
    config = {"class_path": value} if isinstance(value, str) else value
    if (
        not isinstance(config, Mapping)
        or not isinstance(config.get("class_path"), str)
        or not isinstance(config.get("init_args", {}), Mapping)
        or set(config) - {"class_path", "init_args"}
    ):
        raise ValueError(
            f"Expected `sweep.strategies.{name}` to be a class path or a mapping of `class_path` "
            f"(and `init_args`, a mapping), but got {value!r}."
        )
    return dict(config)


def _integer(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        at_least = f" at least {minimum}" if minimum is not None else ""
        raise ValueError(f"Expected `{name}` to be an integer{at_least}, but got {value!r}.")
    return value


def _without(config: Mapping[str, Any], path: tuple[str, ...]) -> None:
    """Drop ``config[path[0]][path[1]]...`` when present (``config`` is modified)."""
    *parents, key = path
    for parent in parents:
        config = config.get(parent)
        if not isinstance(config, dict):
            return
    config.pop(key, None)


def _changes(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """The dotted keys at which two configs differ, with both values."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        changes = []
        for key in sorted(set(saved) | set(current), key=str):
            changes += _changes(saved.get(key), current.get(key), f"{prefix}.{key}" if prefix else str(key))
        return changes
    return [] if saved == current else [f"`{prefix}` (saved {saved!r}, now {current!r})"]


@dataclass(frozen=True)
class Sweep:
    """A sweep config: the experiment every run shares, the strategies and seeds, and how to summarise them.

    Build it with `from_file` or `from_config`; `run_sweep` runs it.

    Attributes:
        base: the experiment config without the ``sweep`` section and without the keys each run sets.
        strategies: strategy name → ``{"class_path": ..., "init_args": ...}``.
        seeds: the seeds, distinct.
        output_dir: the sweep's folder.
        workers: runs at a time, or None for the usable CPU cores.
        metric: the history key compared.
        reference: the strategy whose mean area under the curve is the unit, or None.
        target: the level of the *labels to* column, or None for `lightning_al.curve_summary.common_target`.
    """

    base: Mapping[str, Any]
    strategies: Mapping[str, Mapping[str, Any]]
    seeds: tuple[int, ...]
    output_dir: Path
    workers: int | None = None
    metric: str = "test_accuracy"
    reference: str | None = None
    target: float | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Sweep:
        """Read and validate the sweep config at ``path`` (YAML).

        Args:
            path: the config file.
        """
        try:
            config = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"Expected `--config` to be a readable YAML file, but {path} gave: {error}") from error
        return cls.from_config(config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Sweep:
        """Validate a parsed sweep config; every error names the key and what it received.

        Args:
            config: the experiment config with its ``sweep`` section.
        """
        if not isinstance(config, Mapping) or not isinstance(config.get("sweep"), Mapping):
            got = type(config.get("sweep")).__name__ if isinstance(config, Mapping) else type(config).__name__
            raise ValueError(f"Expected the config to have a `sweep` section (a mapping), but got {got}.")
        section = config["sweep"]
        unknown = sorted(set(section) - set(SWEEP_KEYS), key=str)
        if unknown:
            raise ValueError(f"Expected the keys of `sweep` to be among {list(SWEEP_KEYS)}, but got unknown {unknown}.")
        output_dir = section.get("output_dir")
        if not isinstance(output_dir, str) or not output_dir:
            raise ValueError(f"Expected `sweep.output_dir` to be a folder path, but got {output_dir!r}.")
        strategies = section.get("strategies")
        if not isinstance(strategies, Mapping) or not strategies:
            raise ValueError(f"Expected `sweep.strategies` to map names to strategies, but got {strategies!r}.")
        strategies = {name: _strategy_config(name, value) for name, value in strategies.items()}
        folders = [run_dir_name(name, 0) for name in strategies]
        if len(set(folders)) < len(folders):
            raise ValueError(f"Expected the names of `sweep.strategies` to give distinct folders, but got {folders}.")
        seeds = section.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds:
            raise ValueError(f"Expected `sweep.seeds` to be a non-empty list of integers, but got {seeds!r}.")
        seeds = [_integer("sweep.seeds", seed) for seed in seeds]
        if len(set(seeds)) < len(seeds):
            raise ValueError(f"Expected `sweep.seeds` to hold distinct integers, but got {seeds}.")
        workers = section.get("workers")
        workers = None if workers is None else _integer("sweep.workers", workers, 1)
        metric = section.get("metric", "test_accuracy")
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"Expected `sweep.metric` to be a history key, but got {metric!r}.")
        reference = section.get("reference")
        if reference is not None and reference not in strategies:
            raise ValueError(f"Expected `sweep.reference` to be one of {list(strategies)}, but got {reference!r}.")
        if "reference" not in section and "Random" in strategies:
            reference = "Random"
        target = section.get("target")
        if target is not None and (isinstance(target, bool) or not isinstance(target, int | float)):
            raise ValueError(f"Expected `sweep.target` to be a number, but got {target!r}.")
        base = copy.deepcopy({key: value for key, value in config.items() if key != "sweep"})
        for path in RUN_KEYS:
            _without(base, path)
        return cls(base, strategies, tuple(seeds), Path(output_dir), workers, metric, reference, target)

    @property
    def runs(self) -> list[SweepRun]:
        """Every (strategy, seed), seed by seed, so an early stop leaves complete comparisons."""
        return [
            SweepRun(name, config, seed, self.output_dir / run_dir_name(name, seed))
            for seed in self.seeds
            for name, config in self.strategies.items()
        ]

    def experiment(self) -> dict[str, Any]:
        """What every run's result depends on: the base config and the strategies (saved to ``sweep.yaml``)."""
        return {"base": dict(self.base), "strategies": {name: dict(c) for name, c in self.strategies.items()}}

    def prepare(self) -> Path:
        """Create ``output_dir``, write ``base.yaml`` once and refuse an experiment other than the saved one.

        Strategies may be added to a saved sweep (its record then lists them too); a strategy or base key
        that changed is refused. Idempotent. Returns the path of ``base.yaml``.
        """
        saved_path, current = self.output_dir / SAVED_FILE, self.experiment()
        if saved_path.exists():
            saved = yaml.safe_load(saved_path.read_text())
            shared = {
                name: current["strategies"][name] for name in current["strategies"] if name in saved["strategies"]
            }
            changes = _changes(saved["base"], current["base"])
            changes += _changes({k: saved["strategies"][k] for k in shared}, shared, "sweep.strategies")
            if changes:
                raise ValueError(
                    f"Expected the sweep config to match the one the runs in {self.output_dir} were made with "
                    f"({saved_path}), but {', '.join(changes)} changed. Delete that folder to start over, "
                    "or choose another `sweep.output_dir`."
                )
            current["strategies"] = {**saved["strategies"], **current["strategies"]}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        saved_path.write_text(yaml.safe_dump(current, sort_keys=False))
        base_path = self.output_dir / BASE_FILE
        if not base_path.exists():
            base_path.write_text(yaml.safe_dump(dict(self.base), sort_keys=False))
        return base_path


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _say(message: str) -> None:
    print(f"[sweep] {message}", flush=True)


@dataclass
class _Process:
    run: SweepRun
    popen: subprocess.Popen
    log: Any
    start: float


def _launch(run: SweepRun, base_path: Path, threads: int) -> _Process:
    command = run.command(base_path)
    run.directory.mkdir(parents=True, exist_ok=True)
    log = (run.directory / LOG_FILE).open("a")
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
    log.flush()
    warning_filters = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), _ARGV_WARNING]))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.update(PYTHONUNBUFFERED="1", PYTHONWARNINGS=warning_filters)
    popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    _say(f"{run.name}: {'resumed' if run.started else 'started'} (log: {run.directory / LOG_FILE})")
    return _Process(run, popen, log, time.perf_counter())


def _execute(runs: Sequence[SweepRun], base_path: Path, workers: int, threads: int) -> dict[str, str]:
    """Run ``runs``, ``workers`` at a time; return run name → why it failed, for each that did."""
    waiting, running, failures = list(runs), [], {}
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                running.append(_launch(waiting.pop(0), base_path, threads))
            time.sleep(0.1)
            for process in [p for p in running if p.popen.poll() is not None]:
                running.remove(process)
                process.log.close()
                code, run, log = process.popen.returncode, process.run, process.run.directory / LOG_FILE
                seconds = time.perf_counter() - process.start
                if code != 0:
                    failures[run.name] = f"exit code {code}, log: {log}"
                elif not run.finished:
                    failures[run.name] = f"stopped before its last round (an oracle waiting for labels?), log: {log}"
                if run.name in failures:
                    _say(f"{run.name}: FAILED after {seconds:.0f} s ({failures[run.name]})")
                else:
                    _say(f"{run.name}: finished in {seconds:.0f} s")
    finally:
        for process in running:  # interrupted: the runs resume from their last saved round next time
            process.popen.terminate()
        for process in running:
            process.popen.wait()
            process.log.close()
    return failures


def write_summary(sweep: Sweep, results: Mapping[str, Sequence[History]], failures: Mapping[str, str]) -> str:
    """Write ``summary.md`` (and ``curves.png`` when matplotlib is installed) for ``results``; return the table.

    Args:
        sweep: the sweep the results belong to.
        results: strategy name → its finished runs' histories (strategies without one are left out).
        failures: run name → why it did not finish.
    """
    results = {name: list(runs) for name, runs in results.items() if runs}
    lines = [f"# Sweep: {sweep.output_dir.name}", ""]
    total = len(sweep.strategies) * len(sweep.seeds)
    lines.append(
        f"{sum(map(len, results.values()))} of {total} runs finished: {', '.join(sweep.strategies)} × seeds "
        f"{', '.join(map(str, sweep.seeds))}, each `{BASE_FILE}` with its strategy and seed (`seed_everything`, "
        f"`data.seed`, `loop.seed`). Every cell is mean ± sample std over a strategy's runs."
    )
    table = ""
    if results:
        target = sweep.target if sweep.target is not None else common_target(results, sweep.metric)
        table = comparison_table(results, sweep.metric, sweep.reference, target)
        lines += [
            "",
            table,
            "",
            f"*final*: {sweep.metric} at the last label count; *AULC*: trapezoid area under the curve over the "
            "label counts every run recorded"
            + (f", divided by {sweep.reference}'s mean area" if sweep.reference in results else "")
            + f"; *labels to {target:.0%}*: fewest labels at which a run reached it; *s / round*: seconds of a "
            "round's fit, test, scoring and selection.",
        ]
        try:
            figure = plot_learning_curves(results, sweep.metric, path=sweep.output_dir / FIGURE_FILE)
        except ImportError as error:
            _say(f"no {FIGURE_FILE}: {error}")
        else:
            import matplotlib.pyplot as plt

            plt.close(figure)
            lines += ["", f"![learning curves]({FIGURE_FILE})"]
    if failures:
        lines += ["", "## Runs that did not finish", ""] + [f"- {name}: {why}" for name, why in failures.items()]
    (sweep.output_dir / SUMMARY_FILE).write_text("\n".join(lines) + "\n")
    return table


def run_sweep(sweep: Sweep, workers: int | None = None) -> int:
    """Run (or continue) every run of ``sweep``, then write its summary; return 0, or 1 if a run failed.

    Args:
        sweep: the validated sweep config.
        workers: runs at a time; default ``sweep.workers``, else the usable cores, at most the runs to do.
    """
    start = time.perf_counter()
    base_path = sweep.prepare()
    runs = sweep.runs
    done = [run for run in runs if run.finished]
    todo = [run for run in runs if run not in done]
    cores = usable_cores()
    workers = max(1, min(workers or sweep.workers or cores, len(todo) or 1))
    threads = max(1, cores // workers)
    plan = f"{len(todo)} to run, {workers} at a time (OMP_NUM_THREADS={threads})" if todo else "0 to run"
    _say(f"{len(runs)} runs → {sweep.output_dir}: {len(done)} finished earlier, {plan}")
    failures = _execute(todo, base_path, workers, threads) if todo else {}
    results = {
        name: [run.history() for run in runs if run.strategy == name and run.finished] for name in sweep.strategies
    }
    table = write_summary(sweep, results, failures)
    print(f"\n{table}\n\nsummary: {sweep.output_dir / SUMMARY_FILE}; wall time {time.perf_counter() - start:.0f} s")
    if failures:
        print(f"{len(failures)} of {len(runs)} runs failed:", file=sys.stderr)
        for name, why in failures.items():
            print(f"  {name}: {why}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``lightning-al sweep --config FILE [--workers N]``; returns the exit code.

    Args:
        argv: the arguments after ``sweep`` (default ``sys.argv[2:]``).
    """
    parser = argparse.ArgumentParser(
        prog="lightning-al sweep", description="Run every (strategy, seed) of a sweep config; resumable."
    )
    parser.add_argument("--config", required=True, help="an experiment config with a `sweep` section")
    parser.add_argument("--workers", type=int, help="runs at a time (default: sweep.workers, else the CPU cores)")
    args = parser.parse_args(sys.argv[2:] if argv is None else list(argv))
    if args.workers is not None and args.workers < 1:
        parser.error(f"Expected `--workers` to be at least 1, but got {args.workers}.")
    try:
        sweep = Sweep.from_file(args.config)
        sweep.prepare()  # a refused config is a usage error, reported before any run starts
    except ValueError as error:
        parser.error(str(error))
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main_thread else None
    try:  # SIGTERM stops the runs as Ctrl-C does
        return run_sweep(sweep, args.workers)
    except KeyboardInterrupt:
        print("[sweep] stopped: run the same command again to continue.", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
