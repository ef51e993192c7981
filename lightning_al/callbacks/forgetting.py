"""Example forgetting (Toneva et al. 2019) counted during training, per dataset id."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_al.data.batches import batch_ids
from lightning_al.model_call import call_model, logits_of
from lightning_al.namespace import Callback

if TYPE_CHECKING:
    import pytorch_lightning as pl

# Column of a presentation in the transition counts: 2 * (correct at the previous presentation) + (correct now).
_LEARNED, _FORGOTTEN, _KEPT = 1, 2, 3  # incorrect → correct, correct → incorrect, correct → correct
_NUM_TRANSITIONS = 4
# The kept batches are counted at the latest after this many batches, or once their logits hold this many numbers.
_MAX_PENDING_BATCHES = 256
_MAX_PENDING_LOGITS = 1 << 22
_STATISTIC_NAMES = ("last_correct", "ever_correct", "forgetting", "presentations")


class ForgettingCallback(Callback):
    """Count forgetting events of every training sample (Toneva et al. 2019, "An Empirical
    Study of Example Forgetting during Deep Neural Network Learning").

    At every presentation of a sample, its correctness (``argmax`` of the logits equals the
    target) is compared with its correctness at its previous presentation; a correct →
    incorrect transition is a forgetting event (see
    `lightning_al.functional.dynamics.forgetting_counts`).

    **Which prediction is recorded.** As in the paper, the prediction made *at presentation*:
    a forward hook on the LightningModule captures the logits of the training step's own
    ``self(x)`` call (training mode, before the optimiser step), so the statistic costs no
    extra forward. If the step produced no ``(B, C)`` output through ``forward`` (e.g. the
    ``training_step`` calls a submodule directly), the callback falls back to one extra
    forward of the batch under ``no_grad`` after the step, in the module's current mode.

    **State**, for the ``N = trainer.datamodule.pool.size`` dataset ids, on the module's device
    (allocated at the first fit and kept across fits unless ``reset_each_fit``): the transition
    counts ``LongTensor[N, 4]``, where column ``2 * previous + current`` counts the presentations
    at which correctness went from ``previous`` (False before the first presentation) to
    ``current``, and the correctness at the last presentation ``BoolTensor[N]``. The statistics
    derive from them:

        forgetting    = transitions[:, 2]                        (correct → incorrect)
        presentations = transitions.sum(dim=1)
        ever_correct  = transitions[:, 1] + transitions[:, 3] > 0

    **Cost.** A training batch only keeps references to its ids, targets and (detached) logits;
    they are counted together by `record_presentations` (one sort, no loop over batches,
    no host synchronisation) at the end of every epoch, every 256 batches, or once the kept
    logits hold 2**22 numbers, and whenever the statistics are read. A dataset id repeated
    within one batch counts as presented once per occurrence, with the occurrences compared
    against the state before the batch; ``last_correct`` takes the last occurrence.

    Under DDP every rank counts its own batches; at the end of each training epoch the ranks
    exchange this epoch's increments (summed) and last correctness (see
    `merge_rank_transitions`), so all ranks agree.

    Args:
        reset_each_fit: clear the statistics at the start of every fit (e.g. every active
            learning round) instead of accumulating them across fits.
    """

    def __init__(self, reset_each_fit: bool = False) -> None:
        if not isinstance(reset_each_fit, bool):
            raise TypeError(f"Expected `reset_each_fit` to be a bool, but got {type(reset_each_fit).__name__}.")
        self.reset_each_fit = reset_each_fit
        self._transitions: Tensor | None = None  # (N, 4) long
        self._last_correct: Tensor | None = None  # (N,) bool
        self._pending: list[tuple[Tensor, Tensor, Tensor]] = []  # (ids_B, logits_B_C, targets_B) not yet counted
        self._pending_logits = 0  # numbers held by the pending logits
        self._hook: Any = None
        self._capturing = False
        self._captured: Tensor | None = None
        self._epoch_start: tuple[Tensor, Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(reset_each_fit=self.reset_each_fit)

    # ----- allocation ----------------------------------------------------------------------
    def _set_state(self, transitions_N_4: Tensor | None, last_correct_N: Tensor | None) -> None:
        self._transitions, self._last_correct = transitions_N_4, last_correct_N
        self._pending, self._pending_logits = [], 0

    def reset(self, size: int, device: torch.device | str = "cpu") -> None:
        """Allocate zeroed statistics for ``size`` dataset ids on ``device``."""
        self._set_state(
            torch.zeros(size, _NUM_TRANSITIONS, dtype=torch.long, device=device),
            torch.zeros(size, dtype=torch.bool, device=device),
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pool = getattr(trainer.datamodule, "pool", None)
        if pool is None:
            raise ValueError(
                "Expected the Trainer to fit with an ActiveDataModule (ForgettingCallback counts by dataset id), "
                f"but got datamodule {type(trainer.datamodule).__name__}."
            )
        self._count_pending()
        if self._transitions is None or self.reset_each_fit:
            self.reset(pool.size, pl_module.device)
        elif self._transitions.shape[0] != pool.size:
            raise ValueError(
                f"Expected the pool to keep its size across fits ({self._transitions.shape[0]} ids counted), "
                f"but got a pool of {pool.size}. Use `reset_each_fit=True` or a new ForgettingCallback."
            )
        else:
            self._set_state(self._transitions.to(pl_module.device), self._last_correct.to(pl_module.device))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hook()
        self._hook = pl_module.register_forward_hook(self._capture)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hook()
        self._count_pending()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hook()
        self._count_pending()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._capturing, self._captured = False, None

    def _capture(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._capturing:
            try:
                self._captured = logits_of(output).detach()
            except TypeError:  # not the logits: the step's logits are recomputed in `on_train_batch_end`
                self._captured = None

    # ----- counting ------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            self._count_pending()
            self._epoch_start = (self._transitions.clone(), self._last_correct.clone())

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._capturing, self._captured = True, None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._capturing = False
        ids_B = batch_ids(batch)
        logits = self._captured
        self._captured = None
        if logits is None or logits.ndim != 2 or logits.shape[0] != ids_B.shape[0]:
            with torch.no_grad():
                logits = call_model(pl_module, trainer.datamodule.inputs(batch))
        self._pending.append((ids_B, logits, trainer.datamodule.targets(batch)))
        self._pending_logits += logits.numel()
        if len(self._pending) >= _MAX_PENDING_BATCHES or self._pending_logits >= _MAX_PENDING_LOGITS:
            self._count_pending()

    def _count_pending(self) -> None:
        """Count the kept batches, in order, and forget them."""
        if not self._pending:
            return
        pending, self._pending, self._pending_logits = self._pending, [], 0
        device = self._transitions.device
        with torch.no_grad():
            preds_E = torch.cat([logits.argmax(dim=-1) for _, logits, _ in pending])
            targets_E = torch.cat([targets_B for _, _, targets_B in pending]).to(preds_E.device)
            record_presentations(
                self._transitions,
                self._last_correct,
                torch.cat([ids_B for ids_B, _, _ in pending]).to(device),
                (preds_E == targets_E).to(device),
                [ids_B.shape[0] for ids_B, _, _ in pending],
            )

    def update(self, ids_B: Tensor, correct_B: Tensor) -> None:
        """Record one presentation of the samples ``ids_B`` (``LongTensor[B]``) with correctness
        ``correct_B`` (``BoolTensor[B]``), after the batches kept so far; see `record_presentations`."""
        if self._transitions is None:
            raise RuntimeError("Expected ForgettingCallback to be allocated (`reset` or a fit) before `update`.")
        self._count_pending()
        device = self._transitions.device
        record_presentations(
            self._transitions, self._last_correct, ids_B.to(device), correct_B.to(device, torch.bool), [len(ids_B)]
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._count_pending()
        if trainer.world_size > 1:
            self._reduce_across_ranks(trainer)
        self._log(trainer, pl_module)

    def _reduce_across_ranks(self, trainer: pl.Trainer) -> None:
        def gather(t: Tensor) -> Tensor:  # rank axis first; integer dtypes, which every backend gathers
            return trainer.strategy.all_gather(t)

        start_transitions, start_last_correct = self._epoch_start
        self._set_state(
            *merge_rank_transitions(
                start_transitions,
                start_last_correct,
                transitions_delta_W_N_4=gather(self._transitions - start_transitions),
                last_correct_W_N=gather(self._last_correct.long()),
            )
        )

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        counts = self._transitions[self._transitions.any(dim=1), _FORGOTTEN]
        experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
        if trainer.is_global_zero and counts.numel() and hasattr(experiment, "add_histogram"):  # TensorBoard
            experiment.add_histogram("forgetting/counts", counts.cpu(), trainer.global_step)
        elif trainer.is_global_zero and counts.numel() and type(trainer.logger).__name__ == "WandbLogger":
            import wandb

            experiment.log({"forgetting/counts": wandb.Histogram(counts.cpu().numpy())})
        if counts.numel():
            pl_module.log("forgetting/mean", counts.double().mean().float(), on_epoch=True)
            pl_module.log("forgetting/max", counts.max().float(), on_epoch=True)

    # ----- statistics (``None`` before the first fit) ----------------------------------------
    def _counted(self) -> Tensor | None:
        """The transition counts, with every kept batch counted."""
        self._count_pending()
        return self._transitions

    @property
    def forgetting(self) -> Tensor | None:
        """``LongTensor[N]``: forgetting events (correct → incorrect transitions) of every dataset id."""
        transitions = self._counted()
        return None if transitions is None else transitions[:, _FORGOTTEN].clone()

    @property
    def presentations(self) -> Tensor | None:
        """``LongTensor[N]``: number of presentations of every dataset id."""
        transitions = self._counted()
        return None if transitions is None else transitions.sum(dim=1)

    @property
    def ever_correct(self) -> Tensor | None:
        """``BoolTensor[N]``: whether any presentation of the dataset id was predicted correctly."""
        transitions = self._counted()
        return None if transitions is None else (transitions[:, _LEARNED] + transitions[:, _KEPT]) > 0

    @property
    def last_correct(self) -> Tensor | None:
        """``BoolTensor[N]``: whether the last presentation of the dataset id was predicted correctly."""
        self._count_pending()
        return None if self._last_correct is None else self._last_correct.clone()

    # ----- results -------------------------------------------------------------------------
    def _presented_ids(self) -> Tensor:
        transitions = self._counted()
        if transitions is None:
            raise RuntimeError("Expected ForgettingCallback to have counted a fit, but it has not been fitted yet.")
        return transitions.any(dim=1).nonzero().flatten()

    def forgetting_counts_by_id(self) -> tuple[Tensor, Tensor]:
        """``(ids, counts)`` on CPU for every dataset id presented at least once, ids ascending."""
        ids = self._presented_ids()
        return ids.cpu(), self._transitions[ids, _FORGOTTEN].cpu()

    def never_learned_by_id(self) -> tuple[Tensor, Tensor]:
        """``(ids, never_learned)`` on CPU for presented ids: True where no presentation was correct."""
        ids = self._presented_ids()
        correct_presentations = self._transitions[ids, _LEARNED] + self._transitions[ids, _KEPT]
        return ids.cpu(), (correct_presentations == 0).cpu()

    def forgotten_or_unlearned_score(self, never_learned_value: float = math.inf) -> tuple[Tensor, Tensor]:
        """``(ids, scores)`` on CPU for presented ids: the forgetting count as float64, and
        ``never_learned_value`` (default ``inf``) for samples never learned, which Toneva et al.
        treat as forgotten infinitely often, so they rank first. Higher = more forgettable.

        Pass a finite ``never_learned_value`` (e.g. ``1e9``) to feed the scores to ``topk_select``.
        """
        ids, counts = self.forgetting_counts_by_id()
        _, never = self.never_learned_by_id()
        scores = counts.double()
        scores[never] = never_learned_value
        return ids, scores

    # ----- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``transitions`` (``LongTensor[N, 4]``) and ``last_correct`` (``BoolTensor[N]``) on CPU, or ``None``."""
        transitions = self._counted()
        if transitions is None:
            return {"transitions": None, "last_correct": None}
        return {"transitions": transitions.cpu(), "last_correct": self._last_correct.cpu()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore `state_dict`; also accepts the four statistics ``forgetting``, ``presentations``,
        ``last_correct`` and ``ever_correct``, the state of earlier versions."""
        if "transitions" not in state_dict and all(name in state_dict for name in _STATISTIC_NAMES):
            state_dict = _transitions_from_statistics(**{name: state_dict[name] for name in _STATISTIC_NAMES})
        transitions, last_correct = state_dict["transitions"], state_dict["last_correct"]
        if transitions is None:
            self._set_state(None, None)
            return
        if (
            transitions.ndim != 2
            or transitions.shape[1] != _NUM_TRANSITIONS
            or last_correct.shape != transitions.shape[:1]
        ):
            raise ValueError(
                "Expected `transitions` of shape (N, 4) and `last_correct` of shape (N,), "
                f"but got {tuple(transitions.shape)} and {tuple(last_correct.shape)}."
            )
        self._set_state(transitions.to(torch.long).contiguous().clone(), last_correct.to(torch.bool).clone())


def record_presentations(
    transitions_N_4: Tensor, last_correct_N: Tensor, ids_E: Tensor, correct_E: Tensor, batch_sizes: list[int]
) -> None:
    """Count, in place, the presentations of consecutive batches (sizes ``batch_sizes``, concatenated
    in order into the dataset ids ``ids_E`` and their correctness ``correct_E``, bool).

    Every presentation of an id ``i`` adds one to ``transitions_N_4[i, 2 * previous + correct]``, where
    ``previous`` is the correctness of the last presentation of ``i`` in an earlier batch, or
    ``last_correct_N[i]`` if there is none: repeats of an id within a batch are all compared against
    the state before that batch. Then ``last_correct_N[i]`` becomes the correctness of the last
    presentation of ``i``. One stable sort by (id, batch) replaces a loop over batches; no host
    synchronisation. Shapes: ``transitions_N_4`` ``(N, 4)`` long, ``last_correct_N`` ``(N,)`` bool, ``ids_E`` and
    ``correct_E`` ``(E,)`` with ``E = sum(batch_sizes)``.
    """
    if correct_E.dtype != torch.bool or correct_E.shape != ids_E.shape or sum(batch_sizes) != ids_E.shape[0]:
        raise ValueError(
            f"Expected `ids_E` and a bool `correct_E` of one shape with {sum(batch_sizes)} presentations "
            f"(the sum of `batch_sizes`), but got shapes {tuple(ids_E.shape)} and {tuple(correct_E.shape)}, "
            f"dtype {correct_E.dtype}."
        )
    num_batches = len(batch_sizes)
    if num_batches == 0:
        return
    device = ids_E.device
    batch_E = torch.repeat_interleave(
        torch.arange(num_batches, device=device),
        torch.tensor(batch_sizes, device=device),
        output_size=ids_E.shape[0],
    )
    key_E, order_E = (ids_E * num_batches + batch_E).sort(stable=True)
    ids_E, correct_E = ids_E[order_E], correct_E[order_E]
    # in sorted order: where the presentations of the same (id, batch) start, and where those of the id start and end
    batch_start_E = _run_starts(key_E)
    id_start_E = _run_starts(ids_E)
    id_end_E = ids_E.shape[0] - 1 - _run_starts(ids_E.flip(0)).flip(0)
    earlier_E = batch_start_E - 1  # the last presentation of the id in an earlier batch, if it is one of the id's
    previous_E = torch.where(
        earlier_E >= id_start_E, correct_E[earlier_E.clamp(min=0)], last_correct_N.index_select(0, ids_E)
    )
    flat_E = ids_E.mul(_NUM_TRANSITIONS).add_(previous_E, alpha=2).add_(correct_E)
    transitions_N_4.view(-1).index_add_(0, flat_E, torch.ones_like(flat_E))
    # every presentation of an id writes the same value, the last one's, so repeated ids are harmless
    last_correct_N.index_put_((ids_E,), correct_E[id_end_E])


def _run_starts(sorted_E: Tensor) -> Tensor:
    """For every element of ``sorted_E``, the position of the first element of its run of equal values."""
    new_run_E = torch.ones_like(sorted_E, dtype=torch.bool)
    torch.ne(sorted_E[1:], sorted_E[:-1], out=new_run_E[1:])
    positions_E = torch.arange(sorted_E.shape[0], device=sorted_E.device)
    return torch.where(new_run_E, positions_E, 0).cummax(dim=0).values


def _transitions_from_statistics(
    forgetting: Tensor | None, presentations: Tensor | None, last_correct: Tensor | None, ever_correct: Tensor | None
) -> dict[str, Tensor | None]:
    """Transition counts with the given statistics: ``ever_correct`` as one incorrect → correct
    transition, the ``forgetting`` events, and the remaining presentations as incorrect → incorrect."""
    if forgetting is None:
        return {"transitions": None, "last_correct": None}
    transitions = torch.zeros(forgetting.shape[0], _NUM_TRANSITIONS, dtype=torch.long)
    transitions[:, _LEARNED] = ever_correct.long()
    transitions[:, _FORGOTTEN] = forgetting
    transitions[:, 0] = presentations - forgetting - ever_correct.long()
    return {"transitions": transitions, "last_correct": last_correct}


def _merge_last_correct(start_last_correct_N: Tensor, presented_W_N: Tensor, last_correct_W_N: Tensor) -> Tensor:
    """``last_correct`` from the ranks that presented the sample (or-ed if several did, e.g. the padding
    ``DistributedSampler`` adds), and from ``start_last_correct_N`` for samples nobody presented."""
    last_from_ranks_N = (last_correct_W_N.bool() & presented_W_N).any(dim=0)
    return torch.where(presented_W_N.any(dim=0), last_from_ranks_N, start_last_correct_N.bool())


def merge_rank_transitions(
    start_transitions_N_4: Tensor,
    start_last_correct_N: Tensor,
    transitions_delta_W_N_4: Tensor,
    last_correct_W_N: Tensor,
) -> tuple[Tensor, Tensor]:
    """Combine one epoch of per-rank transition counts (rank axis first) into the state every rank keeps.

    The ranks' increments are summed; ``last_correct`` follows `merge_rank_statistics`.

    Args:
        start_transitions_N_4: ``(N, 4)`` transition counts at the start of the epoch.
        start_last_correct_N: ``(N,)`` bool correctness at the last presentation, at the start of the epoch.
        transitions_delta_W_N_4: ``(W, N, 4)`` each rank's transition counts of this epoch.
        last_correct_W_N: ``(W, N)`` each rank's correctness at its last presentation.

    Returns:
        ``(transitions_N_4, last_correct_N)``.
    """
    presented_W_N = transitions_delta_W_N_4.sum(dim=-1) > 0
    return (
        start_transitions_N_4 + transitions_delta_W_N_4.sum(dim=0),
        _merge_last_correct(start_last_correct_N, presented_W_N, last_correct_W_N),
    )


def merge_rank_statistics(
    start: dict[str, Tensor],
    forgetting_delta_W_N: Tensor,
    presentations_delta_W_N: Tensor,
    last_correct_W_N: Tensor,
    ever_correct_W_N: Tensor,
) -> dict[str, Tensor]:
    """Combine one epoch of per-rank statistics (rank axis first) into the state every rank keeps.

    Increments of counts are summed; ``ever_correct`` is or-ed; ``last_correct`` is taken from
    the ranks that presented the sample this epoch (or-ed if several did, e.g. the padding
    ``DistributedSampler`` adds), and kept from ``start`` for samples nobody presented.

    Args:
        start: the ``(N,)`` statistics ``forgetting``, ``presentations``, ``last_correct`` and ``ever_correct``
            at the start of the epoch.
        forgetting_delta_W_N: ``(W, N)`` each rank's forgetting events of this epoch.
        presentations_delta_W_N: ``(W, N)`` each rank's presentations of this epoch.
        last_correct_W_N: ``(W, N)`` each rank's correctness at its last presentation.
        ever_correct_W_N: ``(W, N)`` whether each rank has seen the sample correct.

    Returns:
        The four ``(N,)`` statistics, by name.
    """
    return {
        "forgetting": start["forgetting"] + forgetting_delta_W_N.sum(dim=0),
        "presentations": start["presentations"] + presentations_delta_W_N.sum(dim=0),
        "last_correct": _merge_last_correct(start["last_correct"], presentations_delta_W_N > 0, last_correct_W_N),
        "ever_correct": ever_correct_W_N.bool().any(dim=0),
    }
