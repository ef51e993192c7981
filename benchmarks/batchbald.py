r"""Time BatchBALD against a naive greedy written from its definition, and against ``batchbald_redux``.

Kirsch, van Amersfoort & Gal 2019, "BatchBALD: Efficient and Diverse Batch Acquisition for Deep
Bayesian Active Learning". The acquisition value of a batch is

.. math::
    a(x_1, \dots, x_n) = H[y_1, \dots, y_n] - \sum_{i=1}^n \frac{1}{T} \sum_t H[p_t(y_i \mid x_i)],
    \qquad p(y_{1:n}) = \frac{1}{T} \sum_t \prod_i p_t(y_i \mid x_i),

and the batch is built greedily. Methods, on the same synthetic ``probs_N_T_C`` (float64 softmax of
seeded random logits, peaked, with a per-point amount of member disagreement):

- **lightning_al**: :func:`lightning_al.functional.batchbald` (lazy greedy; exact here, since the
  benchmark keeps :math:`C^{k-1}` within its default ``num_samples = 10,000``), timed through
  ``batchbald_with_gains``, which it wraps, to also get the batch values;
- **naive**: :func:`naive_batchbald` below, the definition itself: at every step, for every remaining
  candidate, the full table of :math:`p(y_{1:n})` over all :math:`C^n` label configurations as the
  member mean of the products, its entropy, minus the members' mean entropies; argmax, ties to the
  lowest position. Vectorised over chunks of candidates, nothing else;
- **batchbald_redux** (if importable): ``get_batchbald_batch`` on the log of the same probabilities
  (computed before timing), float64, with the same ``num_samples``; its progress bars are disabled.

Each method runs ``--repeats`` times, the methods taking turns, and the fastest run counts (the
machine may be shared). Reported: the picks, whether they equal the library's, and the largest
difference between a method's batch values :math:`a(x_{1:n})` and the naive ones.

Run: ``python -m benchmarks.batchbald [--n 2000] [--mc-samples 20] [--classes 10] [--k 5] [--repeats 3] [--seed 0]
[--threads N]``. On a machine shared with other jobs, ``--threads 1`` avoids threads waiting on each other's
busy cores, which slows many small matrix products (``batchbald_redux``'s) by an order of magnitude.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

import lightning_al
from benchmarks.suite import SuiteRow
from lightning_al.functional import batchbald_with_gains

# The library's default: the largest exact configuration table (beyond it, it samples).
NUM_SAMPLES = 10_000
# Float64 entries of one chunk of the naive method's (candidates, C^n) joint tables (64 MiB).
_NAIVE_CHUNK_ELEMENTS = 2**23

LIBRARY = "lightning_al batchbald"
NAIVE = "naive greedy (definition)"
REDUX = "batchbald_redux"


def make_probs(n: int, members: int, classes: int, seed: int) -> Tensor:
    """Float64 ``probs_N_T_C``: softmax of ``2 * (3 * base_N_C + s_N * noise_N_T_C)``, ``s_N ~ U(0, 2)``.

    ``base`` and ``noise`` are standard normal; the per-point scale ``s`` sets how much the members
    disagree, so BALD and the joint values spread out and the greedy picks are well separated.
    """
    g = torch.Generator().manual_seed(seed)
    base_N_1_C = torch.randn(n, 1, classes, generator=g, dtype=torch.float64)
    disagreement_N_1_1 = 2 * torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
    noise_N_T_C = torch.randn(n, members, classes, generator=g, dtype=torch.float64)
    return torch.softmax(2 * (3 * base_N_1_C + disagreement_N_1_1 * noise_N_T_C), dim=-1)


def naive_batchbald(probs_N_T_C: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Greedy BatchBALD straight from the definition, exact, float64.

    At step :math:`n` with chosen points :math:`A` (``n - 1`` of them), every other point :math:`x`
    gets :math:`a(A \cup \{x\}) = H[y_A, y_x] - \sum_{i \in A \cup \{x\}} \frac{1}{T}\sum_t H[p_t(y_i)]`,
    where the joint :math:`p(y_A, y_x) = \frac{1}{T}\sum_t \prod_{i \in A \cup \{x\}} p_t(y_i)` is built
    over all ``C^n`` label configurations for every candidate, recomputed from scratch at every step
    (the member mean of the products is one contraction over the member axis). The largest value wins,
    ties to the lowest position. Costs ``N * T * C^n`` per step.

    Returns:
        ``(picks, values, gaps)``: ``LongTensor[batch_size]`` in greedy order; float64 ``values[n-1]``
        :math:`= a(x_1, \dots, x_n)`; float64 ``gaps[n-1]``, the winner's value minus the runner-up's
        (``inf`` when there is no runner-up).
    """
    probs = probs_N_T_C.to(torch.float64)
    num_points, num_members, num_classes = probs.shape
    member_entropy_N = -torch.special.xlogy(probs, probs).sum(dim=-1).mean(dim=-1)
    picks: list[int] = []
    values, gaps = [], []
    for _ in range(batch_size):
        # prod_{i in A} p_t(y_i) for every configuration y_A of the chosen labels: (T, C^(n-1)).
        chosen_T_M = torch.ones(num_members, 1, dtype=torch.float64)
        for i in picks:
            chosen_T_M = (chosen_T_M[:, :, None] * probs[i][:, None, :]).reshape(num_members, -1)
        configurations = chosen_T_M.shape[1] * num_classes
        chunk = max(1, _NAIVE_CHUNK_ELEMENTS // configurations)
        chosen_entropy = member_entropy_N[picks].sum()
        value_N = torch.empty(num_points, dtype=torch.float64)
        for start in range(0, num_points, chunk):
            # p(y_A, y_x = c) = mean_t [prod_{i in A} p_t(y_i)] p_t(c | x), all C^n configurations at once.
            joint_b_MC = torch.einsum("tm,btc->bmc", chosen_T_M, probs[start : start + chunk]).flatten(1) / num_members
            joint_entropy_b = -torch.special.xlogy(joint_b_MC, joint_b_MC).sum(dim=1)
            value_N[start : start + chunk] = joint_entropy_b - chosen_entropy - member_entropy_N[start : start + chunk]
        value_N[picks] = -math.inf
        best = value_N.max()
        pick = int((value_N == best).nonzero()[0])
        value_N[pick] = -math.inf
        picks.append(pick)
        values.append(float(best))
        gaps.append(float(best - value_N.max()))
    return torch.tensor(picks), torch.tensor(values, dtype=torch.float64), torch.tensor(gaps, dtype=torch.float64)


def load_redux() -> tuple[ModuleType | None, str]:
    """``(batchbald_redux.batchbald, version)`` if importable, else ``(None, why not)``."""
    try:
        import batchbald_redux
        from batchbald_redux import batchbald as redux_batchbald
    except ImportError as error:
        return None, f"not importable ({error})"
    return redux_batchbald, getattr(batchbald_redux, "__version__", "")


@contextlib.contextmanager
def _quiet_redux(redux: ModuleType) -> Iterator[None]:
    """Disable ``batchbald_redux``'s progress bars (its modules each hold a ``tqdm`` name) while inside."""
    from batchbald_redux import joint_entropy

    modules = [m for m in (redux, joint_entropy) if hasattr(m, "tqdm")]
    originals = [m.tqdm for m in modules]
    for module, original in zip(modules, originals, strict=True):
        module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.tqdm = original


def fastest(methods: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, Any]]:
    """``(fastest seconds, last result)`` of ``repeats`` runs per method, taking turns (order reversed every run)."""
    best: dict[str, tuple[float, Any]] = {name: (math.inf, None) for name in methods}
    order = list(methods)
    for repeat in range(repeats):
        for name in order if repeat % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            result = methods[name]()
            seconds = time.perf_counter() - start
            best[name] = (min(best[name][0], seconds), result)
    return best


@dataclass(frozen=True)
class MethodResult:
    """One method's fastest time, its picks and batch values ``a(x_1..x_n)`` (float64)."""

    name: str
    seconds: float
    picks: list[int]
    values: Tensor


@dataclass(frozen=True)
class Comparison:
    """All methods on one problem. ``gaps``: the naive winner-minus-runner-up value at each step (nats)."""

    n: int
    members: int
    classes: int
    k: int
    repeats: int
    library: MethodResult
    naive: MethodResult
    redux: MethodResult | None
    redux_skipped: str
    gaps: Tensor

    @property
    def others(self) -> list[MethodResult]:
        """The methods compared with the library."""
        return [self.naive] if self.redux is None else [self.naive, self.redux]


def compare(n: int, members: int, classes: int, k: int, repeats: int, seed: int) -> Comparison:
    """Run the library, the naive reference and (if importable) ``batchbald_redux`` on one synthetic problem."""
    probs_N_T_C = make_probs(n, members, classes, seed)
    naive_out: dict[str, Tensor] = {}

    def naive() -> Tensor:
        picks, values, gaps = naive_batchbald(probs_N_T_C, k)
        naive_out.update(values=values, gaps=gaps)
        return picks

    methods: dict[str, Callable[[], Any]] = {
        LIBRARY: lambda: batchbald_with_gains(probs_N_T_C, k, num_samples=NUM_SAMPLES),
        NAIVE: naive,
    }
    redux, redux_version = load_redux()
    if redux is not None:
        log_probs_N_T_C = probs_N_T_C.log()

        def run_redux() -> Any:
            with _quiet_redux(redux):
                return redux.get_batchbald_batch(log_probs_N_T_C, k, NUM_SAMPLES, dtype=torch.float64, device="cpu")

        methods[REDUX] = run_redux
    timed = fastest(methods, repeats)

    library_seconds, (library_picks, library_gains) = timed[LIBRARY]
    library = MethodResult(LIBRARY, library_seconds, library_picks.tolist(), library_gains.cumsum(0))
    naive_result = MethodResult(NAIVE, timed[NAIVE][0], timed[NAIVE][1].tolist(), naive_out["values"])
    redux_result = None
    if redux is not None:
        seconds, batch = timed[REDUX]
        name = f"{REDUX} {redux_version}".strip()
        redux_result = MethodResult(name, seconds, list(batch.indices), torch.tensor(batch.scores, dtype=torch.float64))
    skipped = "" if redux is not None else redux_version
    return Comparison(n, members, classes, k, repeats, library, naive_result, redux_result, skipped, naive_out["gaps"])


def _picks_note(result: MethodResult, library: MethodResult) -> str:
    if result.picks == library.picks:
        return "identical picks"
    return f"picks differ: {result.picks} vs {library.picks}"


def suite_rows(quick: bool = False) -> list[SuiteRow]:
    """Rows for the benchmark suite: the library (reference), the naive greedy and ``batchbald_redux`` if importable.

    ``quick`` uses ``N=200, k=3`` and one run per method; otherwise the command-line defaults
    (``N=2000, T=20, C=10, k=5``, fastest of 3 runs).
    """
    n, k, repeats = (200, 3, 1) if quick else (2000, 5, 3)
    c = compare(n, members=20, classes=10, k=k, repeats=repeats, seed=0)
    benchmark = f"BatchBALD, N={n:,} T=20 C=10 k={k}"
    rows = [SuiteRow(benchmark, f"{LIBRARY} (exact)", c.library.seconds, note=f"picks {c.library.picks}")]
    for other in c.others:
        ratio = other.seconds / c.library.seconds
        note = _picks_note(other, c.library)
        rows.append(SuiteRow(benchmark, other.name, other.seconds, reference=LIBRARY, ratio=ratio, note=note))
    return rows


def machine() -> str:
    return f"{os.cpu_count()} CPUs, torch {torch.__version__}, intra-op threads {torch.get_num_threads()}, device cpu"


def report(c: Comparison) -> None:
    print(
        f"BatchBALD: N={c.n} T={c.members} C={c.classes} k={c.k}, exact (C^(k-1) = {c.classes ** (c.k - 1)} "
        f"<= num_samples = {NUM_SAMPLES}); fastest of {c.repeats} runs"
    )
    print(f"machine: {machine()}; lightning_al {getattr(lightning_al, '__version__', '')}".rstrip())
    header = f"{'method':<28}{'seconds':>10}{'x library':>11}  {'identical picks':<17}{'max |a - a_naive|':>19}  picks"
    print(header)
    print("-" * len(header))
    for result in [c.library, *c.others]:
        identical = "yes" if result.picks == c.library.picks else "no"
        deviation = float((result.values - c.naive.values).abs().max())
        print(
            f"{result.name:<28}{result.seconds:>10.3f}{result.seconds / c.library.seconds:>11.1f}  {identical:<17}"
            f"{deviation:>19.2e}  {result.picks}"
        )
    if c.redux is None:
        print(f"{REDUX}: skipped, {c.redux_skipped}")
    for other in c.others:
        identical = "yes" if other.picks == c.library.picks else "no"
        print(f"{other.name} / library time: {other.seconds / c.library.seconds:.1f}x; identical picks: {identical}")
    print(f"batch values a(x_1..x_n) (naive): {[round(v, 6) for v in c.naive.values.tolist()]}")
    print(f"smallest winner - runner-up gap over the steps (naive): {float(c.gaps.min()):.3e} nats")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="pool size N")
    parser.add_argument("--mc-samples", type=int, default=20, help="stochastic passes / members T")
    parser.add_argument("--classes", type=int, default=10, help="classes C")
    parser.add_argument("--k", type=int, default=5, help="batch size")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method (the fastest counts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args(argv)
    for name, least in (("n", 1), ("mc_samples", 1), ("classes", 2), ("k", 1), ("repeats", 1), ("threads", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(args, name)}")
    if args.k > args.n:
        parser.error(f"--k must be at most --n ({args.n}), got {args.k}")
    if args.classes ** (args.k - 1) > NUM_SAMPLES:
        parser.error(
            f"--k {args.k} with --classes {args.classes} leaves the exact regime the comparison needs: "
            f"C^(k-1) = {args.classes ** (args.k - 1)} > {NUM_SAMPLES}"
        )
    torch.set_num_threads(args.threads)
    report(compare(args.n, args.mc_samples, args.classes, args.k, args.repeats, args.seed))


if __name__ == "__main__":
    main()
