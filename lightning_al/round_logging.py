"""Log an active-learning experiment, round by round, to the user's Lightning loggers (W&B first).

One experiment is one logger run (one W&B run, one TensorBoard/CSV version), not one per round:

- every round's fit Trainer gets `RoundLogger.fit_loggers`, thin views of the user's loggers that shift
  ``step`` past the previous rounds' steps, so per-epoch training metrics of different rounds never collide;
- after each round, `RoundLogger.log_round` sends the history row's scalars as ``al/<key>`` against
  ``al/num_labelled`` (the x-axis of a learning curve), plus, on W&B, a histogram of the query's scores and a
  table of the queried samples (id, score, predicted label, oracle label, thumbnail for image inputs);
- `RoundLogger.finish` adds, on W&B, the learning curve (table and line plot) and the labelled-id history
  as an artifact.

W&B is optional: ``wandb`` is imported only when a `pytorch_lightning.loggers.WandbLogger` is used.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_al import namespace
from lightning_al._validation import check_int
from lightning_al.data.pool import resolve_task
from lightning_al.distributed import rank_zero_only
from lightning_al.oracles import Query

if TYPE_CHECKING:
    from lightning_al.tasks import Task

PREFIX = "al/"
STEP_METRIC = "al/num_labelled"
QUERY_SCORES_KEY = "al/query_scores"
QUERIED_SAMPLES_KEY = "al/queried_samples"
LEARNING_CURVE_KEY = "al/learning_curve"
LEARNING_CURVE_PLOT_KEY = "al/learning_curve_plot"
LABELLED_IDS_ARTIFACT_TYPE = "labelled-ids"
LABELLED_IDS_FILE = "labelled_ids.json"
# Thumbnails larger than this (pixels, longest side) are shrunk by area averaging.
THUMBNAIL_SIDE = 64


# ----- per-round fit loggers ---------------------------------------------------------------
_LOGGER = "loggers.Logger"


def _wandb_loggers() -> tuple[type, ...]:
    return namespace.classes("loggers.WandbLogger")


class _FitState:
    """What the fit loggers of all rounds share: the largest step logged, what was passed through once."""

    def __init__(self) -> None:
        self.last_step = -1
        self.hyperparams_logged: set[int] = set()
        self.graph_logged: set[int] = set()


class RoundFitLogger:
    """One round's view of a user's logger, for that round's fit ``Trainer``.

    ``log_metrics(metrics, step)`` goes out at ``step + step_offset``, where ``step_offset`` is one past the largest
    step any earlier round logged, so steps keep increasing across rounds. Hyperparameters and the model graph are
    passed through once per experiment. When the Trainer ends, the user's run is saved but not closed (a
    `WandbLogger` is finalized, which only uploads checkpoints when ``log_model`` asks for it). Everything
    else (``name``, ``version``, ``save_dir``, ``log_dir``, ``experiment``, logger-specific methods) is the user's
    logger's.

    Args:
        logger: the user's logger.
        index: the logger's position in `RoundLogger.loggers` (keys the once-per-experiment bookkeeping).
        step_offset: added to every step of this round.
        state: bookkeeping shared by the fit loggers of all rounds.

    `RoundLogger.fit_loggers` builds it on the ``Logger`` class of the user's logger's namespace.
    """

    def __init__(self, logger: Any, index: int, step_offset: int, state: _FitState) -> None:
        super().__init__()
        self._logger = logger
        self._index = index
        self.step_offset = step_offset
        self._state = state

    @property
    def logger(self) -> Any:
        """The user's logger this view delegates to."""
        return self._logger

    @property
    def name(self) -> str | None:
        """The user's logger's name."""
        return self._logger.name

    @property
    def version(self) -> int | str | None:
        """The user's logger's version."""
        return self._logger.version

    @property
    def root_dir(self) -> str | None:
        """The user's logger's root directory."""
        return self._logger.root_dir

    @property
    def log_dir(self) -> str | None:
        """The user's logger's log directory."""
        return self._logger.log_dir

    @property
    def save_dir(self) -> str | None:
        """The user's logger's save directory."""
        return self._logger.save_dir

    @property
    def group_separator(self) -> str:
        """The user's logger's separator of metric groups."""
        return self._logger.group_separator

    @property
    def experiment(self) -> Any:
        """The user's logger's experiment object (e.g. the W&B run)."""
        return self._logger.experiment

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log ``metrics`` to the user's logger at ``step + step_offset``."""
        if step is not None:
            step = step + self.step_offset
            self._state.last_step = max(self._state.last_step, step)
        self._logger.log_metrics(metrics, step)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Pass the hyperparameters through to the user's logger, once per experiment."""
        if self._index not in self._state.hyperparams_logged:
            self._state.hyperparams_logged.add(self._index)
            self._logger.log_hyperparams(params, *args, **kwargs)

    def log_graph(self, model: torch.nn.Module, input_array: Tensor | None = None) -> None:
        """Pass the model graph through to the user's logger, once per experiment."""
        if self._index not in self._state.graph_logged:
            self._state.graph_logged.add(self._index)
            self._logger.log_graph(model, input_array)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Forwarded to the user's logger."""
        self._logger.after_save_checkpoint(checkpoint_callback)

    def save(self) -> None:
        """Save the user's logger."""
        self._logger.save()

    def finalize(self, status: str) -> None:
        """End of the round's fit: a `WandbLogger` is finalized, any other logger only saved; no run is closed."""
        if isinstance(self._logger, _wandb_loggers()):
            self._logger.finalize(status)
        else:
            self._logger.save()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._logger, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self._logger).__name__}, step_offset={self.step_offset})"


# ----- what a round sends ------------------------------------------------------------------
def scalar_entries(row: Mapping[str, Any]) -> dict[str, int | float]:
    """The scalar entries of a history row: ints stay ints, floats and one-element tensors become numbers.

    Bools, lists (``selected_ids``, ``selected_scores``) and other non-scalars are left out.
    """
    scalars: dict[str, int | float] = {}
    for key, value in row.items():
        if isinstance(value, Tensor):
            if value.numel() != 1 or value.dtype == torch.bool:
                continue
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        scalars[key] = int(value) if isinstance(value, numbers.Integral) else float(value)
    return scalars


def image_thumbnails(inputs: Any, limit: int) -> list[Any] | None:
    """The first ``limit`` samples of an image batch as ``uint8`` numpy arrays, or None if ``inputs`` is no image batch.

    Images are ``(k, H, W)`` or ``(k, C, H, W)`` tensors with ``C`` in {1, 3}. ``uint8`` pixels are kept; floats
    within [0, 1] are scaled by 255; other values are stretched per image from their min to their max. Images whose
    longest side exceeds `THUMBNAIL_SIDE` are shrunk by area averaging. Returns ``(H, W)`` arrays for one
    channel and ``(H, W, 3)`` arrays for three.
    """
    if not isinstance(inputs, Tensor) or limit <= 0:
        return None
    x_K_C_H_W = inputs[:limit].detach().cpu()
    if x_K_C_H_W.ndim == 3:
        x_K_C_H_W = x_K_C_H_W.unsqueeze(1)
    if x_K_C_H_W.ndim != 4 or x_K_C_H_W.shape[1] not in (1, 3) or x_K_C_H_W.numel() == 0:
        return None
    is_uint8 = x_K_C_H_W.dtype == torch.uint8
    x_K_C_H_W = x_K_C_H_W.double()
    if is_uint8:
        x_K_C_H_W = x_K_C_H_W / 255
    elif not (x_K_C_H_W.min() >= 0 and x_K_C_H_W.max() <= 1):
        low = x_K_C_H_W.amin(dim=(1, 2, 3), keepdim=True)
        high = x_K_C_H_W.amax(dim=(1, 2, 3), keepdim=True)
        x_K_C_H_W = (x_K_C_H_W - low) / (high - low).clamp_min(1e-12)
    height, width = x_K_C_H_W.shape[-2:]
    if max(height, width) > THUMBNAIL_SIDE:
        scale = THUMBNAIL_SIDE / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x_K_C_H_W = F.interpolate(x_K_C_H_W, size=size, mode="area")
    pixels_K_H_W_C = (x_K_C_H_W * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return [image.squeeze(-1).numpy() if image.shape[-1] == 1 else image.numpy() for image in pixels_K_H_W_C]


def learning_curve(
    history: Sequence[Mapping[str, Any]], metric: str = "test_accuracy"
) -> tuple[list[str], list[list[Any]]]:
    """Columns ``num_labelled, <metric>, round`` (then other ``test_*`` metrics), one row per tested round."""
    rows = [scalar_entries(row) for row in history]
    rows = [row for row in rows if metric in row and "num_labelled" in row]
    extra = sorted(
        {key for row in rows for key in row if key.startswith("test_") and not key.endswith("_seconds")} - {metric}
    )
    columns = ["num_labelled", metric, "round", *extra]
    return columns, [[row.get(column) for column in columns] for row in rows]


def labelled_id_records(labelled_round: Tensor, labels: Tensor | Sequence[Any]) -> list[dict[str, Any]]:
    """``{"id", "round", "label"}`` for every labelled dataset id (``labelled_round >= 0``), by increasing id.

    ``labels`` has one entry per dataset id: a tensor of class indices, or plain values (e.g. the positive
    labels of a multi-label sample, the classes present in a mask) where labelled.
    """
    if not isinstance(labelled_round, Tensor) or labelled_round.ndim != 1 or labelled_round.is_floating_point():
        raise ValueError(
            f"Expected `labelled_round` to be an integer tensor of shape (N,), but got {labelled_round!r}."
        )
    if isinstance(labels, Sequence) and len(labels) == labelled_round.shape[0]:
        ids = torch.nonzero(labelled_round >= 0).flatten().tolist()
        return [{"id": i, "round": int(labelled_round[i]), "label": labels[i]} for i in ids]
    if not isinstance(labels, Tensor) or labels.shape != labelled_round.shape:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(
            f"Expected `labels` to have the shape of `labelled_round`, {tuple(labelled_round.shape)}, but got {shape}."
        )
    ids = torch.nonzero(labelled_round >= 0).flatten()
    return [
        {"id": i, "round": r, "label": y}
        for i, r, y in zip(ids.tolist(), labelled_round[ids].tolist(), labels[ids].tolist(), strict=True)
    ]


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """``config`` with nested mappings flattened to ``outer/inner`` keys and non-scalar values as strings."""
    params: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            params.update(flat_params(value, prefix=f"{name}/"))
        elif isinstance(value, str | int | float | bool):
            params[name] = value
        else:
            params[name] = str(value)
    return params


# ----- the experiment logger ---------------------------------------------------------------
class RoundLogger:
    """Logs an active-learning experiment to the user's loggers: one run, one point per round.

    Per round, the history row's scalars go out as ``al/<key>`` against ``al/num_labelled``. On a
    `pytorch_lightning.loggers.WandbLogger`, every ``al/*`` key is defined with ``al/num_labelled`` as its
    step metric, and each round also logs ``al/query_scores`` (histogram) and ``al/queried_samples`` (a table: id,
    score, predicted, label, image); `finish` logs ``al/learning_curve`` (table), ``al/learning_curve_plot``
    (line plot) and a ``labelled-ids`` artifact. A `pytorch_lightning.loggers.TensorBoardLogger` gets the
    scalars and a histogram of the scores; any other logger the scalars, through
    ``log_metrics(step=num_labelled)``. Everything here is logged from rank zero only.

    Args:
        loggers: the user's logger or loggers.
        max_table_rows: at most this many queried samples per round go into the W&B table.
        max_thumbnails: at most this many of them get an image thumbnail.
        task: the datamodule's task, which words the predicted and oracle labels of the table (default
            multi-class) and names the learning curve's metric.
    """

    def __init__(
        self, loggers: Any, max_table_rows: int = 1000, max_thumbnails: int = 64, task: Task | None = None
    ) -> None:
        loggers = [loggers] if isinstance(loggers, namespace.classes(_LOGGER)) else loggers
        if not isinstance(loggers, Sequence) or isinstance(loggers, str):
            raise TypeError(f"Expected `loggers` to be a Logger or a sequence of Loggers, but got {loggers!r}.")
        for logger in loggers:
            if not isinstance(logger, namespace.classes(_LOGGER)):
                raise TypeError(f"Expected `loggers` to hold Lightning Loggers, but got {type(logger).__name__}.")
        check_int("max_table_rows", max_table_rows, 1)
        check_int("max_thumbnails", max_thumbnails, 0)
        self.loggers: list[Any] = list(loggers)
        self.max_table_rows = max_table_rows
        self.max_thumbnails = max_thumbnails
        self.task = resolve_task(task, None)
        self._fit_state = _FitState()
        self._wandb_defined: set[tuple[int, str]] = set()

    # ----- the loop's calls --------------------------------------------------------------
    @rank_zero_only
    def start(self, config: Mapping[str, Any]) -> None:
        """Log the loop's configuration as hyperparameters; on W&B, make ``al/num_labelled`` the x-axis of ``al/*``."""
        if not isinstance(config, Mapping):
            raise TypeError(f"Expected `config` to be a mapping, but got {type(config).__name__}.")
        params = flat_params(config)
        for index, logger in enumerate(self.loggers):
            logger.log_hyperparams(params)
            if isinstance(logger, _wandb_loggers()):
                self._define_wandb_axis(index, logger.experiment)

    def fit_loggers(self, round: int) -> list[Any]:
        """Loggers for round ``round``'s fit Trainer: views that continue the steps of earlier rounds."""
        check_int("round", round, 0)
        offset = self._fit_state.last_step + 1
        return [
            namespace.subclass(RoundFitLogger, namespace.namespace_of(logger, "logger", _LOGGER), _LOGGER)(
                logger, index, offset, self._fit_state
            )
            for index, logger in enumerate(self.loggers)
        ]

    @rank_zero_only
    def log_round(
        self,
        row: Mapping[str, Any],
        query: Query | None = None,
        labels: Tensor | None = None,
        inputs: Any = None,
    ) -> None:
        """Log one history row (scalars as ``al/<key>``) and, if given, the round's query (see the class notes).

        Args:
            row: the round's history row; needs a scalar ``num_labelled``.
            query: the round's query.
            labels: the oracle's labels of ``query.ids``, one per id along dim 0.
            inputs: the queried samples' model inputs (e.g. ``(k, C, H, W)`` images, for thumbnails).
        """
        if not isinstance(row, Mapping):
            raise TypeError(f"Expected `row` to be a history dict, but got {type(row).__name__}.")
        scalars = scalar_entries(row)
        if "num_labelled" not in scalars:
            raise ValueError(f"Expected `row` to have a scalar 'num_labelled' entry, but got keys {sorted(row)}.")
        self._check_query(query, labels, inputs)
        step = int(scalars["num_labelled"])
        metrics = {f"{PREFIX}{key}": value for key, value in scalars.items()}
        for index, logger in enumerate(self.loggers):
            if isinstance(logger, _wandb_loggers()):
                self._log_round_wandb(index, logger, metrics, query, labels, inputs)
                continue
            logger.log_metrics(metrics, step=step)
            scores = _finite_scores(query)
            if isinstance(logger, namespace.classes("loggers.TensorBoardLogger")) and scores is not None:
                logger.experiment.add_histogram(QUERY_SCORES_KEY, scores, global_step=step)

    @rank_zero_only
    def finish(
        self, history: Sequence[Mapping[str, Any]], labelled_round: Tensor, labels: Tensor | Sequence[Any]
    ) -> None:
        """Log the learning curve and the labelled-id history (W&B), then save every logger. Runs stay open."""
        records = labelled_id_records(labelled_round, labels)
        for index, logger in enumerate(self.loggers):
            if isinstance(logger, _wandb_loggers()):
                self._finish_wandb(index, logger, history, records)
            logger.save()

    # ----- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The largest training step logged so far (the next round's fit continues after it)."""
        return {"last_fit_step": self._fit_state.last_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the step saved by `state_dict`."""
        self._fit_state.last_step = int(state["last_fit_step"])

    # ----- W&B ---------------------------------------------------------------------------
    def _define_wandb_axis(self, index: int, run: Any) -> None:
        """Make ``al/num_labelled`` a metric and the step metric of every ``al/*`` key (once per run)."""
        if (index, STEP_METRIC) not in self._wandb_defined:
            run.define_metric(STEP_METRIC)
            run.define_metric(f"{PREFIX}*", step_metric=STEP_METRIC)
            self._wandb_defined.add((index, STEP_METRIC))

    def _log_wandb(self, index: int, run: Any, payload: dict[str, Any], keys: Sequence[str] | None = None) -> None:
        """``run.log(payload)``, with its new keys (or the history keys ``keys``) defined against ``al/num_labelled``.

        Defining each key by name, not only through the ``al/*`` glob, keeps the x-axis when another glob (such as
        the ``*`` that `WandbLogger` defines for ``trainer/global_step``) also matches.
        """
        self._define_wandb_axis(index, run)
        for key in payload if keys is None else keys:
            if (index, key) not in self._wandb_defined:
                run.define_metric(key, step_metric=STEP_METRIC)
                self._wandb_defined.add((index, key))
        run.log(payload)

    def _log_round_wandb(
        self,
        index: int,
        logger: Any,
        metrics: dict[str, int | float],
        query: Query | None,
        labels: Tensor | None,
        inputs: Any,
    ) -> None:
        import wandb

        payload: dict[str, Any] = dict(metrics)
        if query is not None:
            scores = _finite_scores(query)
            if scores is not None:
                payload[QUERY_SCORES_KEY] = wandb.Histogram(scores.numpy())
            payload[QUERIED_SAMPLES_KEY] = self._queried_table(wandb, query, labels, inputs)
        self._log_wandb(index, logger.experiment, payload)

    def _queried_table(self, wandb: Any, query: Query, labels: Tensor | None, inputs: Any) -> Any:
        """A ``wandb.Table`` with one row per queried sample (at most ``max_table_rows``), in query order."""
        rows = min(query.ids.numel(), self.max_table_rows)
        columns: dict[str, list[Any]] = {"id": query.ids[:rows].tolist()}
        if query.scores is not None:
            columns["score"] = [float(s) if torch.isfinite(s) else None for s in query.scores[:rows].double()]
        if query.predicted is not None:
            columns["predicted"] = self.task.describe(query.predicted[:rows])
        if labels is not None:
            columns["label"] = self.task.describe(labels[:rows])
        thumbnails = image_thumbnails(inputs, min(rows, self.max_thumbnails))
        if thumbnails is not None:
            images = [wandb.Image(pixels) for pixels in thumbnails]
            columns["image"] = images + [None] * (rows - len(images))
        data = [list(values) for values in zip(*columns.values(), strict=True)]
        return wandb.Table(columns=list(columns), data=data)

    def _finish_wandb(
        self, index: int, logger: Any, history: Sequence[Mapping[str, Any]], records: list[dict[str, int]]
    ) -> None:
        import wandb

        run = logger.experiment
        columns, rows = learning_curve(history, self.task.metric)
        if rows:
            table = wandb.Table(columns=columns, data=rows)
            chart = wandb.plot.line(table, "num_labelled", self.task.metric, title="Learning curve")
            # a chart logged as "<key>" is stored in history as its table, "<key>_table"
            keys = (LEARNING_CURVE_KEY, f"{LEARNING_CURVE_PLOT_KEY}_table")
            # logged at the last x explicitly: W&B's own step sync does not always fill it in offline runs
            last_x = rows[-1][columns.index("num_labelled")]
            payload = {STEP_METRIC: last_x, LEARNING_CURVE_KEY: table, LEARNING_CURVE_PLOT_KEY: chart}
            self._log_wandb(index, run, payload, keys)
        metadata = {"num_labelled": len(records), "last_round": max((r["round"] for r in records), default=-1)}
        artifact = wandb.Artifact(f"labelled-ids-{run.id}", type=LABELLED_IDS_ARTIFACT_TYPE, metadata=metadata)
        with artifact.new_file(LABELLED_IDS_FILE, mode="w") as handle:
            json.dump(records, handle)
        run.log_artifact(artifact)

    # ----- checks ------------------------------------------------------------------------
    @staticmethod
    def _check_query(query: Query | None, labels: Tensor | None, inputs: Any) -> None:
        if query is None:
            if labels is not None or inputs is not None:
                raise ValueError("Expected a `query` with the `labels` or `inputs` it was asked about, but got None.")
            return
        if not isinstance(query, Query):
            raise TypeError(f"Expected `query` to be a lightning_al Query, but got {type(query).__name__}.")
        k = query.ids.numel()
        for name, value in (("query.scores", query.scores), ("query.predicted", query.predicted), ("labels", labels)):
            # scores: one per id; predictions and labels: one per id along dim 0 (vectors, masks)
            ok = isinstance(value, Tensor) and value.shape[:1] == (k,) and (name != "query.scores" or value.ndim == 1)
            if name == "labels" and isinstance(value, list):
                ok = len(value) == k
            if value is not None and not ok:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"Expected `{name}` to have shape ({k},), one entry per queried id, but got {shape}.")
        if isinstance(inputs, Tensor) and (inputs.ndim == 0 or inputs.shape[0] != k):
            raise ValueError(
                f"Expected `inputs` to hold the {k} queried samples along dim 0, but got shape {tuple(inputs.shape)}."
            )


def _finite_scores(query: Query | None) -> Tensor | None:
    """The query's finite scores as a CPU double tensor, or None when there are none."""
    if query is None or query.scores is None:
        return None
    scores = query.scores.detach().cpu().double()
    scores = scores[torch.isfinite(scores)]
    return scores if scores.numel() else None
