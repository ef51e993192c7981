"""Features of a user's model, captured during the forward pass it already runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn


class _Captured:
    value: Tensor | None = None


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` registered in ``model`` (its classifier head, for ordinary models)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"Expected {type(model).__name__} to have an nn.Linear head whose input serves as embedding, "
            "but it has none. Pass `embedding_layer` with the name of a layer, or give the model an `embed()` method."
        )
    return linears[-1]


@contextlib.contextmanager
def capture_embeddings(model: nn.Module, layer: str | None = None) -> Iterator[_Captured]:
    """Record ``(B, D)`` features while ``model`` runs inside the ``with`` block.

    With ``layer`` given, the output of the module of that name (flattened after the batch
    axis); otherwise the input of the last ``nn.Linear`` — the features the classifier sees,
    which is what BADGE's and EGL's last-layer gradients are built from.
    """
    modules = dict(model.named_modules())
    captured = _Captured()
    if layer is not None:
        if layer not in modules:
            names = [name for name in modules if name]
            raise ValueError(
                f"Expected `embedding_layer` to name a layer of {type(model).__name__}, one of {names}, "
                f"but got {layer!r}."
            )

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            captured.value = output.flatten(1)

        handle = modules[layer].register_forward_hook(hook)
    else:

        def pre_hook(module: nn.Module, args: Any) -> None:
            captured.value = args[0].flatten(1)

        handle = last_linear(model)[1].register_forward_pre_hook(pre_hook)
    try:
        yield captured
    finally:
        handle.remove()
