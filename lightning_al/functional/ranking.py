r"""The pairwise ranking loss that trains a loss-prediction module.

Yoo & Kweon 2019, "Learning Loss for Active Learning" (CVPR), eq. 2: a head learns to
predict the target model's loss; since the scale of the loss shrinks as training goes
on, the head is trained to get the *order* of the losses right within a mini-batch, not
their values.
"""

from __future__ import annotations

import torch
from torch import Tensor


def loss_prediction_ranking_loss(predicted_B: Tensor, target_B: Tensor, margin: float = 1.0) -> Tensor:
    r"""Mean pairwise hinge loss between predicted and true per-sample losses.

    The batch is split into ``B // 2`` pairs, sample ``i`` with sample ``B - 1 - i`` (the
    first half against the reversed second half; the middle sample of an odd batch is
    left out). For each pair `(i, j)`:

        \max\bigl(0,\; -A(l_i, l_j)\,(\hat l_i - \hat l_j) + \xi\bigr), \qquad
        A(l_i, l_j) = \begin{cases} +1 & l_i > l_j \\ -1 & \text{otherwise} \end{cases}

    with `\xi` = ``margin``, averaged over the pairs. Ties (`l_i = l_j`) count
    as `A = -1`, as in the paper. ``target_B`` is detached: no gradient reaches the
    target losses. A batch with fewer than two samples has no pair and gives a zero loss
    (still connected to ``predicted_B``'s graph).

    Args:
        predicted_B: predicted losses `\hat l`, shape ``(B,)``.
        target_B: true per-sample losses `l`, shape ``(B,)``.
        margin: the margin `\xi \ge 0`.

    Returns:
        A scalar tensor in the dtype of ``predicted_B``.

    Example:
        >>> predicted = torch.tensor([3.0, 0.5, 0.0, 1.0])  # pairs (0, 3) and (1, 2)
        >>> target = torch.tensor([2.0, 0.1, 0.3, 1.0])  # (1, 2) is predicted in the wrong order
        >>> loss_prediction_ranking_loss(predicted, target)  # (max(0, -2 + 1) + max(0, 0.5 + 1)) / 2
        tensor(0.7500)
    """
    for name, value in (("predicted_B", predicted_B), ("target_B", target_B)):
        if not isinstance(value, Tensor):
            raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(value).__name__}.")
        if value.ndim != 1 or not value.is_floating_point():
            raise ValueError(
                f"Expected `{name}` to be a floating tensor of shape (B,), but got shape {tuple(value.shape)} "
                f"and dtype {value.dtype}."
            )
    if predicted_B.shape != target_B.shape:
        raise ValueError(
            f"Expected `predicted_B` and `target_B` to have the same shape, but got {tuple(predicted_B.shape)} "
            f"and {tuple(target_B.shape)}."
        )
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not margin >= 0:
        raise ValueError(f"Expected `margin` to be a number >= 0, but got {margin!r}.")
    half = predicted_B.shape[0] // 2
    if half == 0:
        return predicted_B.sum() * 0.0
    target_B = target_B.detach()
    predicted_diff = predicted_B[:half] - predicted_B.flip(0)[:half]
    target_diff = target_B[:half] - target_B.flip(0)[:half]
    sign = torch.where(target_diff > 0, 1.0, -1.0).to(predicted_diff.dtype)
    return torch.clamp(margin - sign * predicted_diff, min=0).mean()
