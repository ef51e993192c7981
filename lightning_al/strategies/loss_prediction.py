"""Query the samples whose loss a learned head predicts to be highest (Yoo & Kweon 2019).

Yoo & Kweon 2019, "Learning Loss for Active Learning" (CVPR): a small head attached to
intermediate layers of the target model is trained jointly with it to rank the per-sample
losses (`lightning_al.callbacks.loss_prediction.LossPredictionCallback`); the
unlabelled samples with the highest predicted loss are labelled next.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_al.callbacks.loss_prediction import LossPredictionCallback
from lightning_al.estimators.base import Estimator
from lightning_al.functional._checks import check_scores
from lightning_al.outputs import PoolOutputs
from lightning_al.strategies.base import CallbackScoreStrategy

PREDICTED_LOSS = "predicted_loss"  # (N,) the loss-prediction head's output


class LossPredictionEstimator(Estimator):
    """Outputs ``"predicted_loss"`` ``(B,)``: the head of ``callback`` on the model's tapped features (eval mode).

    The callback must have trained during the fit (the `LossPrediction` strategy adds it
    to the Trainer); this estimator adds no callback itself, so it is never registered twice.

    Args:
        callback: the `LossPredictionCallback` whose head predicts the losses.
    """

    provides = frozenset({PREDICTED_LOSS})

    def __init__(self, callback: LossPredictionCallback) -> None:
        if not isinstance(callback, LossPredictionCallback):
            raise TypeError(f"Expected `callback` to be a LossPredictionCallback, but got {type(callback).__name__}.")
        self.callback = callback

    def modules(self) -> list[nn.Module]:
        """The loss-prediction head, once the callback has built it."""
        return [] if self.callback.head is None else [self.callback.head]

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        """``{"predicted_loss": (B,)}``: the head's loss predictions for the batch ``inputs``."""
        return {PREDICTED_LOSS: self.callback.predict_loss(model, inputs)}


class LossPrediction(CallbackScoreStrategy):
    """Score = the predicted loss, highest first; trains its own loss-prediction head during each fit.

    Yoo & Kweon 2019, "Learning Loss for Active Learning" (CVPR).

    The arguments go to the strategy's `lightning_al.callbacks.loss_prediction.LossPredictionCallback`.

    Args:
        layers: names (``model.named_modules()``) of the intermediate layers whose outputs feed the head.
        hidden: width of each feature branch of the head.
        margin: the ranking loss's margin ξ.
        weight: λ, the weight of the ranking loss in the total loss.
        detach_after_epoch: from this epoch (0-based) on, no gradient flows from the head into the
            backbone (the paper uses 120 of 200 epochs); None never detaches.
        lr: learning rate of the head's parameters.
        own_optimizer: give the head its own Adam optimiser instead of a group in the model's optimiser.
        reset_each_fit: re-initialise the head at every fit.
        logits_layer: name of the module whose output are the logits ``(B, C)``; ``""`` is the model.
        seed: seeds the head's initialisation.
    """

    requires = frozenset({PREDICTED_LOSS})

    def __init__(
        self,
        layers: list[str],
        hidden: int = 128,
        margin: float = 1.0,
        weight: float = 1.0,
        detach_after_epoch: int | None = 120,
        lr: float = 1e-3,
        own_optimizer: bool = True,
        reset_each_fit: bool = True,
        logits_layer: str = "",
        seed: int = 0,
    ) -> None:
        self.callback = LossPredictionCallback(
            layers,
            hidden=hidden,
            margin=margin,
            weight=weight,
            detach_after_epoch=detach_after_epoch,
            lr=lr,
            own_optimizer=own_optimizer,
            reset_each_fit=reset_each_fit,
            logits_layer=logits_layer,
            seed=seed,
        )
        self.estimator = LossPredictionEstimator(self.callback)

    def score(self, outputs: PoolOutputs) -> Tensor:
        """``(N,)`` predicted losses."""
        scores = outputs[PREDICTED_LOSS]
        check_scores(PREDICTED_LOSS, scores)
        return scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={self.callback.layers})"
