"""The Trainer arguments of the loop's fits and passes, derived from the user's ``trainer_kwargs``.

Three kinds of Trainer run in a round:

- **the main fit** trains the user's model: the user's arguments, over quiet defaults (no logger,
  checkpointing, model summary or progress bar unless asked for); a `ModelCheckpoint` among the
  user's callbacks turns checkpointing on;
- **internal fits** train the extra modules of an estimator (ensemble members, proxies): the user's
  training arguments (epochs, precision, devices, ...) but none of what the user asked for the main fit
  alone: no callbacks, logger, checkpoints, summary or progress bar;
- **passes** (the test set, the pool's scoring) run the model forward on one device: the device this
  process trained on (under several processes, each rank's own; the loop shards the pool itself), in the
  fit's precision and plugins, quietly.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import Any

import torch

# Everything a Trainer would otherwise add to a run: off unless the user's arguments turn it on.
QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "enable_progress_bar": False,
}
# Trainer arguments that set how the model computes; a pass takes them from the fit.
NUMERICS_KEYS = ("precision", "plugins")
# Lightning callbacks whose state describes one fit (the best monitored value, the patience spent).
PER_FIT_CALLBACKS = ("EarlyStopping", "ModelCheckpoint")


@contextlib.contextmanager
def quiet_banners() -> Iterator[None]:
    """Silence the start-up banners every new Trainer prints (they would repeat every round); warnings still show.

    Whichever Lightning package was imported last logs them, so both packages' loggers are quietened.
    """
    packages = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")
    loggers = [logging.getLogger(f"{package}.utilities.rank_zero") for package in packages]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _is_lightning_class(callback: Any, names: tuple[str, ...]) -> bool:
    """Whether ``callback`` is (a subclass of) one of Lightning's classes ``names``, of either namespace."""
    return any(
        cls.__name__ in names and cls.__module__.startswith(("pytorch_lightning.", "lightning.pytorch."))
        for cls in type(callback).__mro__
    )


def fit_kwargs(trainer_kwargs: dict[str, Any], callbacks: list[Any]) -> dict[str, Any]:
    """The main fit's ``Trainer(**kwargs)``: ``trainer_kwargs`` over `QUIET`, with ``callbacks``.

    A checkpoint callback of the user's needs checkpointing on: `QUIET`'s ``enable_checkpointing=False``
    is left out then (an explicit ``enable_checkpointing`` of the user's still wins).
    """
    defaults = dict(QUIET)
    if any(_is_lightning_class(cb, ("Checkpoint",)) for cb in trainer_kwargs.get("callbacks", [])):
        del defaults["enable_checkpointing"]
    return {**defaults, **trainer_kwargs, "callbacks": callbacks}


def internal_fit_kwargs(trainer_kwargs: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """An internal fit's ``Trainer(**kwargs)``: the user's training arguments, quiet, no callbacks, ``overrides``."""
    training = {key: value for key, value in trainer_kwargs.items() if key not in QUIET and key != "callbacks"}
    return {**training, **QUIET, "callbacks": [], **overrides}


def single_device_kwargs(device: torch.device) -> dict[str, Any]:
    """``accelerator`` and ``devices`` of a Trainer on exactly ``device``.

    >>> single_device_kwargs(torch.device("cuda", 1))
    {'accelerator': 'cuda', 'devices': [1]}
    >>> single_device_kwargs(torch.device("cpu"))
    {'accelerator': 'cpu', 'devices': 1}
    """
    if device.type == "cuda":
        return {"accelerator": "cuda", "devices": [device.index or 0]}
    if device.type in ("cpu", "mps"):
        return {"accelerator": device.type, "devices": 1}
    raise ValueError(
        f"Expected the fit to train on a cpu, cuda or mps device (passes run on the same one), but it used {device}."
    )


def pass_kwargs(trainer_kwargs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A pass's ``Trainer(**kwargs)``: on ``device`` (where this process's fit trained), in its precision, quiet."""
    numerics = {key: trainer_kwargs[key] for key in NUMERICS_KEYS if key in trainer_kwargs}
    return {**single_device_kwargs(device), **numerics, **QUIET}


class PerFitCallbacks:
    """Starts Lightning's per-fit callbacks among ``callbacks`` (`PER_FIT_CALLBACKS`) afresh at every fit.

    Each round's fit trains a new model (from the initial weights by default), so an ``EarlyStopping``
    must not compare it with the best score of an earlier round, nor a ``ModelCheckpoint`` keep the
    earlier rounds' best files as its top ``k``. Their states as constructed are kept and loaded back
    before every fit; checkpoint files already written stay on disk.

    Args:
        callbacks: the user's callbacks (``trainer_kwargs["callbacks"]``), as constructed.
    """

    def __init__(self, callbacks: list[Any]) -> None:
        self.fresh = [(cb, cb.state_dict()) for cb in callbacks if _is_lightning_class(cb, PER_FIT_CALLBACKS)]

    def reset(self) -> None:
        """Load every per-fit callback's constructed state back (a checkpoint callback keeps its ``dirpath``)."""
        for callback, state in self.fresh:
            if "dirpath" in state:
                state = {**state, "dirpath": callback.dirpath}
            callback.load_state_dict(copy.deepcopy(state))
