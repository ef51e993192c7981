r"""MAL acquisition: the highest-entropy samples among those the discriminator calls unlabelled.

Ebrahimi et al. 2021, "Minimax Active Learning" (arXiv:2012.10467). The model's encoder and
cosine classifier play the minimax entropy game on the unlabelled pool, and a discriminator
learns labelled vs unlabelled features, during every round's fit
(`lightning_al.callbacks.mal.MALCallback`); scoring combines the discriminator
(diversity) and the classifier's entropy (uncertainty) with
`lightning_al.functional.mal.mal_score`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_al.callbacks.loss_prediction import tap_features
from lightning_al.callbacks.mal import MALCallback
from lightning_al.estimators.base import Estimator
from lightning_al.functional.mal import mal_score
from lightning_al.model_call import call_model
from lightning_al.outputs import PROBS, PoolOutputs
from lightning_al.strategies.base import CallbackScoreStrategy

MAL_UNLABELLED_SCORE = "mal_unlabelled_score"  # (N,) 1 - p("labelled") of MAL's discriminator


class MALEstimator(Estimator):
    """One eval-mode forward pass: ``probs = softmax(model(x))`` ``(B, K)`` and the discriminator's score ``(B,)``.

    ``mal_unlabelled_score = 1 - sigmoid(D(f / ‖f‖))`` with ``f`` the output of the callback's
    ``encoder_layer``, captured in the same pass. Only the outputs in ``needs`` are returned.

    Args:
        callback: the `MALCallback` that trains the model's minimax game and the discriminator.
    """

    provides = frozenset({PROBS, MAL_UNLABELLED_SCORE})

    def __init__(self, callback: MALCallback) -> None:
        if not isinstance(callback, MALCallback):
            raise TypeError(f"Expected `callback` to be a MALCallback, but got {type(callback).__name__}.")
        self.callback = callback

    def modules(self) -> list[nn.Module]:
        """The discriminator, once the callback has built it."""
        return [] if self.callback.discriminator is None else [self.callback.discriminator]

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        """``probs`` ``(B, K)`` and/or ``mal_unlabelled_score`` ``(B,)`` for the batch ``inputs``, as ``needs`` asks."""
        model.eval()
        layer = self.callback.encoder_layer
        with tap_features(model, [layer]) as captured:
            logits = call_model(model, inputs)
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"Expected the model's forward to return logits of shape (B, K), but got {shape}.")
        out: dict[str, Tensor] = {}
        if PROBS in needs:
            out[PROBS] = torch.softmax(logits.float(), dim=-1)
        if MAL_UNLABELLED_SCORE in needs:
            if layer not in captured:
                raise ValueError(f"Expected the layer {layer!r} to run in the model's forward, but it did not.")
            out[MAL_UNLABELLED_SCORE] = self.callback.unlabelled_prob(captured[layer]).float()
        return out


class MAL(CallbackScoreStrategy):
    r"""Minimax active learning (Ebrahimi et al. 2021): top ``k`` of `lightning_al.functional.mal.mal_score`.

    `s(x) = H(x) - \mathbb{1}[u(x) < \tau](\log K + 1)`: the samples the discriminator
    predicts as unlabelled (`u \ge \tau`), highest classifier entropy first, then the rest
    by entropy. Owns the `lightning_al.callbacks.mal.MALCallback` that trains during each
    round's fit (`callbacks`); the other arguments are forwarded to it, and its module
    docstring says what the model must provide (an ``encoder_layer``, ideally followed by a
    `lightning_al.callbacks.mal.CosineClassifier`).

    Args:
        encoder_layer: name of the layer whose output is the feature `F(x)`.
        threshold: `\tau`, the discriminator's "unlabelled" probability from which a sample
            counts as unlabelled-looking (0 gives entropy sampling).
        entropy_weight: λ, the weight of the unlabelled entropy in the model's loss.
        discriminator_hidden: hidden width of the discriminator.
        lr: Adam learning rate of the discriminator.
        seed: seeds the discriminator's weights and the unlabelled shuffles.
        reset_each_fit: rebuild the discriminator at the start of every fit.
    """

    requires = frozenset({PROBS, MAL_UNLABELLED_SCORE})

    def __init__(
        self,
        encoder_layer: str,
        threshold: float = 0.5,
        entropy_weight: float = 0.1,
        discriminator_hidden: int = 64,
        lr: float = 5e-4,
        seed: int = 0,
        reset_each_fit: bool = True,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            raise ValueError(f"Expected `threshold` to be a float in [0, 1], but got {threshold!r}.")
        self.threshold = float(threshold)
        self.callback = MALCallback(
            encoder_layer,
            entropy_weight=entropy_weight,
            discriminator_hidden=discriminator_hidden,
            lr=lr,
            seed=seed,
            reset_each_fit=reset_each_fit,
        )
        self.estimator = MALEstimator(self.callback)

    def score(self, outputs: PoolOutputs) -> Tensor:
        """``(N,)`` MAL scores from ``probs`` ``(N, K)`` and ``mal_unlabelled_score`` ``(N,)``."""
        return mal_score(outputs[PROBS], outputs[MAL_UNLABELLED_SCORE], self.threshold)

    def __repr__(self) -> str:
        c = self.callback
        return f"MAL(encoder_layer={c.encoder_layer!r}, threshold={self.threshold}, entropy_weight={c.entropy_weight})"
