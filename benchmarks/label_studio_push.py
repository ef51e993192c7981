"""LabelStudioOracle against a real Label Studio server: server start, push of N tasks, pull of N answers.

    python -m benchmarks.label_studio_push            # N = 1,000 and 5,000 (about 3 minutes)
    python -m benchmarks.label_studio_push --sizes 200

Needs the server's environment (``make label-studio``). For each N, the digits images are pushed as one
query through ``LabelStudioOracle.answer`` (tasks with the inlined 8x8 image, the acquisition score and the
model's suggestion as a prediction). For the pull, the same N tasks are imported with one annotation each
into a second project (as if annotated), and ``answer`` reads, checks and returns all N labels. Results go to
``benchmarks/results/label_studio.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from label_studio_server import init_data_dir, start_server

from lightning_al.datasets import Digits
from lightning_al.label_studio import LabelStudioOracle
from lightning_al.oracles import LabelsPending, Query

NAMES = [str(digit) for digit in range(10)]


def pool(n: int) -> tuple[torch.utils.data.Dataset, Query]:
    digits = Digits()
    ids = torch.arange(n) % len(digits)
    dataset = torch.utils.data.Subset(digits, ids.tolist())
    query = Query(0, torch.arange(n), torch.rand(n, dtype=torch.double), torch.randint(0, 10, (n,)))
    return dataset, query


def measure(url: str, token: str, n: int) -> dict[str, float]:
    dataset, query = pool(n)
    with tempfile.TemporaryDirectory() as directory:
        pusher = LabelStudioOracle(
            url, NAMES, project=f"push {n}", token=token, image_shape=[8, 8], dataset=dataset, directory=directory
        )
        started = time.perf_counter()
        with contextlib.suppress(LabelsPending):
            pusher.answer(query)
        push = time.perf_counter() - started
    truth = [int(dataset[i][1]) for i in range(n)]
    puller = LabelStudioOracle(url, NAMES, project=f"pull {n}", token=token, image_shape=[8, 8], dataset=dataset)
    project = puller.project_id()
    suggestions = puller._form().suggestions(query.predicted, list(range(n)), "label_studio", Path("."), Path("."))
    tasks = [puller._task(query, i, i, suggestions[i], puller._form()) for i in range(n)]
    for task, label in zip(tasks, truth, strict=True):  # annotated before the pull, as an annotation team would
        value = {"choices": [NAMES[label]]}
        task["annotations"] = [
            {"result": [{"from_name": "label", "to_name": "sample", "type": "choices", "value": value}]}
        ]
    headers = {"Authorization": f"Token {token}"}
    for start in range(0, n, 1000):
        answer = requests.post(
            f"{url}/api/projects/{project}/import", json=tasks[start : start + 1000], headers=headers, timeout=600
        )
        answer.raise_for_status()
    puller._mark_pushed(0, n)
    started = time.perf_counter()
    labels = puller.answer(query)
    pull = time.perf_counter() - started
    assert labels.tolist() == truth, "the pulled labels differ from the annotations"
    return {"push": push, "pull": pull}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "label_studio.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        data_dir = Path(root) / "data"
        data_dir.mkdir()
        init = init_data_dir(data_dir)
        server = start_server(data_dir, Path(root) / "server.log")
        try:
            rows = [(n, measure(server.url, server.token, n)) for n in args.sizes]
        finally:
            server.stop()
    lines = [
        "# LabelStudioOracle against a real Label Studio server (1.23.2, SQLite, 127.0.0.1)",
        "",
        f"Command: `python -m benchmarks.label_studio_push --sizes {' '.join(map(str, args.sizes))}`",
        "",
        f"- first start on a fresh data directory (migrations): {init:.1f} s; start on a migrated copy: "
        f"{server.start_seconds:.1f} s",
        "",
        "| tasks | push (s) | pull: read, check, return every label (s) |",
        "|---:|---:|---:|",
        *(f"| {n:,} | {t['push']:.1f} | {t['pull']:.1f} |" for n, t in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
