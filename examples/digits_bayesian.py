"""Bayesian and committee strategies on scikit-learn's digits, against Random.

Same protocol as ``examples/digits.py`` (20 initial labels, queries of 10, 25 rounds,
3 seeds, an MLP with dropout). Contenders: BALD, BatchBALD, variation ratios and mean
STD on 20 MC-dropout passes (Gal et al. 2017; Kirsch et al. 2019), query by committee
with a 3-member deep ensemble (KL to the consensus; Beluch et al. 2018), and BALD on a
Bayes-by-backprop version of the same MLP (Blundell et al. 2015).

    python examples/digits_bayesian.py
    python examples/digits_bayesian.py --strategies Random BALD BatchBALD --seeds 1
"""

from __future__ import annotations

import functools

import pytorch_lightning as pl
from digits import ARMS, Arm, DigitsMLP, main

import lightning_al as al
from lightning_al.strategies import BatchBALD

MC_SAMPLES = 20
# The KL term is tempered (a "cold posterior"): with 20-270 labels and ~26k weights, the
# untempered KL / N outweighs the likelihood and the posterior collapses onto the prior
# (test accuracy at chance level in our runs); 1e-3 keeps it a regulariser.
KL_SCALE = 1e-3
PRIOR_SIGMA = 0.1
# Joint-entropy samples once the exact table outgrows them (Kirsch et al. use 10,000; 1,000 keeps
# a CPU round to a few seconds).
BATCHBALD_SAMPLES = 1_000


def bayes_by_backprop_mlp() -> pl.LightningModule:
    """The digits MLP with every Linear layer made Bayesian; tested on the posterior mean weights."""
    model = al.bayes.convert_to_bayesian(DigitsMLP(dropout=0.0), prior_sigma=PRIOR_SIGMA)
    al.bayes.set_sampling(model, False)  # the estimator switches sampling on while it scores the pool
    return model


def kl_callback() -> list[pl.Callback]:
    return [al.bayes.BayesKLCallback(kl_scale=KL_SCALE)]


BAYESIAN_ARMS = {
    "Random": ARMS["Random"],
    "BALD": Arm(functools.partial(al.strategies.BALD, mc_samples=MC_SAMPLES)),
    "BatchBALD": Arm(functools.partial(BatchBALD, mc_samples=MC_SAMPLES, num_samples=BATCHBALD_SAMPLES)),
    "VariationRatios": Arm(functools.partial(al.strategies.VariationRatios, mc_samples=MC_SAMPLES)),
    "MeanSTD": Arm(functools.partial(al.strategies.MeanSTD, mc_samples=MC_SAMPLES)),
    "QBC-ensemble": Arm(functools.partial(al.strategies.QBC, disagreement="kl", estimator=al.DeepEnsemble(members=3))),
    "BALD-BayesByBackprop": Arm(
        functools.partial(al.strategies.BALD, estimator=al.BayesByBackprop(mc_samples=MC_SAMPLES)),
        model=bayes_by_backprop_mlp,
        callbacks=kl_callback,
    ),
}


if __name__ == "__main__":
    main(BAYESIAN_ARMS, __doc__, default_output="examples/results/digits_bayesian")
