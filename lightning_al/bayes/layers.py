"""Bayes-by-backprop layers: a diagonal Gaussian posterior over every weight and bias.

Each weight has a variational posterior ``q(w) = N(mu, sigma^2)`` with ``sigma = softplus(rho)``.
A forward pass draws ``w = mu + sigma * eps`` with fresh ``eps ~ N(0, 1)`` (the reparameterisation
trick), so gradients of the loss reach ``mu`` and ``rho``. The prior is either

- ``"gaussian"``: ``p(w) = N(0, prior_sigma^2)``; the KL term is exact (closed form), or
- ``"mixture"``: the scale mixture ``pi N(0, prior_sigma^2) + (1 - pi) N(0, prior_sigma2^2)`` of the
  paper, which has no closed-form KL; it is estimated by one Monte Carlo sample,
  ``log q(w) - log p(w)`` at the weights drawn in the last forward pass.

Reference: Blundell, Cornebise, Kavukcuoglu & Wierstra 2015, "Weight Uncertainty in Neural Networks".
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair, _reverse_repeat_tuple

from lightning_al._validation import check_int

PRIORS = ("gaussian", "mixture")
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# ----- kernels -----------------------------------------------------------------------------
def gaussian_log_prob(w: Tensor, mu: Tensor | float, sigma: Tensor | float) -> Tensor:
    """Elementwise ``log N(w; mu, sigma^2) = -log sigma - log(2 pi) / 2 - (w - mu)^2 / (2 sigma^2)``."""
    sigma = torch.as_tensor(sigma, dtype=w.dtype, device=w.device)
    return -torch.log(sigma) - _HALF_LOG_2PI - (w - mu) ** 2 / (2 * sigma**2)


def scale_mixture_log_prob(w: Tensor, pi: float, sigma1: float, sigma2: float) -> Tensor:
    """Elementwise ``log(pi N(w; 0, sigma1^2) + (1 - pi) N(w; 0, sigma2^2))``, computed with logsumexp."""
    both = torch.stack(
        [math.log(pi) + gaussian_log_prob(w, 0.0, sigma1), math.log1p(-pi) + gaussian_log_prob(w, 0.0, sigma2)]
    )
    return torch.logsumexp(both, dim=0)


def gaussian_kl(mu: Tensor, sigma: Tensor, prior_sigma: float) -> Tensor:
    """``sum KL(N(mu, sigma^2) || N(0, prior_sigma^2))`` over all elements, a scalar.

    Per element: ``log(prior_sigma / sigma) + (sigma^2 + mu^2) / (2 prior_sigma^2) - 1/2``.
    Elementwise terms in at least float32, summed in float64, returned in at least float32.
    """
    dtype = torch.promote_types(mu.dtype, torch.float32)
    mu, sigma = mu.to(dtype), sigma.to(dtype)
    per_weight = math.log(prior_sigma) - torch.log(sigma) + (sigma**2 + mu**2) / (2 * prior_sigma**2) - 0.5
    return per_weight.sum(dtype=torch.float64).to(dtype)


def _check_positive_float(name: str, value: Any, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Expected `{name}` to be a positive finite float, but got {value!r}.")
    if upper is not None and value >= upper:
        raise ValueError(f"Expected `{name}` to be in (0, {upper}), but got {value!r}.")
    return float(value)


# ----- layers ------------------------------------------------------------------------------
class _BayesLayer(nn.Module):
    """Posterior parameters ``{weight,bias}_{mu,rho}``, weight sampling, prior and KL shared by the layers.

    Attributes:
        sample: if True (default, in train *and* eval mode) every forward draws fresh weights;
            if False the forward uses the posterior means ``mu`` (deterministic).
        generator: optional ``torch.Generator`` (on the parameters' device) for the noise ``eps``;
            None uses the global RNG, which ``pl.seed_everything`` seeds.
    """

    weight_mu: nn.Parameter
    weight_rho: nn.Parameter
    bias_mu: nn.Parameter | None
    bias_rho: nn.Parameter | None

    def _init_posterior(
        self,
        weight_shape: tuple[int, ...],
        bias: bool,
        prior: str,
        prior_sigma: float,
        prior_pi: float,
        prior_sigma2: float,
        rho_init: float,
        sample: bool,
        device: Any,
        dtype: Any,
    ) -> None:
        if prior not in PRIORS:
            raise ValueError(f"Expected `prior` to be one of {PRIORS}, but got {prior!r}.")
        self.prior = prior
        self.prior_sigma = _check_positive_float("prior_sigma", prior_sigma)
        self.prior_pi = _check_positive_float("prior_pi", prior_pi, upper=1.0)
        self.prior_sigma2 = _check_positive_float("prior_sigma2", prior_sigma2)
        if isinstance(rho_init, bool) or not isinstance(rho_init, (int, float)) or not math.isfinite(rho_init):
            raise ValueError(f"Expected `rho_init` to be a finite float, but got {rho_init!r}.")
        self.rho_init = float(rho_init)
        self.sample = bool(sample)
        self.generator: torch.Generator | None = None
        factory = {"device": device, "dtype": dtype}
        self.weight_mu = nn.Parameter(torch.empty(weight_shape, **factory))
        self.weight_rho = nn.Parameter(torch.empty(weight_shape, **factory))
        if bias:
            self.bias_mu = nn.Parameter(torch.empty(weight_shape[0], **factory))
            self.bias_rho = nn.Parameter(torch.empty(weight_shape[0], **factory))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
        # Noise of the last sampled forward (plain attributes: not in state_dict, no autograd graph kept).
        self._weight_eps: Tensor | None = None
        self._bias_eps: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``mu`` as PyTorch initialises the deterministic layer (Kaiming uniform), ``rho = rho_init``."""
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        nn.init.constant_(self.weight_rho, self.rho_init)
        if self.bias_mu is not None and self.bias_rho is not None:
            fan_in = self.weight_mu[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias_mu, -bound, bound)
            nn.init.constant_(self.bias_rho, self.rho_init)

    # ----- posterior and sampling -------------------------------------------------------
    @property
    def weight_sigma(self) -> Tensor:
        return F.softplus(self.weight_rho)

    @property
    def bias_sigma(self) -> Tensor | None:
        return None if self.bias_rho is None else F.softplus(self.bias_rho)

    def _posterior_pairs(self) -> list[tuple[Tensor, Tensor, Tensor | None]]:
        pairs = [(self.weight_mu, self.weight_rho, self._weight_eps)]
        if self.bias_mu is not None and self.bias_rho is not None:
            pairs.append((self.bias_mu, self.bias_rho, self._bias_eps))
        return pairs

    def _noise(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def _weights(self) -> tuple[Tensor, Tensor | None]:
        """The weight and bias of this forward: a fresh posterior draw, or ``mu`` when not sampling."""
        if not self.sample:
            return self.weight_mu, self.bias_mu
        self._weight_eps = self._noise(self.weight_mu)
        weight = self.weight_mu + F.softplus(self.weight_rho) * self._weight_eps
        if self.bias_mu is None or self.bias_rho is None:
            return weight, None
        self._bias_eps = self._noise(self.bias_mu)
        return weight, self.bias_mu + F.softplus(self.bias_rho) * self._bias_eps

    # ----- KL ---------------------------------------------------------------------------
    def kl_divergence(self) -> Tensor:
        """``KL(q || p)`` of this layer's weights and biases, a scalar tensor differentiable in ``mu`` and ``rho``.

        Exact for the Gaussian prior; for the scale mixture, the one-sample Monte Carlo estimate
        `mc_kl_divergence` at the weights drawn in the last forward pass.
        """
        if self.prior == "mixture":
            return self.mc_kl_divergence()
        pairs = self._posterior_pairs()
        total = gaussian_kl(pairs[0][0], F.softplus(pairs[0][1]), self.prior_sigma)
        for mu, rho, _ in pairs[1:]:
            total = total + gaussian_kl(mu, F.softplus(rho), self.prior_sigma)
        return total

    def log_prior(self, w: Tensor) -> Tensor:
        """Elementwise ``log p(w)`` under this layer's prior."""
        if self.prior == "mixture":
            return scale_mixture_log_prob(w, self.prior_pi, self.prior_sigma, self.prior_sigma2)
        return gaussian_log_prob(w, 0.0, self.prior_sigma)

    def mc_kl_divergence(self) -> Tensor:
        """One-sample estimate ``log q(w) - log p(w)`` (summed over elements) at the last forward's weights.

        ``w = mu + softplus(rho) * eps`` is rebuilt from the stored noise, so the estimate is
        differentiable in ``mu`` and ``rho`` both through ``w`` and through ``q`` (Blundell et al. 2015, eq. 2).
        Unbiased for any prior; for the Gaussian prior its mean is `gaussian_kl`.
        """
        dtype = torch.promote_types(self.weight_mu.dtype, torch.float32)
        total = torch.zeros((), dtype=torch.float64, device=self.weight_mu.device)
        for mu, rho, eps in self._posterior_pairs():
            if eps is None:
                raise RuntimeError(
                    f"Expected a forward pass of this {type(self).__name__} with sampling on before the Monte Carlo "
                    "KL estimate, but no weights have been drawn yet (or `sample` is False)."
                )
            mu, sigma = mu.to(dtype), F.softplus(rho.to(dtype))
            w = mu + sigma * eps.to(dtype)
            total = total + (gaussian_log_prob(w, mu, sigma) - self.log_prior(w)).sum(dtype=torch.float64)
        return total.to(dtype)

    def _extra_prior_repr(self) -> str:
        if self.prior == "mixture":
            prior = f"prior=mixture(pi={self.prior_pi:g}, sigma1={self.prior_sigma:g}, sigma2={self.prior_sigma2:g})"
        else:
            prior = f"prior=gaussian(sigma={self.prior_sigma:g})"
        return f"{prior}, sample={self.sample}"


class BayesLinear(_BayesLayer):
    """Linear layer with a Gaussian posterior per weight: ``y = x w^T + b`` with ``w, b ~ q`` on each forward.

    Input ``(*, in_features)``, output ``(*, out_features)``. One weight draw is shared by the
    whole batch (as in the paper).

    Args:
        in_features: size of each input sample, as `torch.nn.Linear`.
        out_features: size of each output sample, as `torch.nn.Linear`.
        bias: learn a (Gaussian) bias, as `torch.nn.Linear`.
        prior: ``"gaussian"`` (closed-form KL) or ``"mixture"`` (Monte Carlo KL).
        prior_sigma: standard deviation of the Gaussian prior, or of the mixture's wide component.
        prior_pi: weight of the wide component in the mixture.
        prior_sigma2: standard deviation of the mixture's narrow component.
        rho_init: initial ``rho`` (``softplus(-5) ~ 0.0067``: the posterior starts nearly deterministic).
        sample: draw weights on each forward (default, also in eval mode); False uses ``mu``.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Reference: Blundell et al. 2015, "Weight Uncertainty in Neural Networks".
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        prior_sigma: float = 1.0,
        prior: str = "gaussian",
        prior_pi: float = 0.5,
        prior_sigma2: float = math.exp(-6),
        rho_init: float = -5.0,
        sample: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_posterior(
            (self.out_features, self.in_features),
            bias,
            prior,
            prior_sigma,
            prior_pi,
            prior_sigma2,
            rho_init,
            sample,
            device,
            dtype,
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(*, out_features)`` outputs of ``x`` ``(*, in_features)`` under one weight draw (or ``mu``)."""
        weight, bias = self._weights()
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias_mu is not None}, {self._extra_prior_repr()}"
        )


class BayesConv2d(_BayesLayer):
    """2-D convolution with a Gaussian posterior per kernel weight and bias, drawn on each forward.

    Input ``(B, in_channels, H, W)``, output ``(B, out_channels, H', W')`` exactly as
    `torch.nn.Conv2d` with the same hyper-parameters. Prior and posterior arguments as
    `BayesLinear`.

    Args:
        in_channels: input channels, as `torch.nn.Conv2d`.
        out_channels: output channels, as `torch.nn.Conv2d`.
        kernel_size: as `torch.nn.Conv2d`.
        stride: as `torch.nn.Conv2d`.
        padding: an int, a pair, ``"same"`` (stride 1 only) or ``"valid"``, as `torch.nn.Conv2d`.
        dilation: as `torch.nn.Conv2d`.
        groups: as `torch.nn.Conv2d`; must divide both channel counts.
        bias: learn a (Gaussian) bias.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``, as `torch.nn.Conv2d`.
        prior_sigma: see `BayesLinear`.
        prior: see `BayesLinear`.
        prior_pi: see `BayesLinear`.
        prior_sigma2: see `BayesLinear`.
        rho_init: see `BayesLinear`.
        sample: see `BayesLinear`.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Reference: Blundell et al. 2015, "Weight Uncertainty in Neural Networks".
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        prior_sigma: float = 1.0,
        prior: str = "gaussian",
        prior_pi: float = 0.5,
        prior_sigma2: float = math.exp(-6),
        rho_init: float = -5.0,
        sample: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"Expected `padding_mode` to be one of {_PADDING_MODES}, but got {padding_mode!r}.")
        check_int("groups", groups, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Expected `in_channels` ({in_channels}) and `out_channels` ({out_channels}) to be divisible by "
                f"`groups`, but got groups={groups}."
            )
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"Expected `padding` to be an int, a pair, 'same' or 'valid', but got {padding!r}.")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        if padding == "same" and any(s != 1 for s in self.stride):
            raise ValueError(f"Expected `stride` to be 1 with padding='same', but got {stride!r}.")
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.groups, self.padding_mode = groups, padding_mode
        self._init_posterior(
            (self.out_channels, self.in_channels // groups, *self.kernel_size),
            bias,
            prior,
            prior_sigma,
            prior_pi,
            prior_sigma2,
            rho_init,
            sample,
            device,
            dtype,
        )

    def _pad_for_mode(self) -> list[int]:
        """``F.pad`` amounts (last dim first) for the non-zero padding modes, as ``nn.Conv2d`` computes them."""
        if self.padding == "valid":
            return [0, 0, 0, 0]
        if self.padding == "same":
            pads: list[int] = []
            for d, k in zip(reversed(self.dilation), reversed(self.kernel_size), strict=True):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return pads
        return list(_reverse_repeat_tuple(self.padding, 2))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, out_channels, H', W')`` outputs of ``x`` ``(B, in_channels, H, W)`` under one weight draw."""
        weight, bias = self._weights()
        if self.padding_mode != "zeros":
            x = F.pad(x, self._pad_for_mode(), mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"padding_mode={self.padding_mode}, bias={self.bias_mu is not None}, {self._extra_prior_repr()}"
        )
