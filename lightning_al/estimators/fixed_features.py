"""Embeddings that do not come from the task model: a frozen encoder, or features computed once.

At round 0 of a cold start no label exists and the task model has never been trained, so its
penultimate features are those of a random network: a poor space to cluster (TypiClust) or to
cover (ProbCover) in. Hacohen et al. 2022 and Yehuda et al. 2022 use self-supervised features
instead (e.g. SimCLR). These estimators provide such ``embeddings`` to any strategy that requires
them, while ``probs`` still come from the task model (``task.probs(model(x))``) when also required.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_al.estimators.base import Estimator
from lightning_al.model_call import apply, call_model
from lightning_al.outputs import EMBEDDINGS, PROBS
from lightning_al.tasks import ALL_TASKS


class FrozenEncoder(Estimator):
    """``embeddings = encoder(x).flatten(1)`` from a user's pretrained encoder that the loop never trains.

    The encoder runs in eval mode on the scoring device (it moves there with the model). Its
    weights are not part of any fit: the loop's Trainer fits only the task model.

    Args:
        encoder: module mapping a batch of the model's inputs to features ``(B, ...)``.
    """

    provides = frozenset({PROBS, EMBEDDINGS})
    tasks = ALL_TASKS

    def __init__(self, encoder: nn.Module) -> None:
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"Expected `encoder` to be a torch.nn.Module, but got {type(encoder).__name__}.")
        self.encoder = encoder

    def modules(self) -> list[nn.Module]:
        """The encoder."""
        return [self.encoder]

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        """``embeddings`` ``(B, D)`` from the encoder and/or ``probs`` ``(B, C)`` from ``model``, as ``needs`` asks."""
        out: dict[str, Tensor] = {}
        if EMBEDDINGS in needs:
            self.encoder.eval()
            with torch.no_grad():
                features = apply(self.encoder, inputs)
            if not isinstance(features, Tensor) or features.ndim < 2:
                shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
                raise ValueError(f"Expected `encoder` to return features of shape (B, ...), but got {shape}.")
            out[EMBEDDINGS] = features.flatten(1).float()
        if PROBS in needs:
            model.eval()
            out[PROBS] = self.task.probs(call_model(model, inputs))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.encoder).__name__})"


class PrecomputedEmbeddings(Estimator):
    """``embeddings`` looked up by dataset id in a table computed once (e.g. self-supervised features).

    Row ``i`` of the table is the embedding of dataset item ``i`` (the dataset index, the identity
    of a sample everywhere in this library). The table stays on the CPU; only the rows of each
    batch are copied.

    Args:
        features: ``(len(dataset), D)`` floating tensor, or the path of a file saved with
            ``torch.save`` holding one (loaded with ``weights_only=True``, so no code runs on load).
    """

    provides = frozenset({PROBS, EMBEDDINGS})
    tasks = ALL_TASKS
    needs_ids = True

    def __init__(self, features: Tensor | str | Path) -> None:
        source = features
        if isinstance(features, (str, Path)):
            features = torch.load(Path(features), map_location="cpu", weights_only=True)
        if not isinstance(features, Tensor):
            raise TypeError(f"Expected `features` to be a torch.Tensor or a path to one, but got {type(source)!r}.")
        if features.ndim != 2 or not features.is_floating_point() or features.shape[0] == 0:
            raise ValueError(
                f"Expected `features` to be a non-empty floating tensor of shape (num_items, D), "
                f"but got dtype={features.dtype}, shape={tuple(features.shape)}."
            )
        bad = ~torch.isfinite(features).all(dim=1)
        if bad.any():
            raise ValueError(
                f"Expected `features` to be finite, but rows {bad.nonzero().flatten()[:10].tolist()} hold NaN or inf."
            )
        self.features = features.detach().cpu()

    def predict(
        self, model: nn.Module, inputs: Any, needs: frozenset[str], ids: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``embeddings`` ``(B, D)``, the table's rows ``ids`` ``(B,)``, and/or ``probs`` ``(B, C)`` from ``model``."""
        out: dict[str, Tensor] = {}
        if EMBEDDINGS in needs:
            if ids is None:
                raise ValueError("Expected the batch's dataset `ids` to look up precomputed features, but got None.")
            ids = ids.cpu().long()
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.features.shape[0]):
                raise ValueError(
                    f"Expected dataset ids in [0, {self.features.shape[0]}) (one row of `features` per item), "
                    f"but got ids in [{int(ids.min())}, {int(ids.max())}]."
                )
            out[EMBEDDINGS] = self.features[ids].float()
        if PROBS in needs:
            model.eval()
            out[PROBS] = self.task.probs(call_model(model, inputs))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_items={self.features.shape[0]}, dim={self.features.shape[1]})"
