"""The strategy interface: declare the outputs you need, turn them into a query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_al.estimators import Estimator
from lightning_al.functional import topk_select
from lightning_al.functional._checks import as_count
from lightning_al.outputs import PoolOutputs

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from lightning_al.tasks import Task


@dataclass(frozen=True)
class Selection:
    """A query: dataset ids to label, highest priority first, with their scores (if any).

    ``pseudo_ids``/``pseudo_labels`` optionally name unlabelled samples to train on with
    model-given labels in the next fit only (CEAL); the pool never records them.

    Attributes:
        ids: ``LongTensor[k]`` dataset ids, in query order.
        scores: ``(k,)`` acquisition scores of ``ids``, or None.
        pseudo_ids: ``LongTensor[m]`` dataset ids of pseudo-labelled samples, or None.
        pseudo_labels: ``(m,)`` their labels (class indices), or None.
    """

    ids: Tensor
    scores: Tensor | None = None
    pseudo_ids: Tensor | None = None
    pseudo_labels: Tensor | None = None


def check_query_size(k: Any, available: int) -> int:
    """Validate a query size: ``k`` as an int in ``[1, available]``, else a `ValueError`.

    Args:
        k: the requested number of samples to query.
        available: the number of unlabelled samples scored.

    Returns:
        ``k`` as an ``int``.
    """
    k = as_count("k", k)
    if not 1 <= k <= available:
        raise ValueError(f"Expected `k` to be in [1, {available}] (the unlabelled samples scored), but got {k}.")
    return k


class Strategy:
    """Base class of acquisition strategies.

    A strategy declares in ``requires`` the pool outputs it reads (e.g. ``{"probs"}``),
    and in ``requires_labelled`` those it also needs for the labelled samples (delivered
    as ``outputs.labelled``); the loop computes exactly those, once per round, with the
    strategy's ``estimator`` unless the loop is given one. ``select`` receives all randomness through
    ``generator``, so a strategy without other state needs no ``state_dict``.
    """

    requires: frozenset[str] = frozenset()
    requires_labelled: frozenset[str] = frozenset()
    # Names of the tasks (lightning_al.tasks) the strategy's scores are defined for.
    tasks: frozenset[str] = frozenset({"multiclass"})
    estimator: Estimator | None = None
    # True when the loop may score the pool batch by batch and keep only a running top k (see ScoreStrategy).
    streamable: bool = False

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """Choose the ``k`` samples to query from the scored pool.

        Args:
            outputs: the pool's outputs named in ``requires`` (``N`` samples), plus ``outputs.labelled``
                when ``requires_labelled`` is set.
            k: the query size, in ``[1, N]``.
            generator: the source of all randomness of the selection.

        Returns:
            The ``k`` dataset ids to label, highest priority first, with their scores if any.
        """
        raise NotImplementedError

    def requires_for(self, task: Task) -> frozenset[str]:
        """The pool outputs read under ``task`` (``requires`` unless a strategy reads others per task)."""
        del task
        return frozenset(self.requires)

    def check_task(self, task: Task) -> None:
        """Refuse a task this strategy has no scores for (the loop calls it before anything runs)."""
        if task.name not in self.tasks:
            raise ValueError(
                f"Expected a task {type(self).__name__} supports ({', '.join(sorted(self.tasks))}), but the "
                f"datamodule's task is {task!r}."
            )

    def callbacks(self) -> list[pl.Callback]:
        """Callbacks added to every round's fit (e.g. ones that record training dynamics)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """The strategy's state between rounds (empty for a stateless strategy)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state returned by `state_dict`."""
        del state

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ScoreStrategy(Strategy):
    """A strategy that scores every sample and takes the top ``k`` (ties → lower dataset id).

    Set ``per_sample = False`` in a subclass whose score of a sample depends on the other samples
    (rank normalisation, neighbours, a pool statistic). Otherwise the strategy is
    `streamable` whenever it needs model outputs of the pool only: the loop then calls
    `batch_scores` on each predicted batch and keeps a running top ``k`` (``O(k)`` host
    memory; the ``(N, T, C)`` tensor of MC samples is never built), with the same query as
    `select` on the whole pool.
    """

    per_sample: bool = True

    @property
    def streamable(self) -> bool:  # type: ignore[override]
        """Whether the loop may score the pool batch by batch (see the class docstring)."""
        return (
            self.per_sample
            and bool(self.requires)
            and not self.requires_labelled
            and type(self).select is ScoreStrategy.select
        )

    def score(self, outputs: PoolOutputs) -> Tensor:
        """Scores of shape ``(N,)`` aligned with ``outputs.ids``; higher = query first."""
        raise NotImplementedError

    def batch_scores(self, outputs: PoolOutputs) -> Tensor:
        """Scores ``(B,)`` of one batch of pool outputs (on the scoring device); `score` by default."""
        return self.score(outputs)

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """The ``k`` samples with the highest `score`, highest first, with their scores."""
        check_query_size(k, len(outputs))
        scores = self.score(outputs)
        picked = topk_select(scores, k)
        return Selection(ids=outputs.ids[picked], scores=scores[picked])


class CallbackScoreStrategy(ScoreStrategy):
    """A score strategy that learns from training through its own callback, ``self.callback``.

    The callback joins every round's fit (`callbacks`) and its state is the strategy's state.
    """

    callback: pl.Callback

    def callbacks(self) -> list[pl.Callback]:
        """The strategy's own callback, ``[self.callback]``."""
        return [self.callback]

    def state_dict(self) -> dict[str, Any]:
        """The callback's state, under ``"callback"``."""
        return {"callback": self.callback.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the callback's state from `state_dict`."""
        self.callback.load_state_dict(state["callback"])
