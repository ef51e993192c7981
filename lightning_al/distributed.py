"""Sharding the pool across ranks, gathering results by dataset id, and agreeing on one query.

Under a multi-process strategy (``Trainer(strategy="ddp", devices=n)``), every rank runs the
active-learning loop. Scoring is split: rank ``r`` of ``W`` scores the candidates at positions
``r, r + W, r + 2W, ...`` of the ascending id list (`shard`: disjoint, no padding). The
results meet again by dataset id:

- score-only strategies (`lightning_al.strategies.base.ScoreStrategy.streamable`) keep a
  running top ``k`` per rank; `merge_top_k` gathers the ``W`` lists (``W * k`` pairs) on every
  rank and keeps the best ``k``, so the selection is computed once per rank from the same numbers;
- every other strategy receives the whole pool's outputs on rank 0 (`gather_by_id`, which also
  drops the duplicates a padding ``DistributedSampler`` adds), selects there, and the query is
  broadcast (`broadcast_from_rank_zero`).

Without an initialised ``torch.distributed`` process group (or with one rank) every helper is the
identity, so single-process runs take exactly the same code path.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_al.outputs import PoolOutputs
from lightning_al.scoring import top_k_by_score

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of the default process group (True when there is none)."""
    return rank_and_world()[0] == 0


def shard(ids_N: Tensor) -> Tensor:
    """This rank's share of ``ids_N``: every ``W``-th id from position ``rank`` (all of them on one rank)."""
    rank, world = rank_and_world()
    return ids_N if world == 1 else ids_N[rank::world]


def unique_by_id(ids_N: Tensor, values: dict[str, Tensor]) -> PoolOutputs:
    """``values`` (rows aligned with ``ids_N`` ``(N,)``) sorted by ascending id, first occurrence of each id kept.

    A ``DistributedSampler`` pads the last ranks with copies of the first samples; gathered in rank
    order, the first occurrence of an id is the original one.
    """
    ids_sorted, order = torch.sort(ids_N, stable=True)
    keep = torch.ones_like(ids_sorted, dtype=torch.bool)
    keep[1:] = ids_sorted[1:] != ids_sorted[:-1]
    positions = order[keep]
    return PoolOutputs(ids=ids_N[positions], values={name: value[positions] for name, value in values.items()})


def gather_by_id(outputs: PoolOutputs) -> PoolOutputs | None:
    """Every rank's ``outputs`` merged on rank 0 (ascending ids, duplicates dropped); None on the other ranks.

    ``outputs.labelled`` is not gathered (gather it with its own call).
    """
    rank, world = rank_and_world()
    if world == 1:
        return outputs
    local = (outputs.ids.cpu(), {name: value.cpu() for name, value in outputs.values.items()})
    parts: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(local, parts, dst=0)
    if parts is None:
        return None
    ids = torch.cat([part[0] for part in parts])
    values = {name: torch.cat([part[1][name] for part in parts]) for name in local[1]}
    return unique_by_id(ids, values)


def merge_top_k(ids_K: Tensor, scores_K: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The best ``k`` of every rank's local top ``k`` (ids ``ids_K``, scores ``scores_K``), on every rank.

    Ranked as `top_k_by_score`; returns ``(ids, scores)`` of the best ``k``.

    The ranks must have scored disjoint ids (`shard`); the result then equals the top ``k``
    of the whole pool scored on one process.
    """
    _, world = rank_and_world()
    if world == 1:
        return top_k_by_score(ids_K, scores_K, k)
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, (ids_K.cpu(), scores_K.cpu()))
    ids = torch.cat([part[0] for part in parts])
    dtype = parts[0][1].dtype
    for part in parts[1:]:
        dtype = torch.promote_types(dtype, part[1].dtype)
    scores = torch.cat([part[1].to(dtype) for part in parts])
    return top_k_by_score(ids, scores, k)


def broadcast_from_rank_zero(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (any picklable object); ``obj`` itself on one rank."""
    _, world = rank_and_world()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def average_gradients(parameters: Iterable[Tensor]) -> None:
    r"""Replace the gradient of each of ``parameters`` by its mean over the ranks, `\frac{1}{W}\sum_r g_r`.

    For modules trained beside the Lightning model with their own optimiser (a loss-prediction head,
    a discriminator), which DDP does not wrap: averaged before every step from identical initial
    weights, they stay identical on every rank. A rank without a gradient for a parameter counts
    as zero, as in DDP; a parameter no rank has a gradient for keeps ``None``. One all-reduce of
    one flat buffer; nothing on one rank.
    """
    _, world = rank_and_world()
    if world == 1:
        return
    params = list(parameters)
    if not params:
        return
    flags = torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype, device=params[0].device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params] + [flags])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for param, present in zip(params, flat[-len(params) :].tolist(), strict=True):
        mean = flat[offset : offset + param.numel()].view_as(param).div_(world)
        offset += param.numel()
        if present:
            param.grad = mean.to(param.dtype, copy=True) if param.grad is None else param.grad.copy_(mean)


def shutdown() -> None:
    """Wait for every rank, then destroy the default process group (nothing without one).

    Call it once per process at the end of a multi-process script. A gloo process group still
    alive at interpreter exit can abort the process (``terminate called without an active
    exception``), and a rank that leaves early can stall the others.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def global_rank() -> int:
    """This process's rank: the process group's, or before one exists the launcher's environment (0 by default)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def rank_zero_only(fn: Callable[P, R]) -> Callable[P, R | None]:
    """``fn`` run on rank 0 only (other ranks get None), in a run of either Lightning namespace."""

    @functools.wraps(fn)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R | None:
        return fn(*args, **kwargs) if global_rank() == 0 else None

    return wrapped
