"""The NT-Xent contrastive loss of SimCLR, a pure tensor kernel."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent_loss(z1_B_D: Tensor, z2_B_D: Tensor, temperature: float = 0.5) -> Tensor:
    r"""Normalised temperature-scaled cross entropy over ``2B`` views (Chen et al. 2020, SimCLR, Eq. 1).

    Rows ``i`` of ``z1_B_D`` and ``z2_B_D`` are the projections of two views of the same sample. With
    the ``2B`` projections ``z_1 .. z_2B`` (``z1`` then ``z2``) and the cosine similarity
    ``s_ij = z_i·z_j / (‖z_i‖ ‖z_j‖)``, each view ``i`` has one positive, its other view ``j(i)``, and
    ``2B - 2`` negatives, every other view:

    .. math::

        \ell_i = -\log \frac{\exp(s_{i j(i)} / \tau)}{\sum_{k \ne i} \exp(s_{ik} / \tau)}, \qquad
        L = \frac{1}{2B} \sum_{i=1}^{2B} \ell_i

    (the paper's mean over both orders of every positive pair; the authors' code sums the two orders
    and averages over the ``B`` pairs, twice this value). A zero row has similarity 0 to everything.
    Computed in float32 at least.

    Args:
        z1_B_D: ``(B, D)`` projections of the first views.
        z2_B_D: ``(B, D)`` projections of the second views, row-aligned with ``z1_B_D``.
        temperature: ``τ > 0`` (the paper: 0.1 for ImageNet at batch 4096, 0.5 for its CIFAR-10 runs).

    Returns:
        The scalar loss; ``log(1 + 2 / e) ≈ 0.551`` for ``z1 = z2 = I_2`` and ``τ = 1``.

    >>> eye = torch.eye(2)
    >>> round(float(nt_xent_loss(eye, eye, temperature=1.0)), 4)
    0.5514
    """
    if not isinstance(z1_B_D, Tensor) or not isinstance(z2_B_D, Tensor):
        raise TypeError(
            f"Expected `z1_B_D` and `z2_B_D` to be tensors, but got {type(z1_B_D).__name__} "
            f"and {type(z2_B_D).__name__}."
        )
    if z1_B_D.ndim != 2 or z1_B_D.shape != z2_B_D.shape or z1_B_D.shape[0] == 0:
        raise ValueError(
            f"Expected `z1_B_D` and `z2_B_D` of one shape (B, D) with B >= 1, but got {tuple(z1_B_D.shape)} "
            f"and {tuple(z2_B_D.shape)}."
        )
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"Expected `temperature` to be a number > 0, but got {temperature!r}.")
    if not math.isfinite(temperature):
        raise ValueError(f"Expected `temperature` to be finite, but got {temperature!r}.")
    size = z1_B_D.shape[0]
    dtype = torch.promote_types(z1_B_D.dtype, torch.float32)
    with torch.autocast(device_type=z1_B_D.device.type, enabled=False):  # the similarities in float32 under AMP
        z = F.normalize(torch.cat([z1_B_D, z2_B_D]).to(dtype), dim=1)
        logits = z @ z.T / temperature
    self_pairs = torch.eye(2 * size, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    positives = torch.cat([torch.arange(size, 2 * size), torch.arange(size)]).to(z.device)
    return F.cross_entropy(logits, positives)
