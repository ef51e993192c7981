"""Pure tensor kernels: acquisition scores and selection helpers.

No Lightning, no I/O; randomness only through an explicit ``generator``. Every score is
*higher = query first*, in nats where it is an entropy.
"""

from lightning_al.functional.batch_bald import batchbald, batchbald_with_gains
from lightning_al.functional.bayesian import (
    bald,
    expected_entropy,
    kl_to_consensus,
    mean_std,
    predictive_entropy,
    variation_ratio,
    vote_entropy,
)
from lightning_al.functional.selection import topk_select
from lightning_al.functional.uncertainty import entropy, least_confidence, margin

__all__ = [
    "bald",
    "batchbald",
    "batchbald_with_gains",
    "entropy",
    "expected_entropy",
    "kl_to_consensus",
    "least_confidence",
    "margin",
    "mean_std",
    "predictive_entropy",
    "topk_select",
    "variation_ratio",
    "vote_entropy",
]
