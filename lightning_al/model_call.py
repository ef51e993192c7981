"""How the library calls the user's model: a batch becomes the model's inputs, the model's output becomes logits.

This is the one contract every caller follows (estimators, MC dropout, embeddings, EGL gradients,
callbacks, the test pass):

- **Inputs.** `model_inputs` picks them from a batch. With an ``input_key`` the model receives
  ``batch[input_key]`` as its one argument. With ``input_key=None`` it receives every field except the
  target: a dict batch as keywords (`KeywordInputs`, ``model(**fields)``: the Hugging Face
  convention, ``model(input_ids=..., attention_mask=...)``), a tuple batch as positional arguments
  (`PositionalInputs`, ``model(*fields)``).
- **Outputs.** `logits_of` accepts a tensor of logits, or an object or dict with a ``logits``
  tensor (a Hugging Face ``ModelOutput``); anything else is refused with what was received.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from lightning_al.data.targets import Key, input_of


class KeywordInputs(dict):
    """Model inputs passed as keywords: ``model(**inputs)``."""


class PositionalInputs(tuple):
    """Model inputs passed as positional arguments: ``model(*inputs)``."""


def model_inputs(batch: Any, input_key: Key | None, target_key: Key | None) -> Any:
    """The model's inputs in ``batch``: ``batch[input_key]``, or with ``input_key=None`` every field but the target.

    Raises:
        ValueError: the batch holds no field at ``input_key``, or (``input_key=None``) no field besides the target.
    """
    if input_key is not None:
        return input_of(batch, input_key)
    if isinstance(batch, Mapping):
        inputs: Any = KeywordInputs((key, value) for key, value in batch.items() if key != target_key)
    elif isinstance(batch, Sequence) and not isinstance(batch, str):
        drop = (
            target_key % len(batch) if isinstance(target_key, int) and -len(batch) <= target_key < len(batch) else None
        )
        inputs = PositionalInputs(value for position, value in enumerate(batch) if position != drop)
    else:
        inputs = PositionalInputs((batch,))
    if not inputs:
        raise ValueError(
            f"Expected the batch to hold model inputs besides the target {target_key!r}, but got a "
            f"{type(batch).__name__} with {list(batch.keys()) if isinstance(batch, Mapping) else len(batch)} fields."
        )
    return inputs


def apply(fn: Callable[..., Any], inputs: Any) -> Any:
    """``fn(**inputs)``, ``fn(*inputs)`` or ``fn(inputs)``, as `model_inputs` laid the inputs out."""
    if isinstance(inputs, KeywordInputs):
        return fn(**inputs)
    if isinstance(inputs, PositionalInputs):
        return fn(*inputs)
    return fn(inputs)


def logits_of(output: Any) -> Tensor:
    """The logits in a model's output: the tensor itself, or its ``logits`` (attribute or key).

    Raises:
        TypeError: the output is neither a tensor nor carries a ``logits`` tensor.
    """
    if isinstance(output, Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if not isinstance(logits, Tensor):
        fields = f" with keys {list(output.keys())}" if isinstance(output, Mapping) else ""
        raise TypeError(
            "Expected the model's forward to return logits: a tensor, or an object or dict with a `logits` tensor "
            f"(a Hugging Face ModelOutput), but got {type(output).__name__}{fields}."
        )
    return logits


def call_model(model: Callable[..., Any], inputs: Any) -> Tensor:
    """The logits of ``model`` on ``inputs`` (see the module docstring for both conventions)."""
    return logits_of(apply(model, inputs))
