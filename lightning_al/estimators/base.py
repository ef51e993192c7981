"""Estimators turn a model and a batch of inputs into the outputs strategies need."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from lightning_al.estimators.embeddings import capture_embeddings
from lightning_al.model_call import apply, call_model
from lightning_al.outputs import EMBEDDINGS, PROBS

if TYPE_CHECKING:
    import pytorch_lightning as pl


class TrainFn(Protocol):
    """Fits ``module`` on the current labelled set with the loop's Trainer arguments.

    ``seed`` seeds the fit; ``bootstrap=True`` trains on a resample of the labelled set with
    replacement (drawn from ``seed``); ``trainer_overrides`` replace Trainer arguments
    (e.g. ``max_epochs`` for a shorter-trained proxy).
    """

    def __call__(
        self, module: pl.LightningModule, seed: int, *, bootstrap: bool = False, **trainer_overrides: Any
    ) -> None: ...


class Estimator:
    """Computes named outputs for a batch of pool inputs.

    Subclasses set ``provides`` (the output names they can compute) and implement
    :meth:`predict`, which must compute only the outputs in ``needs``. Three optional
    hooks let an estimator take part in training without the loop knowing its type:
    :meth:`callbacks` join the main model's fit, :meth:`fit` runs after it (ensembles
    train their other members there), and :meth:`modules` lists extra modules that must
    move to the scoring device with the model. Estimators with state implement
    ``state_dict``/``load_state_dict``.
    """

    provides: frozenset[str] = frozenset()
    # True: ``predict`` also receives ``ids=`` (the batch's dataset ids), e.g. to look up cached features.
    needs_ids: bool = False

    def callbacks(self) -> list[pl.Callback]:
        """Callbacks added to every round's fit of the main model."""
        return []

    def fit(self, model: pl.LightningModule, train: TrainFn) -> None:
        """Called every round after the main model's fit; ``train(module, seed)`` fits another module."""
        del model, train

    def modules(self) -> list[nn.Module]:
        """Modules besides the model that :meth:`predict` runs (moved to the scoring device with it)."""
        return []

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class Softmax(Estimator):
    """One deterministic forward pass in eval mode: ``probs = softmax(model(x))``, shape ``(B, C)``.

    The model's ``forward`` must return logits of shape ``(B, C)``. When ``embeddings`` are
    needed they are captured in the same pass: the model's ``embed(x)`` if it has one, else
    the output of ``embedding_layer`` (a module name), else the input of its last linear layer.

    Args:
        embedding_layer: name of the layer whose output serves as embedding (``model.named_modules()``).
    """

    provides = frozenset({PROBS, EMBEDDINGS})

    def __init__(self, embedding_layer: str | None = None) -> None:
        self.embedding_layer = embedding_layer

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        model.eval()
        if EMBEDDINGS not in needs:
            return {PROBS: _softmax(call_model(model, inputs))}
        if self.embedding_layer is None and callable(getattr(model, "embed", None)):
            return {
                PROBS: _softmax(call_model(model, inputs)),
                EMBEDDINGS: apply(model.embed, inputs).flatten(1).float(),
            }
        with capture_embeddings(model, self.embedding_layer) as captured:
            probs = _softmax(call_model(model, inputs))
        if captured.value is None:
            raise ValueError(f"Expected the embedding layer {self.embedding_layer!r} to run in the model's forward.")
        return {PROBS: probs, EMBEDDINGS: captured.value.float()}


def _softmax(logits: Any) -> Tensor:
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"Expected the model's forward to return logits of shape (B, C), but got {shape}.")
    return torch.softmax(logits.float(), dim=-1)
