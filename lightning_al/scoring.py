"""Running an estimator over a dataloader: the test and scoring passes.

A pass runs where and how a one-device ``Trainer`` would predict (its device, its precision plugin's module
and input conversion and forward context, inference mode, every module in eval mode and then back), without
the prediction loop's per-call set-up, which costs more than a small model's whole pass.

Two ways to collect the results:

- `predict_outputs` keeps every requested output of every sample (``(N, C)`` probabilities,
  ``(N, T, C)`` MC samples, ``(N, D)`` embeddings) on the host, for strategies that look at the
  whole pool at once (BADGE, core-set, BatchBALD, ...). Each batch is copied into host tensors
  allocated once for the whole loader (`_HostOutputs`), so the pool's outputs exist once on
  the host, never as a list of batches plus their concatenation; embeddings can be cast to half
  precision on the scoring device before they leave it.
- `stream_top_k` turns each batch's outputs into one score per sample as soon as the batch is
  predicted and keeps only a running top ``k``: host memory is ``O(k)`` and the ``(N, T, C)``
  tensor never exists. It serves strategies whose score of a sample depends on that sample alone
  (`lightning_al.strategies.base.ScoreStrategy.streamable`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_al.data.batches import batch_ids, keep_ids_through_input_conversion, move_indexed_batch
from lightning_al.estimators import Estimator
from lightning_al.functional._checks import check_scores
from lightning_al.outputs import EMBEDDINGS, PROBS, VALID, PoolOutputs

TARGETS = "targets"
_IDS = "ids"

# A batch's outputs (ids plus named values) → one score per sample, shape (B,).
BatchScorer = Callable[[PoolOutputs], Tensor]


def top_k_by_score(ids_N: Tensor, scores_N: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` highest scores and their ids, highest first; equal scores go to the lower id.

    This is `lightning_al.functional.topk_select` on scores laid out in ascending id order,
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
    """The ``k`` best ``(score, id)`` pairs of a stream of batches, ranked as `top_k_by_score`.

    Memory is ``O(k + B)`` whatever the number of batches; ``count`` is the number of samples seen.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.count = 0
        self.ids = torch.empty(0, dtype=torch.long)
        self.scores: Tensor | None = None

    def update(self, ids_B: Tensor, scores_B: Tensor) -> None:
        """Merge one batch, dataset ids ``(B,)`` and their scores ``(B,)``, into the running top ``k``."""
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


def _non_finite_ids(ids: Tensor, value_B: Tensor) -> str | None:
    """The dataset ids (first 10) of rows of ``value_B`` holding NaN or inf, as text; None if every row is finite."""
    if value_B.numel() == 0 or bool(torch.isfinite(value_B.sum())):  # one pass: NaN and inf reach the sum
        return None
    bad = ~torch.isfinite(value_B.reshape(value_B.shape[0], -1)).all(dim=1)
    if not bad.any():  # the sum overflowed, no value did
        return None
    bad = bad.cpu()
    return f"{ids.cpu()[bad][:10].tolist()}{' and more' if int(bad.sum()) > 10 else ''}"


def _refuse_non_finite(ids: Tensor, values: dict[str, Tensor]) -> None:
    """Refuse values whose rows are not finite, naming the offending dataset ids."""
    for name, value in values.items():
        bad_ids = _non_finite_ids(ids, value) if value.is_floating_point() else None
        if bad_ids is not None:
            raise ValueError(f"Expected finite model outputs, but {name!r} is NaN or inf for dataset ids {bad_ids}.")


def _cast_embeddings(ids: Tensor, embeddings_B_D: Tensor, dtype: torch.dtype) -> Tensor:
    """``embeddings_B_D`` in ``dtype``, refusing rows whose finite values overflow its range."""
    cast_B_D = embeddings_B_D.to(dtype)
    bad_ids = _non_finite_ids(ids, cast_B_D)
    if bad_ids is not None:
        raise ValueError(
            f"Expected the embeddings to fit in `embedding_dtype` {str(dtype).removeprefix('torch.')} "
            f"(largest magnitude {torch.finfo(dtype).max:.6g}), but they overflow it for dataset ids "
            f"{bad_ids}. Use 'bfloat16' or 'float32'."
        )
    return cast_B_D


class _HostOutputs:
    """Named per-sample tensors filled batch by batch into host tensors allocated once.

    The first batch fixes each output's dtype and trailing shape; ``reserve(num_samples)`` sizes the
    tensors for the whole loader (the samples this process predicts). Should more samples arrive, the
    tensors grow by doubling; should fewer, ``result`` returns copies of the filled rows.
    """

    def __init__(self) -> None:
        self.capacity = 0
        self.count = 0
        self.tensors: dict[str, Tensor] = {}

    def reserve(self, num_samples: int) -> None:
        self.capacity = max(self.capacity, num_samples)

    def _allocate(self, batch: dict[str, Tensor], capacity: int) -> None:
        grown = {
            name: torch.empty((capacity, *value.shape[1:]), dtype=value.dtype, device="cpu")
            for name, value in batch.items()
        }
        for name, tensor in self.tensors.items():
            grown[name][: self.count] = tensor[: self.count]
        self.tensors, self.capacity = grown, capacity

    def add(self, batch: dict[str, Tensor]) -> None:
        """Copy ``batch`` (named ``(B, ...)`` tensors on any device) after the rows filled so far."""
        size = int(batch[_IDS].shape[0])
        if not self.tensors or self.count + size > self.capacity:
            self._allocate(batch, max(self.capacity if not self.tensors else 2 * self.capacity, self.count + size))
        for name, value in batch.items():
            rows = self.tensors[name][self.count : self.count + size]
            if value.shape != rows.shape:
                raise ValueError(
                    f"Expected output {name!r} to have shape {(size, *rows.shape[1:])} in every batch, "
                    f"but got {tuple(value.shape)}."
                )
            rows.copy_(value)
        self.count += size

    def result(self) -> dict[str, Tensor]:
        if self.count == self.capacity:
            return self.tensors
        return {name: tensor[: self.count].clone() for name, tensor in self.tensors.items()}


def _num_samples(loader: Any) -> int | None:
    """Samples ``loader`` yields, from its sampler (or dataset) length; None when it has none."""
    for sized in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        try:
            return len(sized)  # type: ignore[arg-type]
        except TypeError:
            continue
    return None


# Receives each predicted batch: its dataset ids, the estimator's outputs (detached, finite) and the batch.
BatchSink = Callable[[Tensor, dict[str, Tensor], Any], None]


class _Scorer(nn.Module):
    """The user's model and the estimator's modules, whose `predict_step` hands each batch's outputs to ``sink``.

    The sink keeps what it needs: a host copy (`predict_outputs`), a running top ``k`` (`stream_top_k`) or
    metric states (`stream_metrics`). With ``host``, its tensors are sized for the loader when the pass starts.
    """

    def __init__(
        self,
        model: nn.Module,
        estimator: Estimator,
        needs: frozenset[str],
        inputs: Callable[[Any], Any],
        sink: BatchSink,
        host: _HostOutputs | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.estimator_modules = nn.ModuleList(estimator.modules())
        self.estimator, self.needs = estimator, needs
        self.inputs, self.sink, self.host = inputs, sink, host

    def predict_step(self, batch: Any) -> None:
        """The estimator's outputs of ``batch`` (on the device), checked finite, to the sink."""
        ids = batch_ids(batch)
        if self.estimator.needs_ids:
            values = self.estimator.predict(self.model, self.inputs(batch), self.needs, ids=ids)
        else:
            values = self.estimator.predict(self.model, self.inputs(batch), self.needs)
        values = {name: values[name].detach() for name in self.needs}
        _refuse_non_finite(ids, values)
        valid = self.estimator.task.valid_region(batch)
        if valid is not None:
            values[VALID] = valid
        self.sink(ids, values, batch)


def _check_provides(estimator: Estimator, needs: frozenset[str]) -> None:
    missing = needs - estimator.provides
    if missing:
        raise ValueError(
            f"Expected the estimator {type(estimator).__name__} to provide {sorted(needs)}, "
            f"but it provides only {sorted(estimator.provides)} (missing {sorted(missing)})."
        )


def _batch_limit(trainer: Any, loader: DataLoader) -> int | None:
    """The batches of ``loader`` a pass runs: ``trainer``'s ``limit_predict_batches`` (a count or a fraction)."""
    limit = getattr(trainer, "limit_predict_batches", 1.0)
    if isinstance(limit, int) and not isinstance(limit, bool):
        return limit
    if limit is None or float(limit) >= 1.0:
        return None
    return int(len(loader) * float(limit))


def _run_pass(trainer: Any, scorer: _Scorer, loader: DataLoader) -> None:
    """``scorer.predict_step`` on every batch of ``loader``, as ``trainer.predict`` would run it on one device.

    The modules are converted by the precision plugin (in place, as a fit converts them), moved to the
    Trainer's device in eval mode, and moved back to the CPU with their modes restored afterwards (as
    Lightning's teardown does); each batch is converted by the plugin and moved with its ids, and the
    steps run in inference mode within the plugin's forward context (autocast for mixed precision).
    The Trainer's ``limit_predict_batches`` applies.
    """
    device = trainer.strategy.root_device
    plugin = trainer.precision_plugin
    keep_ids_through_input_conversion(trainer)
    plugin.convert_module(scorer)
    modes = {module: module.training for module in scorer.modules()}
    scorer.to(device).eval()
    try:
        if scorer.host is not None:
            num_samples = _num_samples(loader)
            if num_samples is not None:
                scorer.host.reserve(num_samples)
        with torch.inference_mode(), plugin.forward_context():
            for batch in itertools.islice(loader, _batch_limit(trainer, loader)):
                scorer.predict_step(move_indexed_batch(plugin.convert_input(batch), device))
    finally:
        for module, training in modes.items():
            module.train(training)
        if device.type != "cpu":
            scorer.cpu()


def predict_outputs(
    trainer: Any,
    model: nn.Module,
    loader: DataLoader,
    estimator: Estimator,
    needs: frozenset[str],
    inputs: Callable[[Any], Any],
    targets: Callable[[Any], Tensor] | None = None,
    embedding_dtype: torch.dtype | None = None,
) -> PoolOutputs:
    """Outputs ``needs`` (plus ``"targets"`` if ``targets`` is given) for every sample of ``loader``, on the host.

    Each batch is copied into host tensors sized once for the loader (no list of batches, no
    concatenation): host memory is the outputs themselves. With ``embedding_dtype`` (e.g.
    ``torch.float16``), the ``embeddings`` output is cast to it batch by batch on the scoring device,
    so its full-precision values never reach the host; other outputs keep the estimator's dtype.

    Values whose rows are not finite are refused with the offending dataset ids, and so are
    embeddings that overflow ``embedding_dtype``. The pass (`_run_pass`) runs ``estimator`` on ``model`` for every
    batch of ``loader``; ``inputs`` picks a batch's model input and ``targets`` its target.
    """
    _check_provides(estimator, needs)
    host = _HostOutputs()

    def keep(ids: Tensor, values: dict[str, Tensor], batch: Any) -> None:
        if embedding_dtype is not None and EMBEDDINGS in values:
            values[EMBEDDINGS] = _cast_embeddings(ids, values[EMBEDDINGS], embedding_dtype)
        if targets is not None:
            values[TARGETS] = targets(batch)
            _refuse_non_finite(ids, {TARGETS: values[TARGETS]})
        values[_IDS] = ids
        host.add(values)

    _run_pass(trainer, _Scorer(model, estimator, needs, inputs, keep, host=host), loader)
    if not host.count:
        return PoolOutputs(ids=torch.empty(0, dtype=torch.long), task=estimator.task)
    values = host.result()
    return PoolOutputs(ids=values.pop(_IDS), values=values, task=estimator.task)


def stream_top_k(
    trainer: Any,
    model: nn.Module,
    loader: DataLoader,
    estimator: Estimator,
    needs: frozenset[str],
    inputs: Callable[[Any], Any],
    scorer: BatchScorer,
    k: int,
) -> RunningTopK:
    """Score every sample of ``loader`` batch by batch and keep the ``k`` best (see `RunningTopK`).

    ``scorer`` receives each batch's outputs ``needs`` as `PoolOutputs` (on the scoring
    device) and returns its ``(B,)`` scores; higher = query first. Outputs or scores that are not
    finite are refused with the offending dataset ids. The pass (`_run_pass`) runs ``estimator`` on ``model`` for
    every batch of ``loader``; ``inputs`` picks a batch's model input.
    """
    _check_provides(estimator, needs)
    top_k = RunningTopK(k)

    def rank(ids: Tensor, values: dict[str, Tensor], batch: Any) -> None:
        scores = scorer(PoolOutputs(ids=ids, values=values, task=estimator.task))
        check_scores("scores", scores)
        top_k.update(ids, scores)

    _run_pass(trainer, _Scorer(model, estimator, needs, inputs, rank), loader)
    return top_k


def stream_metrics(
    trainer: Any,
    model: nn.Module,
    loader: DataLoader,
    estimator: Estimator,
    inputs: Callable[[Any], Any],
    targets: Callable[[Any], Tensor],
) -> dict[str, float]:
    """The task's test metrics (`lightning_al.tasks.Task.metrics`) over ``loader``, updated batch by batch.

    Only the metrics' states are kept (a confusion matrix for mean IoU), never the probabilities of the
    whole set. Nothing is reduced across processes: each rank measures the loader it is given.
    The pass (`_run_pass`) runs ``estimator`` on ``model`` for every batch of ``loader``; ``inputs`` picks a
    batch's model input and ``targets`` its target.
    """
    task = estimator.task
    metrics: dict[str, Any] = {}

    def update(ids: Tensor, values: dict[str, Tensor], batch: Any) -> None:
        probs = values[PROBS]
        if not metrics:
            metrics.update({name: metric.to(probs.device) for name, metric in task.metrics(probs).items()})
            for metric in metrics.values():
                metric.sync_on_compute = False  # every rank tests the whole set itself
        batch_targets = task.metric_targets(targets(batch).to(probs.device))
        for metric in metrics.values():
            metric.update(probs, batch_targets)

    needs = frozenset({PROBS})
    _check_provides(estimator, needs)
    _run_pass(trainer, _Scorer(model, estimator, needs, inputs, update), loader)
    return {name: float(metric.compute()) for name, metric in metrics.items()}
