"""Turning an existing network into a Bayes-by-backprop one, layer by layer."""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_al.bayes.layers import BayesConv2d, BayesLinear, _BayesLayer

_CONVERTIBLE = (nn.Linear, nn.Conv2d)


def bayesian_layers(model: nn.Module) -> list[_BayesLayer]:
    """The `BayesLinear` / `BayesConv2d` modules of ``model`` (each once, in ``modules()`` order)."""
    return [m for m in model.modules() if isinstance(m, _BayesLayer)]


def set_sampling(model: nn.Module, sample: bool) -> nn.Module:
    """Switch every Bayes layer of ``model`` to fresh weight draws (``sample=True``) or to the posterior means (False).

    Returns ``model``.
    """
    if not isinstance(sample, bool):
        raise TypeError(f"Expected `sample` to be a bool, but got {type(sample).__name__}.")
    for layer in bayesian_layers(model):
        layer.sample = sample
    return model


def _convert_layer(layer: nn.Module, name: str, kwargs: dict) -> _BayesLayer:
    if isinstance(layer.weight, nn.parameter.UninitializedParameter):
        raise ValueError(
            f"Expected the layer `{name}` to have materialised weights, but it is a lazy module; "
            "run one forward pass before converting."
        )
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        new: _BayesLayer = BayesLinear(layer.in_features, layer.out_features, bias=has_bias, **kwargs, **factory)
    else:
        new = BayesConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=has_bias,
            padding_mode=layer.padding_mode,
            **kwargs,
            **factory,
        )
    with torch.no_grad():
        new.weight_mu.copy_(layer.weight)
        if has_bias and new.bias_mu is not None:
            new.bias_mu.copy_(layer.bias)
    new.weight_mu.requires_grad_(layer.weight.requires_grad)
    new.weight_rho.requires_grad_(layer.weight.requires_grad)
    if has_bias and new.bias_mu is not None and new.bias_rho is not None:
        new.bias_mu.requires_grad_(layer.bias.requires_grad)
        new.bias_rho.requires_grad_(layer.bias.requires_grad)
    new.train(layer.training)
    return new


def convert_to_bayesian(
    model: nn.Module,
    prior_sigma: float = 1.0,
    prior: str = "gaussian",
    prior_pi: float = 0.5,
    prior_sigma2: float = math.exp(-6),
    rho_init: float = -5.0,
    sample: bool = True,
) -> nn.Module:
    """Replace every ``nn.Linear`` and ``nn.Conv2d`` of ``model``, recursively and in place, by a Bayes layer.

    Each new layer's posterior mean ``mu`` is the old layer's weight (and bias), its ``rho`` is
    ``rho_init``; device, dtype, ``requires_grad`` and train/eval mode are kept, other modules are
    untouched. Only these exact classes are converted: subclasses (e.g. the output projection of
    ``nn.MultiheadAttention``, which reads ``.weight`` directly) are left as they are. A layer
    shared by several parents becomes one shared Bayes layer. Build the optimiser *after*
    converting: the parameters are new objects.

    Args:
        model: the network; if it is itself a bare ``nn.Linear``/``nn.Conv2d``, the new layer is returned.
        prior_sigma: standard deviation of the Gaussian prior, or of the mixture's wide component.
        prior: ``"gaussian"`` or ``"mixture"`` (see `BayesLinear`).
        prior_pi: weight of the wide component in the mixture.
        prior_sigma2: standard deviation of the mixture's narrow component.
        rho_init: initial ``rho`` of every new layer.
        sample: whether the new layers draw weights on each forward (False uses ``mu``).

    Returns:
        ``model`` (converted in place).

    Reference: Blundell et al. 2015, "Weight Uncertainty in Neural Networks".
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}.")
    kwargs = dict(
        prior_sigma=prior_sigma,
        prior=prior,
        prior_pi=prior_pi,
        prior_sigma2=prior_sigma2,
        rho_init=rho_init,
        sample=sample,
    )
    if type(model) in _CONVERTIBLE:
        return _convert_layer(model, type(model).__name__, kwargs)
    converted: dict[int, _BayesLayer] = {}
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):  # every slot, shared children included
            if type(child) not in _CONVERTIBLE:
                continue
            if id(child) not in converted:
                full_name = f"{parent_name}.{child_name}" if parent_name else child_name
                converted[id(child)] = _convert_layer(child, full_name, kwargs)
            setattr(parent, child_name, converted[id(child)])
    if not converted:
        already = len(bayesian_layers(model))
        note = f" (it already holds {already} Bayes layers)" if already else ""
        raise ValueError(
            f"Expected `model` to contain an nn.Linear or nn.Conv2d to convert, but {type(model).__name__} "
            f"has none{note}."
        )
    return model
