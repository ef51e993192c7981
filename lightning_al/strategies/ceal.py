"""Cost-effective active learning (Wang et al. 2016): query the uncertain, pseudo-label the confident."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from lightning_al.functional.uncertainty import entropy
from lightning_al.outputs import PROBS, PoolOutputs
from lightning_al.strategies.base import ScoreStrategy, Selection, Strategy
from lightning_al.strategies.uncertainty import Entropy

if TYPE_CHECKING:
    import pytorch_lightning as pl


class CEAL(Strategy):
    """The ``base`` strategy picks the queries; confident samples train the next fit with the model's labels.

    Each round, unlabelled samples whose predictive entropy is below
    ``threshold_t = threshold - decay · t`` (``t`` = rounds selected so far) get their
    predicted class as a pseudo-label for the next fit only: they never enter the labelled
    set, the pool's record or the oracle's queue, and a sample the oracle labels in the same
    round drops out of them. The decaying threshold trusts the model less as its labelled
    set, hence its standard, grows (Wang et al. 2016, "Cost-Effective Active Learning for
    Deep Image Classification").

    Args:
        base: the strategy choosing the queries (default `Entropy`, the paper's EN criterion).
        threshold: initial entropy threshold ``δ₀`` in nats; the default is the paper's 0.005. A
            larger one admits more, and more often wrong, pseudo-labels: on digits (10 classes,
            20 labels, 200-step fits) 0.05 put about 160 beside the 20 true labels and fell below
            Random, while 0.005 and 0.01 beat it (``benchmarks/arms.py``).
        decay: threshold decrease per round ``dr`` (the paper's 0.00033).
    """

    requires = frozenset({PROBS})

    def __init__(self, base: ScoreStrategy | None = None, threshold: float = 0.005, decay: float = 0.00033) -> None:
        base = base if base is not None else Entropy()
        if not isinstance(base, Strategy):
            raise TypeError(f"Expected `base` to be a lightning_al Strategy, but got {type(base).__name__}.")
        for name, value in (("threshold", threshold), ("decay", decay)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Expected `{name}` to be a finite number >= 0, but got {value!r}.")
        self.base, self.threshold, self.decay = base, float(threshold), float(decay)
        self.requires = frozenset({PROBS}) | base.requires
        self.requires_labelled = base.requires_labelled
        self.estimator = base.estimator
        self.rounds_selected = 0

    def current_threshold(self) -> float:
        """This round's entropy threshold ``max(0, threshold - decay · t)`` in nats."""
        return max(0.0, self.threshold - self.decay * self.rounds_selected)

    def callbacks(self) -> list[pl.Callback]:
        """The ``base`` strategy's callbacks."""
        return self.base.callbacks()

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """The ``base`` strategy's query, plus the confident unqueried samples with their argmax pseudo-labels."""
        query = self.base.select(outputs, k, generator=generator)
        probs = outputs[PROBS]
        confident = entropy(probs) < self.current_threshold()
        confident[torch.isin(outputs.ids, query.ids)] = False
        self.rounds_selected += 1
        return Selection(
            ids=query.ids,
            scores=query.scores,
            pseudo_ids=outputs.ids[confident],
            pseudo_labels=probs[confident].argmax(dim=1),
        )

    def state_dict(self) -> dict[str, Any]:
        """The rounds selected so far and the ``base`` strategy's state."""
        return {"rounds_selected": self.rounds_selected, "base": self.base.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state returned by `state_dict`."""
        self.rounds_selected = int(state["rounds_selected"])
        self.base.load_state_dict(state["base"])

    def __repr__(self) -> str:
        return f"CEAL({self.base!r}, threshold={self.threshold}, decay={self.decay})"
