"""Cold-start strategies for tiny budgets: TypiClust, ProbCover, and a budget-aware switch to another strategy.

With a few dozen labels, uncertainty sampling tends to lose to random sampling (Hacohen, Dekel &
Weinshall 2022, "Active Learning on a Budget"): the model's uncertainty is not yet informative,
and querying outliers wastes labels. TypiClust and ProbCover instead query *representative*
points of an embedding space.

**Which embeddings.** Both read ``embeddings`` for the pool and the labelled set. By default these
are the task model's penultimate features — at round 0 those of an untrained network, since nothing
has been fitted yet. Pass ``estimator=FrozenEncoder(encoder)`` (a pretrained, e.g. self-supervised,
encoder) or ``estimator=PrecomputedEmbeddings(features)`` (a table indexed by dataset id) to select
in a space that is meaningful before the first label; the papers use self-supervised features.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_al._validation import check_int
from lightning_al.estimators.base import Estimator, Softmax, TrainFn
from lightning_al.functional.clustering import weighted_kmeans
from lightning_al.functional.coverage import probcover_greedy, purity_delta
from lightning_al.functional.typical_clusters import typiclust
from lightning_al.outputs import EMBEDDINGS, PROBS, PoolOutputs
from lightning_al.strategies.base import Selection, Strategy, check_query_size

if TYPE_CHECKING:
    import pytorch_lightning as pl


def _labelled_and_pool(outputs: PoolOutputs, normalize: bool = False) -> tuple[Tensor, Tensor]:
    """Embeddings of the labelled samples stacked above the pool's (each row L2-normalised with
    ``normalize``; an all-zero row stays zero), and the mask of the labelled rows."""
    pool = outputs[EMBEDDINGS]
    labelled = outputs.labelled[EMBEDDINGS] if outputs.labelled is not None else pool.new_zeros(0, pool.shape[1])
    mask = torch.zeros(labelled.shape[0] + pool.shape[0], dtype=torch.bool)
    mask[: labelled.shape[0]] = True
    embeddings = torch.cat([labelled.to(pool), pool])
    if normalize:
        embeddings = embeddings.double()
        embeddings = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return embeddings, mask


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be a bool, but got {value!r}.")


class TypiClust(Strategy):
    """Query the most typical unlabelled sample of each least-covered k-means cluster (Hacohen et al. 2022).

    With the rules of the authors' code (github.com/avihu111/TypiClust): the embeddings are
    L2-normalised, all samples (labelled and pool) are clustered into ``min(num_labelled + k,
    max_clusters)`` clusters, the clusters of at least ``min_cluster_size`` samples are ordered
    once (fewest labelled first, then the largest) and the ``i``-th pick comes from the ``i``-th
    of them: its unlabelled sample of largest typicality, the inverse mean squared distance to
    its ``min(k_neighbours, n // 2)`` nearest neighbours among the cluster's ``n`` unlabelled
    samples. See `lightning_al.functional.typiclust` and
    `lightning_al.functional.typiclust_from_clusters`. On the digits benchmarks (3 seeds, AULC ÷
    Random, a 20-dimensional PCA as embeddings) these rules scored 1.063 from 20 to 100 labels
    (1.057 without the normalisation) and 1.051 from 20 to 200; the library's earlier rules
    (no normalisation, a cluster order updated after every pick, typicality among all of a
    cluster's samples with ``K = min(20, size - 1)``, clusters of 5 kept) scored 1.067 and 1.044.

    Args:
        max_clusters: cap on the number of k-means clusters (the paper: 500).
        k_neighbours: neighbours of the typicality (the paper: 20).
        min_cluster_size: smaller clusters are used only once the others are exhausted (the
            authors' code drops clusters of 5 samples or fewer: 6).
        normalize: L2-normalise the embeddings first (the authors' code; ``False``: as given).
        squared_distances: typicality from squared distances (the authors' code; ``False``: the
            paper's formula, plain distances).
        n_init: k-means runs, the lowest-inertia one kept; ``None``: the authors' 10 up to 50
            clusters, 3 beyond.
        estimator: source of the embeddings; by default the task model's penultimate features
            (untrained at round 0 — prefer `lightning_al.estimators.fixed_features.FrozenEncoder` or
            `lightning_al.estimators.fixed_features.PrecomputedEmbeddings` for a cold start).
    """

    requires = frozenset({EMBEDDINGS})
    requires_labelled = frozenset({EMBEDDINGS})

    def __init__(
        self,
        max_clusters: int = 500,
        k_neighbours: int = 20,
        min_cluster_size: int = 6,
        normalize: bool = True,
        squared_distances: bool = True,
        n_init: int | None = None,
        estimator: Estimator | None = None,
    ) -> None:
        check_int("max_clusters", max_clusters, 1)
        check_int("k_neighbours", k_neighbours, 1)
        check_int("min_cluster_size", min_cluster_size, 1)
        check_int("n_init", n_init, 1, optional=True)
        _check_bool("normalize", normalize)
        _check_bool("squared_distances", squared_distances)
        self.max_clusters, self.k_neighbours, self.min_cluster_size = max_clusters, k_neighbours, min_cluster_size
        self.normalize, self.squared_distances, self.n_init = normalize, squared_distances, n_init
        self.estimator = estimator if estimator is not None else Softmax()

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """``k`` typical samples of the least-covered clusters, in pick order (no scores)."""
        k = check_query_size(k, len(outputs))
        embeddings, mask = _labelled_and_pool(outputs, self.normalize)
        picks = typiclust(
            embeddings,
            mask,
            k,
            max_clusters=self.max_clusters,
            k_neighbours=self.k_neighbours,
            min_cluster_size=self.min_cluster_size,
            generator=generator,
            squared_distances=self.squared_distances,
            n_init=self.n_init,
        )
        return Selection(ids=outputs.ids[picks.cpu() - int(mask.sum())])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_clusters={self.max_clusters}, k_neighbours={self.k_neighbours}, "
            f"min_cluster_size={self.min_cluster_size}, normalize={self.normalize}, "
            f"squared_distances={self.squared_distances}, n_init={self.n_init})"
        )


class ProbCover(Strategy):
    """Greedy max coverage of δ-balls around labelled and queried samples (Yehuda et al. 2022).

    Each pick is the pool sample whose δ-ball holds the most samples not yet within δ of a labelled
    or picked one. Unless ``delta`` is given, δ is chosen every round by the paper's purity rule:
    k-means with ``num_classes`` clusters on all samples' embeddings, then the largest δ for which at
    least ``purity`` of the samples have δ-balls holding only their own cluster
    (`lightning_al.functional.purity_delta`); the last δ used is kept in ``delta_``. As in the
    authors' code the embeddings are L2-normalised first (``normalize``), so δ is a chordal
    distance on the unit sphere (their CIFAR-10 example: 0.75). On the digits benchmarks (3 seeds,
    AULC ÷ Random, a 20-dimensional PCA as embeddings) normalising made no difference from 20 to 100
    labels, ProbCover's budget (1.000 against 1.001 without), and cost a little from 20 to 200
    (0.993 against 1.009); the authors' choice stays the default.

    Args:
        num_classes: number of classes (the clusters of the purity rule).
        delta: fixed ball radius instead of the purity rule (in the units of the embeddings,
            normalised ones with ``normalize``).
        purity: the purity threshold α (the paper: 0.95).
        normalize: L2-normalise the embeddings first (the authors' code; ``False``: as given).
        estimator: source of the embeddings, see `TypiClust`.
    """

    requires = frozenset({EMBEDDINGS})
    requires_labelled = frozenset({EMBEDDINGS})

    def __init__(
        self,
        num_classes: int,
        delta: float | None = None,
        purity: float = 0.95,
        normalize: bool = True,
        estimator: Estimator | None = None,
    ) -> None:
        check_int("num_classes", num_classes, 2)
        _check_bool("normalize", normalize)
        self.normalize = normalize
        if delta is not None and (isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta >= 0):
            raise ValueError(f"Expected `delta` to be a number >= 0 or None, but got {delta!r}.")
        if isinstance(purity, bool) or not isinstance(purity, (int, float)) or not 0 < purity <= 1:
            raise ValueError(f"Expected `purity` to be a number in (0, 1], but got {purity!r}.")
        self.num_classes, self.delta, self.purity = num_classes, delta, purity
        self.estimator = estimator if estimator is not None else Softmax()
        self.delta_: float | None = delta

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """``k`` samples by greedy δ-ball coverage, in pick order (no scores); sets ``delta_``."""
        k = check_query_size(k, len(outputs))
        embeddings, mask = _labelled_and_pool(outputs, self.normalize)
        delta = self.delta
        if delta is None:
            clusters = min(self.num_classes, embeddings.shape[0])
            weights = torch.ones(embeddings.shape[0], dtype=torch.float64)
            _, assignment = weighted_kmeans(embeddings, weights, clusters, generator=generator)
            delta = purity_delta(embeddings, assignment, alpha=self.purity)
            if not math.isfinite(delta):  # a single sample: one cluster, every radius is pure
                delta = 0.0
        self.delta_ = delta
        picks = probcover_greedy(embeddings, mask, k, delta, generator=generator)
        return Selection(ids=outputs.ids[picks.cpu() - int(mask.sum())])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, delta={self.delta}, purity={self.purity}, "
            f"normalize={self.normalize})"
        )


class _PartsEstimator(Estimator):
    """Runs each part's estimator for the outputs asked under its prefix (``"low/embeddings"``, ...)."""

    def __init__(self, parts: dict[str, Estimator]) -> None:
        self.parts = parts
        self.provides = frozenset(f"{prefix}/{name}" for prefix, est in parts.items() for name in est.provides)
        self.needs_ids = any(est.needs_ids for est in parts.values())

    def callbacks(self) -> list[pl.Callback]:
        return [cb for est in self.parts.values() for cb in est.callbacks()]

    def fit(self, model: pl.LightningModule, train: TrainFn) -> None:
        for est in self.parts.values():
            est.fit(model, train)

    def modules(self) -> list[nn.Module]:
        modules = [m for est in self.parts.values() for m in est.modules()]
        return list({id(m): m for m in modules}.values())

    def predict(
        self, model: nn.Module, inputs: Any, needs: frozenset[str], ids: Tensor | None = None
    ) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for prefix, est in self.parts.items():
            own = frozenset(name.split("/", 1)[1] for name in needs if name.startswith(f"{prefix}/"))
            if not own:
                continue
            values = est.predict(model, inputs, own, ids=ids) if est.needs_ids else est.predict(model, inputs, own)
            out.update({f"{prefix}/{name}": values[name] for name in own})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {prefix: est.state_dict() for prefix, est in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for prefix, est in self.parts.items():
            est.load_state_dict(state[prefix])


def _part_outputs(outputs: PoolOutputs | None, prefix: str) -> PoolOutputs | None:
    if outputs is None:
        return None
    values = {name.split("/", 1)[1]: v for name, v in outputs.values.items() if name.startswith(f"{prefix}/")}
    return PoolOutputs(ids=outputs.ids, values=values, labelled=_part_outputs(outputs.labelled, prefix))


class BudgetAware(Strategy):
    r"""``low`` while fewer than ``switch_at`` samples are labelled, ``high`` from then on.

    **Switch rule.** ``switch_at = ceil(labels_per_class * num_classes)``: the query of a round
    whose labelled set (before the query) holds ``n`` samples comes from ``low`` if
    ``n < switch_at`` and from ``high`` otherwise. Hacohen et al. 2022 ("Active Learning on a Budget:
    Opposite Strategies Suit High and Low Budgets", ICML) show, in theory and on CIFAR/ImageNet
    subsets, that typicality-based selection (TypiClust) beats random and uncertainty/diversity
    selection while the budget is a few labels per class, and that the order reverses as the
    budget grows; the crossover scales with the number of classes, which is why the rule is
    counted in labels per class. The point of the crossover depends on the data and on the
    quality of the embedding; 5 labels per class is a starting point, not a constant of nature.

    Each part keeps its own estimator (e.g. TypiClust on a frozen encoder, BADGE on the task
    model's features): this strategy's estimator computes both parts' outputs under the prefixes
    ``"low/"`` and ``"high/"``, every round, and hands each part only its own. The labelled count
    comes from ``outputs.labelled`` (so at least one labelled output is always required).

    With no arguments it is ``BudgetAware(TypiClust(), BADGE())`` on the task model's features, with
    ``num_classes`` read from the width of the model's probabilities; for a real cold start give
    it embeddings that exist before any label: ``features=FrozenEncoder(encoder)`` (a pretrained encoder,
    or one pre-trained on the pool with `lightning_al.self_supervised.pretrain_simclr`) makes the default
    ``low`` part ``TypiClust(estimator=features)``, so rounds before ``switch_at`` select on them.

    Args:
        low: strategy for small labelled sets (default `TypiClust`; or `ProbCover`).
        high: strategy from ``switch_at`` labels on (default ``BADGE()``; or e.g. ``Entropy()``).
        num_classes: number of classes; None reads it from the probabilities ``high`` is scored with.
        labels_per_class: labels per class at which ``high`` takes over (``> 0``).
        features: the embeddings of the default ``low`` part (e.g. a `lightning_al.estimators.FrozenEncoder`);
            not together with ``low``.
    """

    def __init__(
        self,
        low: Strategy | None = None,
        high: Strategy | None = None,
        num_classes: int | None = None,
        labels_per_class: float = 5.0,
        features: Estimator | None = None,
    ) -> None:
        from lightning_al.strategies.diversity import BADGE

        if features is not None and not isinstance(features, Estimator):
            raise TypeError(f"Expected `features` to be a lightning_al Estimator, but got {type(features).__name__}.")
        if features is not None and low is not None:
            raise ValueError(f"Expected either `low` ({low!r}) or `features` ({features!r}), but got both.")
        low = TypiClust(estimator=features) if low is None else low
        high = BADGE() if high is None else high
        for name, part in (("low", low), ("high", high)):
            if not isinstance(part, Strategy):
                raise TypeError(f"Expected `{name}` to be a lightning_al Strategy, but got {type(part).__name__}.")
        check_int("num_classes", num_classes, 1, optional=True)
        if (
            isinstance(labels_per_class, bool)
            or not isinstance(labels_per_class, (int, float))
            or not (math.isfinite(labels_per_class) and labels_per_class > 0)
        ):
            raise ValueError(f"Expected `labels_per_class` to be a finite number > 0, but got {labels_per_class!r}.")
        self.low, self.high = low, high
        self.num_classes, self.labels_per_class = num_classes, labels_per_class
        self.estimator = _PartsEstimator({"low": low.estimator or Softmax(), "high": high.estimator or Softmax()})
        self.requires = frozenset(f"low/{n}" for n in low.requires) | frozenset(f"high/{n}" for n in high.requires)
        if num_classes is None:  # read from the width of the probabilities
            if PROBS not in self.estimator.parts["high"].provides:
                raise ValueError(
                    "Expected `num_classes`, or a `high` strategy whose estimator provides probabilities to read "
                    f"it from, but got num_classes=None and {high!r}."
                )
            self.requires = self.requires | {f"high/{PROBS}"}
        labelled = frozenset(f"low/{n}" for n in low.requires_labelled) | frozenset(
            f"high/{n}" for n in high.requires_labelled
        )
        if not labelled:  # something must be computed for the labelled samples to count them
            low_provides = self.estimator.parts["low"].provides
            labelled = frozenset({f"low/{PROBS if PROBS in low_provides else min(low_provides)}"})
        self.requires_labelled = labelled

    @property
    def switch_at(self) -> int | None:
        """``ceil(labels_per_class * num_classes)``; None while ``num_classes`` is still to be read."""
        return None if self.num_classes is None else math.ceil(self.labels_per_class * self.num_classes)

    def active(self, num_labelled: int) -> Strategy:
        """The part that queries when ``num_labelled`` samples are labelled."""
        if self.switch_at is None:
            raise RuntimeError("Expected `num_classes` to be known; it is read at the first `select`.")
        return self.low if num_labelled < self.switch_at else self.high

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """The query of the `active` part, given only its own (unprefixed) outputs."""
        if self.num_classes is None:
            self.num_classes = int(outputs[f"high/{PROBS}"].shape[1])
        num_labelled = len(outputs.labelled) if outputs.labelled is not None else 0
        part = self.active(num_labelled)
        prefix = "low" if part is self.low else "high"
        return part.select(_part_outputs(outputs, prefix), k, generator=generator)

    def callbacks(self) -> list[pl.Callback]:
        """The callbacks of both parts."""
        return [*self.low.callbacks(), *self.high.callbacks()]

    def state_dict(self) -> dict[str, Any]:
        """The states of both parts, under ``"low"`` and ``"high"``."""
        return {"low": self.low.state_dict(), "high": self.high.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore both parts' states from `state_dict`."""
        self.low.load_state_dict(state["low"])
        self.high.load_state_dict(state["high"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(low={self.low!r}, high={self.high!r}, num_classes={self.num_classes}, "
            f"labels_per_class={self.labels_per_class})"
        )
