"""BatchBALD (Kirsch, van Amersfoort & Gal 2019): a batch chosen jointly, not point by point."""

from __future__ import annotations

import torch

from lightning_al._validation import check_int
from lightning_al.estimators.base import Estimator
from lightning_al.functional.batch_bald import batchbald_with_gains, check_sampling
from lightning_al.outputs import MC_PROBS, PoolOutputs
from lightning_al.strategies.base import Selection, Strategy, check_query_size
from lightning_al.strategies.bayesian import mc_probs_estimator


class BatchBALD(Strategy):
    """Greedily maximise the mutual information between the batch's joint labels and the model.

    Unlike top-``k`` BALD, a point that would repeat what an already chosen point tells the
    model adds little, so near-duplicates are not queried together. See
    `lightning_al.functional.batch_bald.batchbald` for the objective and its cost.

    Args:
        mc_samples: stochastic passes ``T`` of the default `MCDropout` estimator.
        num_samples: largest exact joint-configuration table; sampled configurations beyond it.
        estimator: computes ``mc_probs`` of shape ``(N, T, C)``; defaults to
            ``MCDropout(mc_samples, consistent_masks=True)`` (consistent MC dropout, as in the paper).
        sampling: how configurations are drawn once the joint is sampled: ``"stratified"`` (the
            authors' code) or ``"sequential"`` (see `lightning_al.functional.batch_bald.batchbald`).

    ``select`` returns the picks in greedy order with, as scores, the acquisition value each
    pick adds (nats; the first is its BALD score).

    Reference: Kirsch, van Amersfoort & Gal 2019, "BatchBALD: Efficient and Diverse Batch
    Acquisition for Deep Bayesian Active Learning".
    """

    requires = frozenset({MC_PROBS})

    def __init__(
        self,
        mc_samples: int = 20,
        num_samples: int = 10_000,
        estimator: Estimator | None = None,
        sampling: str = "stratified",
    ) -> None:
        check_int("num_samples", num_samples, 1)
        estimator = mc_probs_estimator(mc_samples, estimator)
        self.mc_samples = mc_samples
        self.num_samples = num_samples
        self.sampling = check_sampling(sampling)
        self.estimator = estimator

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """The greedy BatchBALD batch of ``k`` ids, with the acquisition value each pick adds as scores."""
        k = check_query_size(k, len(outputs))
        picks, gains = batchbald_with_gains(
            outputs[MC_PROBS], k, num_samples=self.num_samples, generator=generator, sampling=self.sampling
        )
        return Selection(ids=outputs.ids[picks.to(outputs.ids.device)], scores=gains)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mc_samples={self.mc_samples}, num_samples={self.num_samples}, "
            f"sampling={self.sampling!r})"
        )
