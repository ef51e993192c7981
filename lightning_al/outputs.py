"""What the model says about the pool, keyed by dataset id."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from lightning_al.tasks import MultiClass, Task

# Names of the outputs an estimator can produce and a strategy can require.
PROBS = "probs"  # (N, C) softmax outputs
MC_PROBS = "mc_probs"  # (N, T, C) softmax outputs of T stochastic passes or committee members
EMBEDDINGS = "embeddings"  # (N, D) features: by default the input of the model's last linear layer
GRAD_EMBEDDINGS = "grad_embeddings"  # (N, E) last-layer gradient embeddings under predicted labels (BADGE)
VALID = "valid"  # (N, ...) bool: the units to score (a segmentation batch's valid region), when the task reads one


def _default_task() -> Task:
    return MultiClass()


@dataclass
class PoolOutputs:
    """Per-sample model outputs for a set of pool samples.

    Attributes:
        ids: ``LongTensor[N]``, dataset ids of the scored samples (ascending).
        values: named tensors whose first axis is aligned with ``ids``, e.g.
            ``values["probs"]`` of shape ``(N, C)``.
        labelled: the same kind of outputs for the labelled samples, present when the
            strategy declares ``requires_labelled`` (core-set and CAL compare the pool with them).
        task: the task the outputs belong to; `score` and `mc_score` apply a kernel per unit
            and reduce to one score per sample through it.
    """

    ids: Tensor
    values: dict[str, Tensor] = field(default_factory=dict)
    labelled: PoolOutputs | None = None
    task: Task = field(default_factory=_default_task)

    def __post_init__(self) -> None:
        for name, value in self.values.items():
            if value.shape[0] != self.ids.shape[0]:
                raise ValueError(
                    f"Expected output {name!r} to have one row per id ({self.ids.shape[0]}), "
                    f"but got shape {tuple(value.shape)}."
                )

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def subset(self, positions: Tensor) -> PoolOutputs:
        """The outputs of the samples at ``positions`` (along ``ids``); ``labelled`` is kept as is."""
        return PoolOutputs(
            ids=self.ids[positions],
            values={name: value[positions] for name, value in self.values.items()},
            labelled=self.labelled,
            task=self.task,
        )

    def score(self, kernel: Callable[[Tensor], Tensor], name: str = PROBS) -> Tensor:
        """``(N,)`` scores: ``kernel`` (``(M, K) → (M,)``) on every unit of output ``name``, reduced by the task."""
        return self.task.score(kernel, self[name], self.values.get(VALID))

    def mc_score(self, kernel: Callable[[Tensor], Tensor], name: str = MC_PROBS) -> Tensor:
        """``(N,)`` scores: ``kernel`` (``(M, T, K) → (M,)``) on every unit's passes, reduced by the task."""
        return self.task.mc_score(kernel, self[name], self.values.get(VALID))

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.values:
            raise KeyError(f"Expected pool output {name!r}, but only {sorted(self.values)} were computed.")
        return self.values[name]
