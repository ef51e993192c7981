"""Representation- and gradient-based strategies: core-set, BADGE, EGL, diverse mini-batch, CAL."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_al._validation import check_int
from lightning_al.estimators.base import Softmax
from lightning_al.functional.clustering import nearest_to_centres, weighted_kmeans
from lightning_al.functional.diversity import badge, badge_factored, kcenter_greedy
from lightning_al.functional.gradient import egl
from lightning_al.functional.hybrid import cal_scores
from lightning_al.functional.uncertainty import margin
from lightning_al.outputs import EMBEDDINGS, GRAD_EMBEDDINGS, PROBS, PoolOutputs
from lightning_al.strategies.base import ScoreStrategy, Selection, Strategy, check_query_size
from lightning_al.tasks import ALL_TASKS, Task


class _EmbeddingStrategy(Strategy):
    """Reads the deterministic model's ``probs`` and ``embeddings`` (see `Softmax`).

    Args:
        embedding_layer: name of the layer whose output is the embedding; by default the input
            of the model's last linear layer (or its ``embed()``).
    """

    requires = frozenset({PROBS, EMBEDDINGS})

    def __init__(self, embedding_layer: str | None = None) -> None:
        self.embedding_layer = embedding_layer
        self.estimator = Softmax(embedding_layer)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CoreSet(_EmbeddingStrategy):
    """Greedy k-center: each pick is the pool sample farthest from every labelled or picked sample.

    Covers the embedding space so that no unlabelled point is far from a labelled one
    (Sener & Savarese 2018, "Active Learning for Convolutional Neural Networks: A Core-Set
    Approach", greedy 2-approximation). For segmentation the embedding is the head's input averaged over
    pixels (see `lightning_al.tasks.Segmentation`).

    Args:
        embedding_layer: name of the layer whose output is the embedding; by default the input
            of the model's last linear layer (or its ``embed()``).
    """

    requires = frozenset({EMBEDDINGS})
    requires_labelled = frozenset({EMBEDDINGS})
    tasks = ALL_TASKS

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """``k`` ids by greedy k-center from the labelled embeddings, in pick order (no scores)."""
        k = check_query_size(k, len(outputs))
        pool = outputs[EMBEDDINGS]
        labelled = outputs.labelled[EMBEDDINGS] if outputs.labelled is not None else pool.new_zeros(0, pool.shape[1])
        embeddings = torch.cat([labelled, pool])
        mask = torch.zeros(embeddings.shape[0], dtype=torch.bool)
        mask[: labelled.shape[0]] = True
        picks = kcenter_greedy(embeddings, mask, k) - labelled.shape[0]
        return Selection(ids=outputs.ids[picks])


class BADGE(_EmbeddingStrategy):
    """k-means++ seeding on last-layer gradient embeddings ``(p - onehot(argmax p)) ⊗ h``.

    Large gradient embeddings are uncertain samples, distant ones are diverse; seeding picks
    both at once (Ash et al. 2020, "Deep Batch Active Learning by Diverse, Uncertain
    Gradient Lower Bounds"). The embedding must be the input of the model's last linear
    layer, the default.

    Multi-label: the binary cross-entropy gradient ``(sigmoid(z) - ŷ) ⊗ h`` with ``ŷ = [p >= threshold]``,
    never materialised (`lightning_al.functional.badge_factored`). Segmentation: the gradient of the
    mean pixel cross-entropy w.r.t. the 1×1 head, ``mean_hw (p_hw - e_ŷhw) ⊗ h_hw``, computed batch by
    batch by the estimator (``grad_embeddings``, of size ``C · D``).

    Args:
        embedding_layer: see `CoreSet`; must be the input of the last linear layer (the default).
    """

    tasks = ALL_TASKS

    def requires_for(self, task: Task) -> frozenset[str]:
        """``probs`` and ``embeddings`` where the task's gradients factorise, else ``grad_embeddings``."""
        return self.requires if task.factorised_gradients else frozenset({GRAD_EMBEDDINGS})

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """``k`` ids by k-means++ seeding on the gradient embeddings, in pick order (no scores)."""
        k = check_query_size(k, len(outputs))
        task = outputs.task
        if not task.factorised_gradients:
            grads = outputs[GRAD_EMBEDDINGS]
            picks = badge_factored(grads.new_ones(grads.shape[0], 1), grads, k, generator=generator)
        elif task.name == "multiclass":
            picks = badge(outputs[PROBS], outputs[EMBEDDINGS], k, generator=generator)
        else:
            residuals = task.gradient_residuals(outputs[PROBS])
            picks = badge_factored(residuals, outputs[EMBEDDINGS], k, generator=generator)
        return Selection(ids=outputs.ids[picks])


class EGL(_EmbeddingStrategy, ScoreStrategy):
    """Expected gradient length of the last linear layer: ``sum_y p(y) ‖p - e_y‖ ‖h‖``.

    The samples whose label, whichever it turns out to be, would change the model most
    (Settles, Craven & Ray 2008, "Multiple-Instance Active Learning").

    Args:
        embedding_layer: see `CoreSet`; must be the input of the last linear layer (the default).
    """

    def score(self, outputs: PoolOutputs) -> Tensor:
        """``(N,)`` expected gradient lengths from ``probs`` ``(N, C)`` and ``embeddings`` ``(N, D)``."""
        return egl(outputs[PROBS], outputs[EMBEDDINGS])


class DiverseMiniBatch(_EmbeddingStrategy):
    """Prefilter the ``beta · k`` smallest margins, cluster them with margin-weighted k-means into
    ``k`` clusters and take the sample nearest each centre (Zhdanov 2019, "Diverse mini-batch
    Active Learning").

    Args:
        beta: prefilter size as a multiple of the query size (the paper uses 10 to 50).
        embedding_layer: see `CoreSet`.
    """

    def __init__(self, beta: int = 10, embedding_layer: str | None = None) -> None:
        check_int("beta", beta, 1)
        super().__init__(embedding_layer)
        self.beta = beta

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """One sample per margin-weighted cluster, with its margin informativeness as score."""
        k = check_query_size(k, len(outputs))
        informativeness = margin(outputs[PROBS])
        keep = torch.sort(informativeness, descending=True, stable=True).indices[: min(len(outputs), self.beta * k)]
        embeddings = outputs[EMBEDDINGS][keep]
        centres, _ = weighted_kmeans(embeddings, informativeness[keep], k, generator=generator)
        picks = keep[nearest_to_centres(embeddings, centres)]
        return Selection(ids=outputs.ids[picks], scores=informativeness[picks])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta})"


class CAL(_EmbeddingStrategy, ScoreStrategy):
    """Contrastive active learning: candidates whose predictions diverge most from those of their
    nearest labelled neighbours in feature space (Margatina et al. 2021, "Active Learning by
    Acquiring Contrastive Examples").

    Args:
        k_neighbours: labelled neighbours compared with each candidate.
        embedding_layer: see `CoreSet`.
    """

    requires_labelled = frozenset({PROBS, EMBEDDINGS})

    def __init__(self, k_neighbours: int = 10, embedding_layer: str | None = None) -> None:
        check_int("k_neighbours", k_neighbours, 1)
        super().__init__(embedding_layer)
        self.k_neighbours = k_neighbours

    def score(self, outputs: PoolOutputs) -> Tensor:
        """``(N,)`` mean KL divergence between each candidate's and its labelled neighbours' predictions."""
        if outputs.labelled is None or len(outputs.labelled) == 0:
            raise ValueError("Expected labelled samples for CAL to compare candidates with, but there are none.")
        labelled = outputs.labelled
        return cal_scores(outputs[PROBS], outputs[EMBEDDINGS], labelled[PROBS], labelled[EMBEDDINGS], self.k_neighbours)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k_neighbours={self.k_neighbours})"
