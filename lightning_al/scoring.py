"""Running an estimator over a dataloader through Lightning's ``Trainer.predict``.

Two ways to collect the results:

- :func:`predict_outputs` keeps every requested output of every sample (``(N, C)`` probabilities,
  ``(N, T, C)`` MC samples, ``(N, D)`` embeddings) on the host, for strategies that look at the
  whole pool at once (BADGE, core-set, BatchBALD, ...).
- :func:`stream_top_k` turns each batch's outputs into one score per sample as soon as the batch is
  predicted and keeps only a running top ``k``: host memory is ``O(k)`` and the ``(N, T, C)``
  tensor never exists. It serves strategies whose score of a sample depends on that sample alone
  (:attr:`~lightning_al.strategies.base.ScoreStrategy.streamable`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_al.data.batches import batch_ids, move_indexed_batch
from lightning_al.estimators import Estimator
from lightning_al.functional._checks import check_scores
from lightning_al.outputs import PoolOutputs

TARGETS = "targets"

# A batch's outputs (ids plus named values) → one score per sample, shape (B,).
BatchScorer = Callable[[PoolOutputs], Tensor]


def top_k_by_score(ids_N: Tensor, scores_N: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` highest scores and their ids, highest first; equal scores go to the lower id.

    This is :func:`~lightning_al.functional.topk_select` on scores laid out in ascending id order,
    for scores in any order (batches of a stream, shards of several ranks).

    Args:
        ids_N: ``LongTensor[N]`` of distinct dataset ids.
        scores_N: ``(N,)`` finite scores aligned with ``ids_N``.
        k: how many to keep; fewer are returned when ``N < k``.

    Returns:
        ``(ids_K, scores_K)`` with ``K = min(k, N)``.
    """
    by_id = torch.argsort(ids_N)
    by_score = torch.sort(scores_N[by_id], descending=True, stable=True).indices[:k]
    keep = by_id[by_score]
    return ids_N[keep], scores_N[keep]


class RunningTopK:
    """The ``k`` best ``(score, id)`` pairs of a stream of batches, ranked as :func:`top_k_by_score`.

    Memory is ``O(k + B)`` whatever the number of batches; ``count`` is the number of samples seen.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.count = 0
        self.ids = torch.empty(0, dtype=torch.long)
        self.scores: Tensor | None = None

    def update(self, ids_B: Tensor, scores_B: Tensor) -> None:
        ids_B, scores_B = ids_B.detach().cpu(), scores_B.detach().cpu()
        self.count += int(ids_B.numel())
        if self.scores is None:
            self.ids, self.scores = top_k_by_score(ids_B, scores_B, self.k)
            return
        dtype = torch.promote_types(self.scores.dtype, scores_B.dtype)
        self.ids, self.scores = top_k_by_score(
            torch.cat([self.ids, ids_B]), torch.cat([self.scores.to(dtype), scores_B.to(dtype)]), self.k
        )

    def result(self) -> tuple[Tensor, Tensor]:
        """``(ids_K, scores_K)``, highest score first."""
        return self.ids, self.scores if self.scores is not None else torch.empty(0)


def _refuse_non_finite(ids: Tensor, values: dict[str, Tensor]) -> None:
    """Refuse values whose rows are not finite, naming the offending dataset ids."""
    for name, value in values.items():
        if value.is_floating_point():
            bad = ~torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1)
            if bad.any():
                bad = bad.cpu()
                raise ValueError(
                    f"Expected finite model outputs, but {name!r} is NaN or inf for dataset ids "
                    f"{ids.cpu()[bad][:10].tolist()}{' and more' if int(bad.sum()) > 10 else ''}."
                )


class _Scorer(pl.LightningModule):
    """Wraps the user's model so that ``predict_step`` returns the estimator's outputs and ids.

    With a ``top_k`` and a ``scorer``, each batch is scored on the device and only the running
    top ``k`` is kept; ``predict_step`` then returns nothing.
    """

    def __init__(
        self,
        model: nn.Module,
        estimator: Estimator,
        needs: frozenset[str],
        inputs: Callable[[Any], Any],
        targets: Callable[[Any], Tensor] | None,
        scorer: BatchScorer | None = None,
        top_k: RunningTopK | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.estimator_modules = nn.ModuleList(estimator.modules())
        self.estimator, self.needs = estimator, needs
        self.inputs, self.targets = inputs, targets
        self.scorer, self.top_k = scorer, top_k

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor] | None:
        ids = batch_ids(batch)
        if self.estimator.needs_ids:
            values = self.estimator.predict(self.model, self.inputs(batch), self.needs, ids=ids)
        else:
            values = self.estimator.predict(self.model, self.inputs(batch), self.needs)
        values = {name: values[name].detach() for name in self.needs}
        if self.scorer is not None and self.top_k is not None:
            _refuse_non_finite(ids, values)
            scores = self.scorer(PoolOutputs(ids=ids, values=values))
            check_scores("scores", scores)
            self.top_k.update(ids, scores)
            return None
        out = {name: value.cpu() for name, value in values.items()}
        out["ids"] = ids.cpu()
        if self.targets is not None:
            out[TARGETS] = self.targets(batch).cpu()
        return out

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return move_indexed_batch(batch, device)


def _check_provides(estimator: Estimator, needs: frozenset[str]) -> None:
    missing = needs - estimator.provides
    if missing:
        raise ValueError(
            f"Expected the estimator {type(estimator).__name__} to provide {sorted(needs)}, "
            f"but it provides only {sorted(estimator.provides)} (missing {sorted(missing)})."
        )


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
    _check_provides(estimator, needs)
    batches = trainer.predict(_Scorer(model, estimator, needs, inputs, targets), dataloaders=loader) or []
    names = [*sorted(needs), *([TARGETS] if targets is not None else [])]
    if not batches:
        return PoolOutputs(ids=torch.empty(0, dtype=torch.long))
    ids = torch.cat([b["ids"] for b in batches])
    values = {name: torch.cat([b[name] for b in batches]) for name in names}
    _refuse_non_finite(ids, values)
    return PoolOutputs(ids=ids, values=values)


def stream_top_k(
    trainer: pl.Trainer,
    model: nn.Module,
    loader: DataLoader,
    estimator: Estimator,
    needs: frozenset[str],
    inputs: Callable[[Any], Any],
    scorer: BatchScorer,
    k: int,
) -> RunningTopK:
    """Score every sample of ``loader`` batch by batch and keep the ``k`` best (see :class:`RunningTopK`).

    ``scorer`` receives each batch's outputs ``needs`` as :class:`PoolOutputs` (on the scoring
    device) and returns its ``(B,)`` scores; higher = query first. Outputs or scores that are not
    finite are refused with the offending dataset ids.
    """
    _check_provides(estimator, needs)
    top_k = RunningTopK(k)
    with warnings.catch_warnings():  # predict_step returns nothing on purpose: the scores stay in top_k
        warnings.filterwarnings("ignore", message=".*predict returned None.*")
        trainer.predict(
            _Scorer(model, estimator, needs, inputs, None, scorer=scorer, top_k=top_k),
            dataloaders=loader,
            return_predictions=False,
        )
    return top_k
