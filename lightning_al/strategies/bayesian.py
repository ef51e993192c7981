"""Strategies over ``T`` stochastic passes or committee members: BALD, variation ratios, mean STD,
max entropy and query by committee (thin classes over `lightning_al.functional.bayesian`).

Each reads the pool output ``"mc_probs"`` of shape ``(N, T, C)``. By default it comes from
MC dropout (Gal & Ghahramani 2016) with ``mc_samples`` passes; any estimator that provides
``"mc_probs"`` (a deep ensemble, Bayes-by-backprop samples, a committee) can be given instead.
"""

from __future__ import annotations

from torch import Tensor

from lightning_al._validation import check_int
from lightning_al.estimators.base import Estimator
from lightning_al.estimators.mc_dropout import MCDropout
from lightning_al.functional.bayesian import (
    bald,
    kl_to_consensus,
    mean_std,
    predictive_entropy,
    variation_ratio,
    vote_entropy,
)
from lightning_al.outputs import MC_PROBS, PoolOutputs
from lightning_al.strategies.base import ScoreStrategy
from lightning_al.tasks import ALL_TASKS


def mc_probs_estimator(mc_samples: int, estimator: Estimator | None) -> Estimator:
    """``estimator`` after checking it provides ``mc_probs``, or the default MC dropout when None.

    The default is ``MCDropout(mc_samples, consistent_masks=True)``: consistent MC dropout (Kirsch
    et al. 2019), the same ``T`` dropout masks for every pool sample, so pass ``t`` is one sampled
    model for the whole pool. BatchBALD's joint ``p(y_1..y_n) = mean_t prod_i p_t(y_i)`` needs it
    (pass ``t`` must be the same model for every point of the batch); for one-sample scores it
    changes no sample's distribution of ``T`` independent masks, compares samples under common
    masks, and lets a dropout layer followed by a linear one be computed as one product.
    """
    check_int("mc_samples", mc_samples, 1)
    if estimator is None:
        return MCDropout(mc_samples, consistent_masks=True)
    if not isinstance(estimator, Estimator):
        raise TypeError(
            f"Expected `estimator` to be a lightning_al Estimator or None, but got {type(estimator).__name__}."
        )
    if MC_PROBS not in estimator.provides:
        raise ValueError(
            f"Expected `estimator` to provide {MC_PROBS!r} (T stochastic passes or committee members), "
            f"but {type(estimator).__name__} provides only {sorted(estimator.provides)}."
        )
    return estimator


class _MCProbsStrategy(ScoreStrategy):
    """Scores ``mc_probs`` with one kernel; the estimator defaults to consistent MC dropout (see
    `mc_probs_estimator`).

    Args:
        mc_samples: stochastic passes ``T`` of the default MC-dropout estimator; unused when
            ``estimator`` is given.
        estimator: any estimator whose ``provides`` includes ``"mc_probs"``.
    """

    requires = frozenset({MC_PROBS})
    tasks = ALL_TASKS

    def __init__(self, mc_samples: int = 20, estimator: Estimator | None = None) -> None:
        self.mc_samples = mc_samples
        self.estimator = mc_probs_estimator(mc_samples, estimator)

    def __repr__(self) -> str:
        if isinstance(self.estimator, MCDropout):
            return f"{type(self).__name__}(mc_samples={self.estimator.mc_samples})"
        return f"{type(self).__name__}(estimator={type(self.estimator).__name__})"


class BALD(_MCProbsStrategy):
    """Query the largest mutual information between label and model, ``H[mean_t p_t] - mean_t H[p_t]``.

    Prefers samples on which the members are each confident but disagree. Multi-label: the Bernoulli
    mutual information of each label, summed; segmentation: per pixel, reduced per image. Houlsby et al.
    2011, "Bayesian Active Learning for Classification and Preference Learning"; Gal, Islam
    & Ghahramani 2017, "Deep Bayesian Active Learning with Image Data".

    Args:
        mc_samples: stochastic passes ``T`` of the default MC-dropout estimator; unused when
            ``estimator`` is given.
        estimator: any estimator whose ``provides`` includes ``"mc_probs"`` ``(N, T, C)``.
    """

    def score(self, outputs: PoolOutputs) -> Tensor:
        return outputs.mc_score(bald)


class VariationRatios(_MCProbsStrategy):
    """Query the least unanimous votes: ``1 - (votes for the modal argmax class) / T``.

    Freeman 1965, "Elementary Applied Statistics"; Gal et al. 2017, "Deep Bayesian Active
    Learning with Image Data".

    Args:
        mc_samples: stochastic passes ``T`` of the default MC-dropout estimator; unused when
            ``estimator`` is given.
        estimator: any estimator whose ``provides`` includes ``"mc_probs"`` ``(N, T, C)``.
    """

    def score(self, outputs: PoolOutputs) -> Tensor:
        return outputs.mc_score(variation_ratio)


class MeanSTD(_MCProbsStrategy):
    """Query the largest spread across members, ``mean_c sqrt(E_t[p_c^2] - (E_t p_c)^2)``.

    Kampffmeyer, Salberg & Jenssen 2016, "Semantic Segmentation of Small Objects and
    Modeling of Uncertainty in Urban Remote Sensing Images Using Deep Convolutional Neural
    Networks".

    Args:
        mc_samples: stochastic passes ``T`` of the default MC-dropout estimator; unused when
            ``estimator`` is given.
        estimator: any estimator whose ``provides`` includes ``"mc_probs"`` ``(N, T, C)``.
    """

    def score(self, outputs: PoolOutputs) -> Tensor:
        return outputs.mc_score(mean_std)


class MaxEntropy(_MCProbsStrategy):
    """Query the highest entropy of the averaged prediction, ``H[mean_t p_t]``.

    Shannon 1948, "A Mathematical Theory of Communication"; the "Max Entropy" acquisition of Gal et al.
    2017, "Deep Bayesian Active Learning with Image Data".

    Args:
        mc_samples: stochastic passes ``T`` of the default MC-dropout estimator; unused when
            ``estimator`` is given.
        estimator: any estimator whose ``provides`` includes ``"mc_probs"`` ``(N, T, C)``.
    """

    def score(self, outputs: PoolOutputs) -> Tensor:
        return outputs.mc_score(predictive_entropy)


_DISAGREEMENTS = {"vote_entropy": vote_entropy, "kl": kl_to_consensus}


class QBC(_MCProbsStrategy):
    """Query by committee: query where the ``T`` members disagree most.

    Seung, Opper & Sompolinsky 1992, "Query by Committee". The disagreement is the vote
    entropy (Dagan & Engelson 1995, "Committee-Based Sampling for Training Probabilistic
    Classifiers") or the mean KL divergence of each member from the consensus (McCallum &
    Nigam 1998, "Employing EM and Pool-Based Active Learning for Text Classification"). The
    committee is the estimator's members: MC-dropout passes by default, or e.g. a deep
    ensemble (Beluch et al. 2018, "The Power of Ensembles for Active Learning in Image
    Classification").

    Args:
        disagreement: ``"vote_entropy"`` or ``"kl"``.
        mc_samples: stochastic passes ``T`` of the default MC-dropout estimator; unused when
            ``estimator`` is given.
        estimator: any estimator whose ``provides`` includes ``"mc_probs"``.
    """

    def __init__(
        self, disagreement: str = "vote_entropy", mc_samples: int = 20, estimator: Estimator | None = None
    ) -> None:
        if not isinstance(disagreement, str) or disagreement not in _DISAGREEMENTS:
            allowed = " or ".join(repr(name) for name in _DISAGREEMENTS)
            raise ValueError(f"Expected `disagreement` to be {allowed}, but got {disagreement!r}.")
        super().__init__(mc_samples=mc_samples, estimator=estimator)
        self.disagreement = disagreement

    def score(self, outputs: PoolOutputs) -> Tensor:
        return outputs.mc_score(_DISAGREEMENTS[self.disagreement])

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", disagreement={self.disagreement!r})"
