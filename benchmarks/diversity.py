"""Time k-center greedy and BADGE on a large synthetic pool, with their peak extra memory.

Inputs: float32 embeddings from a mixture of ``C`` Gaussian clusters and softmax probabilities
of random logits, built in chunks from a seed; 1% of the pool is labelled (k-center's starting
centres). BADGE seeds on all ``N`` rows, as if the whole pool were unlabelled, so both kernels
share one baseline. Each kernel runs in a fresh ``spawn`` subprocess that first builds the
inputs; its peak resident memory (``VmHWM``) minus that of an idle spawned process holding the
same inputs is the kernel's extra peak memory. Next to it: what a materialised approach would
need (``N x N`` float32 distances; ``N x D*C`` float32 gradient embeddings).

Run: ``python -m benchmarks.diversity [--n 200000] [--dim 512] [--classes 100] [--k 1000] [--dtype float16]``;
``--dtype`` is the dtype the embeddings are built and held in (probabilities stay float32).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch

from benchmarks.suite import SuiteRow
from lightning_al.functional.diversity import badge, kcenter_greedy

_GIB = 2**30
_MIB = 2**20


def _vm_hwm_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def make_inputs(
    n: int, dim: int, classes: int, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(embeddings (n, dim) in dtype, probs (n, classes) float32, labelled mask (n,))``, built in chunks."""
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(classes, dim, generator=g)
    embeddings = torch.empty(n, dim, dtype=dtype)
    probs = torch.empty(n, classes)
    chunk = 8192
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        labels = torch.randint(classes, (rows,), generator=g)
        embeddings[start : start + rows] = means[labels] + torch.randn(rows, dim, generator=g)
        probs[start : start + rows] = torch.softmax(2.0 * torch.randn(rows, classes, generator=g), dim=1)
    labelled = torch.zeros(n, dtype=torch.bool)
    labelled[torch.randperm(n, generator=g)[: max(1, n // 100)]] = True
    return embeddings, probs, labelled


def _worker(kernel: str, args: dict, queue: mp.Queue) -> None:
    torch.set_num_threads(args["threads"])
    dtype = getattr(torch, args.get("dtype", "float32"))
    embeddings, probs, labelled = make_inputs(args["n"], args["dim"], args["classes"], args["seed"], dtype)
    start = time.perf_counter()
    if kernel == "kcenter_greedy":
        picks = kcenter_greedy(embeddings, labelled, args["k"])
    elif kernel == "badge":
        picks = badge(probs, embeddings, args["k"], generator=torch.Generator().manual_seed(args["seed"]))
    else:  # idle baseline
        picks = None
    seconds = time.perf_counter() - start
    unique = None if picks is None else int(picks.unique().numel())
    queue.put((seconds, _vm_hwm_bytes(), unique))


def run_in_subprocess(kernel: str, args: dict) -> tuple[float, int, int | None]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(kernel, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def suite_rows(quick: bool = False) -> list[SuiteRow]:
    """k-center greedy and BADGE picking k = 1,000 of N = 200,000 (D = 512, C = 100), each in a fresh process.

    ``ratio`` is the kernel's extra peak memory over what the materialised approach would allocate.
    """
    n, k = (5_000, 50) if quick else (200_000, 1_000)
    args = {"n": n, "dim": 512, "classes": 100, "k": k, "seed": 0, "threads": torch.get_num_threads()}
    _, idle_hwm, _ = run_in_subprocess("idle", args)
    materialised = {"kcenter_greedy": n * n * 4, "badge": n * 512 * 100 * 4}
    rows = []
    for kernel in ("kcenter_greedy", "badge"):
        seconds, hwm, unique = run_in_subprocess(kernel, args)
        extra = max(hwm - idle_hwm, 0)
        note = (
            f"peak +{extra / _MIB:.0f} MiB vs {materialised[kernel] / _GIB:.1f} GiB materialised; {unique} unique picks"
        )
        rows.append(
            SuiteRow(
                f"diversity, N={n:,}, k={k:,}",
                kernel,
                seconds,
                "materialised memory",
                extra / materialised[kernel],
                note,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="dtype of the embeddings")
    args = vars(parser.parse_args())
    n, dim, classes = args["n"], args["dim"], args["classes"]

    _, idle_hwm, _ = run_in_subprocess("idle", args)
    rows = []
    for kernel in ("kcenter_greedy", "badge"):
        seconds, hwm, unique = run_in_subprocess(kernel, args)
        rows.append((kernel, seconds, hwm, unique))

    inputs_gib = (n * dim * getattr(torch, args["dtype"]).itemsize + n * classes * 4) / _GIB
    print(
        f"N={n} D={dim} C={classes} k={args['k']} labelled={max(1, n // 100)} threads={args['threads']} "
        f"embeddings={args['dtype']} "
        f"inputs={inputs_gib:.2f} GiB idle VmHWM={idle_hwm / _MIB:.0f} MiB"
    )
    header = f"{'kernel':<16}{'time s':>10}{'VmHWM MiB':>12}{'extra MiB':>12}{'unique picks':>14}"
    header += f"{'materialised GiB':>18}"
    print(header)
    print("-" * len(header))
    materialised = {"kcenter_greedy": n * n * 4 / _GIB, "badge": n * dim * classes * 4 / _GIB}
    for kernel, seconds, hwm, unique in rows:
        print(
            f"{kernel:<16}{seconds:>10.2f}{hwm / _MIB:>12.0f}{(hwm - idle_hwm) / _MIB:>12.0f}"
            f"{unique:>14d}{materialised[kernel]:>18.2f}"
        )
    print("materialised: N x N float32 distances (k-center); N x (D*C) float32 gradient embeddings (BADGE)")


if __name__ == "__main__":
    main()
