"""Bayes-by-backprop (Blundell et al. 2015): Bayesian layers, model conversion and the KL callback."""

from lightning_al.bayes.convert import bayesian_layers, convert_to_bayesian, set_sampling
from lightning_al.bayes.kl import BayesKLCallback, kl_minibatch_weights, total_kl_divergence
from lightning_al.bayes.layers import BayesConv2d, BayesLinear, gaussian_kl, scale_mixture_log_prob

__all__ = [
    "BayesConv2d",
    "BayesKLCallback",
    "BayesLinear",
    "bayesian_layers",
    "convert_to_bayesian",
    "gaussian_kl",
    "kl_minibatch_weights",
    "scale_mixture_log_prob",
    "set_sampling",
    "total_kl_divergence",
]
