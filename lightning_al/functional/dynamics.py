"""Training-dynamics statistics: forgetting events and label dispersion.

Both kernels read a history with the *presentation* (or prediction) axis first: row
``e`` holds what happened to every sample at its ``e``-th presentation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_al.functional._checks import _describe


def forgetting_counts(correct_E_N: Tensor) -> Tensor:
    r"""Number of forgetting events of every sample over ``E`` presentations.

    A forgetting event is a transition from a correct prediction at one presentation to
    an incorrect one at the next (Toneva et al. 2019, "An Empirical Study of Example
    Forgetting during Deep Neural Network Learning"):
    `\sum_{e=1}^{E-1} [c_{e-1} \wedge \neg c_e]`. A sample that is never
    predicted correctly has no forgetting events (the paper ranks such "never learned"
    samples as forgotten infinitely often; see ``ForgettingCallback``).

    Args:
        correct_E_N: bool tensor ``(E, N)``, whether sample ``n`` was predicted correctly at its
            ``e``-th presentation.

    Returns:
        ``LongTensor[N]`` of forgetting counts.

    Example:
        >>> forgetting_counts(torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1], [0, 0], [1, 0]], dtype=torch.bool))
        tensor([2, 1])
    """
    if not isinstance(correct_E_N, Tensor):
        raise TypeError(f"Expected `correct_E_N` to be a torch.Tensor, but got {_describe(correct_E_N)}.")
    if correct_E_N.ndim != 2:
        raise ValueError(f"Expected `correct_E_N` to have shape (E, N), but got {_describe(correct_E_N)}.")
    if correct_E_N.dtype != torch.bool:
        raise TypeError(f"Expected `correct_E_N` to be a bool tensor, but got {_describe(correct_E_N)}.")
    forgot_E1_N = correct_E_N[:-1] & ~correct_E_N[1:]
    return forgot_E1_N.sum(dim=0, dtype=torch.long)


def label_dispersion(preds_E_N: Tensor) -> Tensor:
    r"""Label dispersion of every sample over ``E`` predictions: ``1 - (count of the modal label) / E``.

    0 when the model always predicted the same label, approaching ``1 - 1/C`` when it kept
    changing its mind (Bengar et al. 2021, "When Deep Learners Change Their Mind: Learning
    Dynamics for Active Learning"); higher = query first.

    Args:
        preds_E_N: integer tensor ``(E, N)`` of predicted labels (``>= 0``), ``E >= 1``.

    Returns:
        Tensor ``(N,)`` in the default floating dtype.

    Example:
        >>> label_dispersion(torch.tensor([[0, 2], [0, 1], [1, 2], [0, 0]]))
        tensor([0.2500, 0.5000])
    """
    if not isinstance(preds_E_N, Tensor):
        raise TypeError(f"Expected `preds_E_N` to be a torch.Tensor, but got {_describe(preds_E_N)}.")
    if preds_E_N.ndim != 2 or preds_E_N.shape[0] < 1:
        raise ValueError(f"Expected `preds_E_N` to have shape (E, N) with E >= 1, but got {_describe(preds_E_N)}.")
    if preds_E_N.is_floating_point() or preds_E_N.is_complex() or preds_E_N.dtype == torch.bool:
        raise TypeError(f"Expected `preds_E_N` to hold integer labels, but got {_describe(preds_E_N)}.")
    if preds_E_N.numel() and preds_E_N.min() < 0:
        raise ValueError(f"Expected `preds_E_N` to hold labels >= 0, but got minimum {int(preds_E_N.min())}.")
    num_predictions = preds_E_N.shape[0]
    if preds_E_N.shape[1] == 0:
        return torch.zeros(0, device=preds_E_N.device)
    modal_N = torch.mode(preds_E_N, dim=0).values
    modal_count_N = (preds_E_N == modal_N).sum(dim=0)
    return 1 - modal_count_N.to(torch.get_default_dtype()) / num_predictions
