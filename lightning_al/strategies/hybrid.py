"""Hybrid strategies: two-stage selection, score mixing, suggestive annotation, selection via proxy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lightning_al._validation import check_int
from lightning_al.estimators.base import Estimator, Softmax
from lightning_al.estimators.ensembles import DeepEnsemble
from lightning_al.estimators.proxy import ProxyEstimator
from lightning_al.functional.hybrid import max_cover_greedy
from lightning_al.functional.selection import topk_select
from lightning_al.outputs import EMBEDDINGS, MC_PROBS, PoolOutputs
from lightning_al.strategies.base import ScoreStrategy, Selection, Strategy, check_query_size
from lightning_al.tasks import ALL_TASKS

if TYPE_CHECKING:
    import pytorch_lightning as pl


def _shared_estimator(strategies: Sequence[Strategy], estimator: Estimator | None) -> Estimator:
    """``estimator``, else the first of the strategies' estimators that provides all they require."""
    required = frozenset().union(*(s.requires | s.requires_labelled for s in strategies))
    candidates = [estimator] if estimator is not None else [s.estimator or Softmax() for s in strategies]
    for candidate in candidates:
        if required <= candidate.provides:
            return candidate
    names = [type(c).__name__ for c in candidates]
    raise ValueError(
        f"Expected an estimator providing {sorted(required)} for {list(strategies)}, but {names} do not; "
        "pass `estimator`."
    )


class TwoStage(Strategy):
    """Keep the ``factor · k`` top samples of ``prefilter``, then let ``diversify`` choose ``k`` among them.

    The common "uncertain, then diverse" recipe (e.g. Zhdanov 2019; Yang et al. 2017).

    Args:
        prefilter: a score strategy (e.g. ``Margin()``).
        diversify: any strategy (e.g. ``CoreSet()``), run on the prefiltered candidates.
        factor: candidates kept per query slot.
        estimator: computes what both need; by default the first of their estimators that can.
    """

    def __init__(
        self, prefilter: ScoreStrategy, diversify: Strategy, factor: int = 10, estimator: Estimator | None = None
    ) -> None:
        if not isinstance(prefilter, ScoreStrategy):
            raise TypeError(f"Expected `prefilter` to be a ScoreStrategy, but got {type(prefilter).__name__}.")
        check_int("factor", factor, 1)
        self.prefilter, self.diversify, self.factor = prefilter, diversify, factor
        self.requires = prefilter.requires | diversify.requires
        self.requires_labelled = prefilter.requires_labelled | diversify.requires_labelled
        self.estimator = _shared_estimator([prefilter, diversify], estimator)

    def callbacks(self) -> list[pl.Callback]:
        """The callbacks of ``prefilter`` and ``diversify``."""
        return [*self.prefilter.callbacks(), *self.diversify.callbacks()]

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """``diversify``'s query of ``k`` among the ``factor · k`` top-scored samples of ``prefilter``."""
        k = check_query_size(k, len(outputs))
        keep = topk_select(self.prefilter.score(outputs), min(len(outputs), self.factor * k))
        return self.diversify.select(outputs.subset(keep), k, generator=generator)

    def __repr__(self) -> str:
        return f"TwoStage({self.prefilter!r}, {self.diversify!r}, factor={self.factor})"


def rank_normalise(scores_N: Tensor) -> Tensor:
    """Scores mapped to their rank in ``[0, 1]``: comparable across strategies.

    Args:
        scores_N: ``(N,)`` scores.

    Returns:
        ``(N,)`` float64 ranks divided by ``N - 1``; ties are ranked in order of position (stable sort).
    """
    order = torch.sort(scores_N, stable=True).indices
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(scores_N.numel(), dtype=torch.float64)
    return ranks / max(1, scores_N.numel() - 1)


class WeightedMix(ScoreStrategy):
    """Weighted sum of several strategies' rank-normalised scores: ``sum_i w_i rank_i(x)``.

    Ranks make scores of different units (nats, distances, probabilities) comparable.

    Args:
        strategies: score strategies to mix.
        weights: one non-negative weight per strategy (default: equal).
        estimator: computes what all need; by default the first of their estimators that can.
    """

    per_sample = False  # ranks are taken over the whole pool, so the pool is scored at once

    def __init__(
        self,
        strategies: Sequence[ScoreStrategy],
        weights: Sequence[float] | None = None,
        estimator: Estimator | None = None,
    ) -> None:
        strategies = list(strategies)
        if not strategies or not all(isinstance(s, ScoreStrategy) for s in strategies):
            raise TypeError(f"Expected `strategies` to be a non-empty list of ScoreStrategy, but got {strategies!r}.")
        weights = [1.0] * len(strategies) if weights is None else [float(w) for w in weights]
        if len(weights) != len(strategies) or any(w < 0 for w in weights) or sum(weights) == 0:
            raise ValueError(
                f"Expected `weights` to be {len(strategies)} non-negative numbers, not all 0, but got {weights}."
            )
        self.strategies, self.weights = strategies, weights
        self.requires = frozenset().union(*(s.requires for s in strategies))
        self.requires_labelled = frozenset().union(*(s.requires_labelled for s in strategies))
        self.estimator = _shared_estimator(strategies, estimator)

    def callbacks(self) -> list[pl.Callback]:
        """The callbacks of all mixed strategies."""
        return [cb for s in self.strategies for cb in s.callbacks()]

    def score(self, outputs: PoolOutputs) -> Tensor:
        """``(N,)`` weighted mean of the strategies' rank-normalised scores, in ``[0, 1]``."""
        total = sum(w * rank_normalise(s.score(outputs)) for s, w in zip(self.strategies, self.weights, strict=True))
        return total / sum(self.weights)

    def __repr__(self) -> str:
        return f"WeightedMix({self.strategies!r}, weights={self.weights})"


def _member_variance(probs_M_T_K: Tensor) -> Tensor:
    """``(M,)``: the variance over the ``T`` members of each outcome's probability, averaged over the ``K`` outcomes."""
    return probs_M_T_K.double().var(dim=1, unbiased=False).mean(dim=-1)


class SuggestiveAnnotation(Strategy):
    """Uncertain by a bootstrap committee's disagreement, then representative by greedy max-cover.

    Takes the ``factor · k`` samples whose committee members disagree most (variance of the
    class probabilities across members, averaged over classes; for segmentation also averaged
    over the valid pixels, as the paper, and for multi-label over the labels, by the task's
    reduction), then greedily picks the
    ``k`` of them that maximise ``sum_{x in pool} max_{s in S} cos(f(x), f(s))`` on the
    embeddings (Yang et al. 2017, "Suggestive Annotation: A Deep Active Learning Framework
    for Biomedical Image Segmentation").

    The default committee is the paper's: ``members = 4`` networks, each trained on its own
    bootstrap sample of the labelled set, the loop's model not among them
    (``DeepEnsemble(4, bootstrap=True, include_model=False)``: four extra fits a round); the
    embeddings ``f`` are those of the first of them. ``include_model=True`` puts the loop's model,
    trained on the full labelled set, in the committee as member 0 (and takes its embeddings),
    one extra fit fewer. On the digits benchmark (3 seeds, AULC ÷ Random) the paper's committee
    scored 0.978 ± 0.022, 3 members with the model included 0.971 ± 0.012: below Random either way
    in that setting (20 to 200 labels, a small MLP).

    Args:
        factor: uncertain candidates kept per query slot (the paper keeps 16 for 8 queries: 2×).
        members: committee size of the default estimator (the paper: 4).
        include_model: the default committee's member 0 is the loop's model (``False`` in the paper).
        estimator: provides ``mc_probs`` and ``embeddings``; defaults to
            ``DeepEnsemble(members, bootstrap=True, include_model=include_model)``.
    """

    requires = frozenset({MC_PROBS, EMBEDDINGS})
    tasks = ALL_TASKS

    def __init__(
        self, factor: int = 2, members: int = 4, include_model: bool = False, estimator: Estimator | None = None
    ) -> None:
        check_int("factor", factor, 1)
        self.factor, self.members, self.include_model = factor, members, include_model
        if estimator is None:
            estimator = DeepEnsemble(members=members, bootstrap=True, include_model=include_model)
        self.estimator = _shared_estimator([self], estimator)

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """``k`` ids by greedy max-cover among the most disputed candidates, with their disagreement as scores."""
        k = check_query_size(k, len(outputs))
        disagreement = outputs.mc_score(_member_variance)
        candidates = topk_select(disagreement, min(len(outputs), self.factor * k))
        picks = max_cover_greedy(outputs[EMBEDDINGS], candidates, k)
        return Selection(ids=outputs.ids[picks], scores=disagreement[picks])

    def __repr__(self) -> str:
        return f"SuggestiveAnnotation(factor={self.factor}, members={self.members}, include_model={self.include_model})"


class SelectionViaProxy(Strategy):
    """Let ``strategy`` select with the outputs of a smaller or shorter-trained ``proxy`` model.

    The proxy is re-fitted every round from scratch on the labelled set (with ``proxy_max_epochs``
    if given) and ``strategy``'s estimator runs on it (Coleman et al. 2020, "Selection via Proxy:
    Efficient Data Selection for Deep Learning"). As in the authors' code the proxy starts each round
    from new random weights (``fresh_init=True``, seeded from the run's seed and the round);
    ``fresh_init=False`` resets it to the weights it was given instead. The loop's model
    is still trained every round and is the one tested. The authors' code scores with least
    confidence by default (``strategy=LeastConfidence()``) and, for active learning, takes a
    shallower network of the same family as the proxy (ResNet-20 for a ResNet-164 target, about
    a sixth of the weights) trained on the target's schedule unless told otherwise. How small a
    proxy can be depends on the task: on the digits benchmark (3 seeds, AULC ÷ Random, least
    confidence, an MLP of width 128 as target) proxies of width 32 (an eighth of the weights, the
    authors' ratio), 64 and 128 scored 0.993, 1.043 and 1.054 with the proxy reset to the same weights
    each round; the benchmark uses 64 (with a new proxy each round: 1.035 ± 0.025).

    Args:
        strategy: the inner strategy (any; the authors' default: ``LeastConfidence()``).
        proxy: the proxy LightningModule.
        proxy_max_epochs: epochs of the proxy's fits (default: the loop's).
        fresh_init: new random proxy weights every round (the authors') or the given ones every round.
    """

    def __init__(
        self, strategy: Strategy, proxy: nn.Module, proxy_max_epochs: int | None = None, fresh_init: bool = True
    ) -> None:
        check_int("proxy_max_epochs", proxy_max_epochs, 1, optional=True)
        overrides = {} if proxy_max_epochs is None else {"max_epochs": proxy_max_epochs}
        self.strategy = strategy
        self.requires, self.requires_labelled = strategy.requires, strategy.requires_labelled
        self.estimator = ProxyEstimator(proxy, strategy.estimator or Softmax(), fresh_init=fresh_init, **overrides)

    def callbacks(self) -> list[pl.Callback]:
        """The inner strategy's callbacks."""
        return self.strategy.callbacks()

    def select(self, outputs: PoolOutputs, k: int, generator: torch.Generator | None = None) -> Selection:
        """The inner strategy's query, on the proxy's outputs."""
        return self.strategy.select(outputs, k, generator=generator)

    def __repr__(self) -> str:
        return f"SelectionViaProxy({self.strategy!r})"
