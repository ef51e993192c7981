"""Adding a term to an unmodified model's training loss from a callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lightning_al.namespace import Callback

if TYPE_CHECKING:
    import pytorch_lightning as pl


_NOT_SET = object()

StepFn = Callable[..., Any]


class TrainingStepPatch:
    """Replace a LightningModule's ``training_step`` on the instance only, and put back exactly what was there.

    Lightning looks ``training_step`` up on the module instance, so a callback that wraps it
    at ``on_fit_start`` takes part in the automatic optimisation (and its precision and
    strategy) like the user's own loss. The class is never touched; an instance-level
    override the user had is restored as it was.
    """

    def __init__(self) -> None:
        self.module: pl.LightningModule | None = None
        self._shadowed: Any = _NOT_SET

    def install(self, module: pl.LightningModule, wrap: Callable[[StepFn], StepFn]) -> None:
        """Set ``module.training_step = wrap(current training_step)``."""
        self.restore()
        original = module.training_step
        self._shadowed = module.__dict__.get("training_step", _NOT_SET)
        module.training_step = wrap(original)  # type: ignore[method-assign]
        self.module = module

    def restore(self) -> None:
        """Put back the module's own ``training_step`` (a no-op when nothing is installed)."""
        if self.module is None:
            return
        if self._shadowed is _NOT_SET:
            self.module.__dict__.pop("training_step", None)
        else:
            self.module.__dict__["training_step"] = self._shadowed
        self.module, self._shadowed = None, _NOT_SET


class RestoresTrainingStep(Callback):
    """Base of callbacks that patch ``training_step``: ``_restore()`` runs however the fit ends."""

    def _restore(self) -> None:
        raise NotImplementedError

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()
