"""Running an estimator over a dataloader through Lightning's ``Trainer.predict``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_al.data.batches import batch_ids, move_indexed_batch
from lightning_al.estimators import Estimator
from lightning_al.outputs import PoolOutputs

TARGETS = "targets"


class _Scorer(pl.LightningModule):
    """Wraps the user's model so that ``predict_step`` returns the estimator's outputs and ids."""

    def __init__(
        self,
        model: nn.Module,
        estimator: Estimator,
        needs: frozenset[str],
        inputs: Callable[[Any], Any],
        targets: Callable[[Any], Tensor] | None,
    ) -> None:
        super().__init__()
        self.model = model
        self.estimator_modules = nn.ModuleList(estimator.modules())
        self.estimator, self.needs = estimator, needs
        self.inputs, self.targets = inputs, targets

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        ids = batch_ids(batch)
        if self.estimator.needs_ids:
            values = self.estimator.predict(self.model, self.inputs(batch), self.needs, ids=ids)
        else:
            values = self.estimator.predict(self.model, self.inputs(batch), self.needs)
        out = {name: values[name].detach().cpu() for name in self.needs}
        out["ids"] = ids.cpu()
        if self.targets is not None:
            out[TARGETS] = self.targets(batch).cpu()
        return out

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return move_indexed_batch(batch, device)


def predict_outputs(
    trainer: pl.Trainer,
    model: nn.Module,
    loader: DataLoader,
    estimator: Estimator,
    needs: frozenset[str],
    inputs: Callable[[Any], Any],
    targets: Callable[[Any], Tensor] | None = None,
) -> PoolOutputs:
    """Outputs ``needs`` (plus ``"targets"`` if ``targets`` is given) for every sample of ``loader``.

    Values whose rows are not finite are refused with the offending dataset ids.
    """
    missing = needs - estimator.provides
    if missing:
        raise ValueError(
            f"Expected the estimator {type(estimator).__name__} to provide {sorted(needs)}, "
            f"but it provides only {sorted(estimator.provides)} (missing {sorted(missing)})."
        )
    batches = trainer.predict(_Scorer(model, estimator, needs, inputs, targets), dataloaders=loader) or []
    names = [*sorted(needs), *([TARGETS] if targets is not None else [])]
    if not batches:
        return PoolOutputs(ids=torch.empty(0, dtype=torch.long))
    ids = torch.cat([b["ids"] for b in batches])
    values = {name: torch.cat([b[name] for b in batches]) for name in names}
    for name, value in values.items():
        if value.is_floating_point():
            bad = ~torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1)
            if bad.any():
                raise ValueError(
                    f"Expected finite model outputs, but {name!r} is NaN or inf for dataset ids "
                    f"{ids[bad][:10].tolist()}{' and more' if int(bad.sum()) > 10 else ''}."
                )
    return PoolOutputs(ids=ids, values=values)
