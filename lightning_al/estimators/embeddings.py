"""Features of a user's model, captured during the forward pass it already runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn


class _Captured:
    value: Tensor | None = None


def last_linear(model: nn.Module, head_types: tuple[type[nn.Module], ...] = (nn.Linear,)) -> tuple[str, nn.Module]:
    """The last module of ``head_types`` registered in ``model`` (its classifier head, for ordinary models)."""
    heads = [(name, m) for name, m in model.named_modules() if isinstance(m, head_types)]
    if not heads:
        kinds = " or ".join(f"nn.{kind.__name__}" for kind in head_types)
        raise ValueError(
            f"Expected {type(model).__name__} to have an {kinds} head whose input serves as embedding, "
            "but it has none. Pass `embedding_layer` with the name of a layer, or give the model an `embed()` method."
        )
    return heads[-1]


@contextlib.contextmanager
def capture_embeddings(
    model: nn.Module, layer: str | None = None, head_types: tuple[type[nn.Module], ...] = (nn.Linear,)
) -> Iterator[_Captured]:
    """Record ``(B, ...)`` features while ``model`` runs inside the ``with`` block (as the layer sees them).

    With ``layer`` given, the output of the module of that name; otherwise the input of the last module of
    ``head_types`` (``nn.Linear``: the features the classifier sees, which is what BADGE's and EGL's
    last-layer gradients are built from; a segmentation head's ``nn.Conv2d``: per-pixel features).
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
            captured.value = output

        handle = modules[layer].register_forward_hook(hook)
    else:

        def pre_hook(module: nn.Module, args: Any) -> None:
            captured.value = args[0]

        handle = last_linear(model, head_types)[1].register_forward_pre_hook(pre_hook)
    try:
        yield captured
    finally:
        handle.remove()
