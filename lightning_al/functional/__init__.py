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
from lightning_al.functional.clustering import nearest_to_centres, weighted_kmeans
from lightning_al.functional.coverage import (
    ball_purity,
    nearest_other_cluster_distance,
    probcover_greedy,
    purity_delta,
)
from lightning_al.functional.diversity import badge, badge_factored, covering_radius, kcenter_greedy
from lightning_al.functional.dynamics import forgetting_counts, label_dispersion
from lightning_al.functional.gradient import egl
from lightning_al.functional.hybrid import cal_scores, max_cover_greedy
from lightning_al.functional.mal import cosine_logits, mal_score
from lightning_al.functional.ranking import loss_prediction_ranking_loss
from lightning_al.functional.reduction import bernoulli_as_categorical, reduce_units
from lightning_al.functional.selection import topk_select
from lightning_al.functional.typical_clusters import typicality, typiclust, typiclust_from_clusters
from lightning_al.functional.uncertainty import entropy, least_confidence, margin

__all__ = [
    "badge",
    "badge_factored",
    "bald",
    "ball_purity",
    "batchbald",
    "batchbald_with_gains",
    "bernoulli_as_categorical",
    "cal_scores",
    "cosine_logits",
    "covering_radius",
    "egl",
    "entropy",
    "expected_entropy",
    "forgetting_counts",
    "kcenter_greedy",
    "kl_to_consensus",
    "label_dispersion",
    "least_confidence",
    "loss_prediction_ranking_loss",
    "mal_score",
    "margin",
    "max_cover_greedy",
    "mean_std",
    "nearest_other_cluster_distance",
    "nearest_to_centres",
    "predictive_entropy",
    "probcover_greedy",
    "purity_delta",
    "reduce_units",
    "topk_select",
    "typicality",
    "typiclust",
    "typiclust_from_clusters",
    "variation_ratio",
    "vote_entropy",
    "weighted_kmeans",
]
