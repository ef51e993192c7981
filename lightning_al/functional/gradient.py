r"""Expected gradient length (EGL) for the last linear layer, in closed form.

Settles, Craven & Ray 2008, "Multiple-Instance Active Learning" (NeurIPS): query the
points whose label, were we told it, would change the model the most, measured by the
norm of the training gradient expected under the model's own predictive distribution.

For a last linear layer `z = W h (+ b)` with softmax cross-entropy, the gradient
of the loss for label `y` is `\nabla_W L^{(y)} = (p - e_y) h^\top` (and
`\nabla_b L^{(y)} = p - e_y`), an outer product, so its Frobenius norm factorises:

    \|\nabla_W L^{(y)}\| = \|p - e_y\| \, \|h\|, \qquad
    \|p - e_y\|^2 = \|p\|^2 - 2 p_y + 1,

and `\mathrm{EGL}(x) = \sum_y p(y \mid x)\, \|p - e_y\| \, \|h\|` costs
`O(C + D)` per point instead of ``C`` backward passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_al.functional._checks import check_embeddings, check_probs


def egl(probs_N_C: Tensor, embeddings_N_D: Tensor, bias: bool = False) -> Tensor:
    r"""Expected gradient length of the last linear layer under the model's predictive.

        \mathrm{EGL}(x) = \sum_y p(y \mid x)\, \|p - e_y\|\, \sqrt{\|h\|^2 + [\text{bias}]}

    where `h` is the input of the last linear layer (the embedding). With
    ``bias=True`` the layer's bias gradient `p - e_y` joins the weight gradient, which
    adds 1 under the square root. Accumulated in float64; returned in the dtype of
    ``probs_N_C``. (Settles, Craven & Ray 2008, "Multiple-Instance Active Learning".)

    Args:
        probs_N_C: softmax outputs, shape ``(N, C)``.
        embeddings_N_D: inputs of the last linear layer, shape ``(N, D)``.
        bias: whether the last layer has a bias whose gradient counts in the norm.

    Returns:
        Scores of shape ``(N,)``, higher = query first.

    Example:
        >>> egl(torch.tensor([[0.5, 0.5]]), torch.tensor([[3.0, 4.0]]))  # sqrt(0.5) * 5
        tensor([3.5355])
        >>> egl(torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 4.0]]))  # a certain prediction: no gradient
        tensor([0.])
    """
    check_probs("probs_N_C", probs_N_C, ndim=2)
    check_embeddings("embeddings_N_D", embeddings_N_D, num_rows=probs_N_C.shape[0], rows_of="probs_N_C")
    if not isinstance(bias, bool):
        raise TypeError(f"Expected `bias` to be a bool, but got {type(bias).__name__}.")
    probs = probs_N_C.to(torch.float64)
    # ||p - e_y||^2 = sum_{c != y} p_c^2 + (1 - p_y)^2. The first term is ||p||^2 - p_y^2, except for the
    # top class, where that difference cancels (p_y ~ 1): there it is summed directly.
    squares_N_C = probs.square()
    top_N_1 = probs.argmax(dim=1, keepdim=True)
    others_N_C = squares_N_C.sum(dim=1, keepdim=True) - squares_N_C
    others_N_C.scatter_(1, top_N_1, squares_N_C.scatter(1, top_N_1, 0.0).sum(dim=1, keepdim=True))
    residual_norm_N_C = (others_N_C.clamp_min(0) + (1 - probs).square()).sqrt()
    expected_residual_N = (probs * residual_norm_N_C).sum(dim=1)
    embedding_sq_N = embeddings_N_D.to(torch.float64).square().sum(dim=1)
    if bias:
        embedding_sq_N = embedding_sq_N + 1
    return (expected_residual_N * embedding_sq_N.sqrt()).to(probs_N_C.dtype)
