"""Reading an offline W&B run back: history rows, metric definitions, config, tables and artifacts."""

from __future__ import annotations

import contextlib
import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

WANDB_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true"}


@contextlib.contextmanager
def offline_wandb(root: Path) -> Iterator[None]:
    """W&B in offline mode with every file it writes (run, cache, config, artifacts) under ``root``."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in WANDB_ENV.items():
            patch.setenv(name, value)
        for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
            patch.setenv(name, str(root / name.lower()))
        yield


# ----- reading an offline W&B run back ----------------------------------------------------------
_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of checksummed, typed chunks
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf ``Record`` messages of a ``run-*.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"Expected a W&B transaction log, but {path} starts with {data[:7]!r}.")
    position, pending = 7, b""
    while position + 7 <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < 7:  # a block's tail too short for a chunk header is zero padding
            position += left_in_block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if position + 7 + length > len(data):
            return  # the writer has not flushed this chunk whole yet
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (_FULL, _FIRST):
            pending = chunk
        elif kind in (_MIDDLE, _LAST):
            pending += chunk
        else:
            position += left_in_block - 7 - length  # zero header: skip the rest of the block
            continue
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _nested_set(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


@dataclass
class OfflineRun:
    """What an offline W&B run holds: history rows, metric definitions, config, artifacts and its files dir."""

    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)  # metric name or glob -> its step metric ("" if none)
    config: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        return [row for row in self.history if key in row]

    def table(self, value: dict[str, Any]) -> dict[str, Any]:
        """The columns and data of a logged table, from the file its history value points to."""
        return json.loads((self.run_dir / "files" / value["path"]).read_text())

    def artifact_file(self, artifact: dict[str, Any], name: str) -> str:
        return Path(artifact["files"][name]).read_text()


def finished_records(log_file: Path, timeout: float = 30.0) -> list[Any]:
    """The records of a run's log once its ``exit`` record is on disk (the writer may still be flushing)."""
    deadline = time.monotonic() + timeout
    from google.protobuf.message import DecodeError

    while True:
        try:
            records = list(wandb_records(log_file))
        except DecodeError:  # a record the writer is still flushing
            records = []
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"Expected {log_file} to end with an exit record within {timeout} s.")
        time.sleep(0.1)


def read_offline_run(save_dir: Path) -> OfflineRun:
    """Parse the single ``offline-run-*`` under ``save_dir/wandb``."""
    (run_dir,) = sorted((save_dir / "wandb").glob("offline-run-*"))
    (log_file,) = run_dir.glob("run-*.wandb")
    run = OfflineRun(run_dir)
    for record in finished_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _nested_set(row, list(item.nested_key) or [item.key], json.loads(item.value_json))
            run.history.append(row)
        elif kind == "metric":
            run.metrics[record.metric.name or record.metric.glob_name] = record.metric.step_metric
        elif kind in ("config", "run"):
            updates = record.config.update if kind == "config" else record.run.config.update
            for item in updates:
                _nested_set(run.config, list(item.nested_key) or [item.key], json.loads(item.value_json))
        elif kind == "artifact":
            artifact = record.artifact
            run.artifacts.append(
                {
                    "name": artifact.name,
                    "type": artifact.type,
                    "metadata": json.loads(artifact.metadata or "{}"),
                    "files": {entry.path: entry.local_path for entry in artifact.manifest.contents},
                }
            )
    return run


def describe_offline_run(run: OfflineRun, prefixes: tuple[str, ...] = ("al/", "trainer/", "train_", "epoch")) -> str:
    """A plain-text listing of an offline run: metric definitions, config, history rows, tables and artifacts."""
    lines = ["metric definitions (name or glob -> step metric):"]
    lines += [f"  {name} -> {step or '(none)'}" for name, step in run.metrics.items()]
    config = {key: value for key, value in run.config.items() if key != "_wandb"}
    lines.append(f"config: {json.dumps(config, sort_keys=True)}")
    lines.append("history rows (keys starting with " + ", ".join(prefixes) + "):")
    for index, row in enumerate(run.history):
        shown = {key: value for key, value in row.items() if key.startswith(prefixes)}
        if not shown:
            continue
        cells = []
        for key, value in shown.items():
            if isinstance(value, dict) and value.get("_type") in ("table-file", "incremental-table-file"):
                cells.append(f"{key}=<table {value['nrows']}x{value['ncols']}>")
            elif isinstance(value, dict) and value.get("_type") == "histogram":
                cells.append(f"{key}=<histogram counts={sum(value['values'])}>")
            elif isinstance(value, dict):
                cells.append(f"{key}=<{value.get('_type', 'dict')}>")
            else:
                cells.append(f"{key}={value}")
        lines.append(f"  [{index}] " + ", ".join(cells))
    lines.append("tables:")
    for row in run.history:
        for key, value in row.items():
            if isinstance(value, dict) and value.get("_type") == "table-file":
                table = run.table(value)
                lines.append(f"  {key} ({value['path']}): columns={table['columns']}")
                lines += [f"    {data}" for data in table["data"]]
    lines.append("artifacts:")
    for artifact in run.artifacts:
        lines.append(f"  {artifact['name']} type={artifact['type']} metadata={artifact['metadata']}")
        lines += [f"    {name}" for name in artifact["files"]]
    return "\n".join(lines)
