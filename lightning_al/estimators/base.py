"""Estimators turn a model and a batch of inputs into the outputs strategies need."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from torch import Tensor, nn

from lightning_al.estimators.embeddings import capture_embeddings
from lightning_al.model_call import apply, call_model
from lightning_al.outputs import EMBEDDINGS, GRAD_EMBEDDINGS, PROBS
from lightning_al.tasks import ALL_TASKS, MultiClass, Task

if TYPE_CHECKING:
    import pytorch_lightning as pl


class TrainFn(Protocol):
    """Fits ``module`` on the current labelled set with the loop's Trainer arguments.

    ``seed`` seeds the fit; ``bootstrap=True`` trains on a resample of the labelled set with
    replacement (drawn from ``seed``); ``fresh_init=True`` first draws new initial weights for
    ``module`` (every layer with ``reset_parameters``), and the weights, the fit and any bootstrap
    draw then come from `run_round_seed` of the loop's seed, its round and ``seed``, so they
    differ between rounds and between runs; ``trainer_overrides`` replace Trainer arguments
    (e.g. ``max_epochs`` for a shorter-trained proxy).
    """

    def __call__(
        self,
        module: pl.LightningModule,
        seed: int,
        *,
        bootstrap: bool = False,
        fresh_init: bool = False,
        **trainer_overrides: Any,
    ) -> None: ...


def run_round_seed(run_seed: int, round_index: int, seed: int) -> int:
    """A seed in ``[0, 2**32)`` drawn from the triple (run seed, round, ``seed``): distinct triples, independent draws.

    NumPy's ``SeedSequence`` hashes the triple, so neighbouring seeds and rounds give unrelated streams.
    """
    entropy = [value % 2**32 for value in (run_seed, round_index, seed)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class Estimator:
    """Computes named outputs for a batch of pool inputs.

    Subclasses set ``provides`` (the output names they can compute) and implement
    `predict`, which must compute only the outputs in ``needs``. Three optional
    hooks let an estimator take part in training without the loop knowing its type:
    `callbacks` join the main model's fit, `fit` runs after it (ensembles
    train their other members there), and `modules` lists extra modules that must
    move to the scoring device with the model. Estimators with state implement
    ``state_dict``/``load_state_dict``.
    """

    provides: frozenset[str] = frozenset()
    # True: ``predict`` also receives ``ids=`` (the batch's dataset ids), e.g. to look up cached features.
    needs_ids: bool = False
    # The tasks (names) whose outputs this estimator computes; the loop refuses others before a run.
    tasks: frozenset[str] = frozenset({"multiclass"})
    # How logits become probabilities (and embeddings are pooled): the datamodule's task, set by `bind`.
    task: Task = MultiClass()

    def bind(self, task: Task) -> None:
        """Use ``task`` from now on (the loop calls it with the datamodule's task before scoring)."""
        if task.name not in self.tasks:
            raise ValueError(
                f"Expected a task the estimator {type(self).__name__} supports ({sorted(self.tasks)}), "
                f"but the datamodule's task is {task!r}."
            )
        self.task = task

    def callbacks(self) -> list[pl.Callback]:
        """Callbacks added to every round's fit of the main model."""
        return []

    def fit(self, model: pl.LightningModule, train: TrainFn) -> None:
        """Called every round after the main model's fit; ``train(module, seed)`` fits another module."""
        del model, train

    def modules(self) -> list[nn.Module]:
        """Modules besides the model that `predict` runs (moved to the scoring device with it)."""
        return []

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        """Compute the outputs named in ``needs`` for one batch of pool inputs.

        Args:
            model: the main model, already on the scoring device.
            inputs: the batch's inputs (``B`` samples), as the pool's dataloader yields them.
            needs: the output names to compute, a subset of ``provides``.

        Returns:
            One tensor per name in ``needs``, with first axis ``B``: e.g. ``probs`` ``(B, C)``, ``mc_probs``
            ``(B, T, C)``, ``embeddings`` ``(B, D)``.
        """
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The estimator's state between rounds (empty for a stateless estimator)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state returned by `state_dict`."""
        del state


class Softmax(Estimator):
    """One deterministic forward pass in eval mode: ``probs = task.probs(model(x))``.

    For the default task, ``softmax`` of ``(B, C)`` logits (see `lightning_al.tasks` for the sigmoids of
    multi-label and the per-pixel softmax of segmentation). When ``embeddings`` are needed they are captured
    in the same pass: the model's ``embed(x)`` if it has one, else the output of ``embedding_layer`` (a module
    name), else the input of its head (the last ``nn.Linear``; for segmentation the last ``nn.Conv2d``),
    pooled by the task (flattened; averaged over pixels for segmentation). ``grad_embeddings`` are the
    task's BADGE gradient embeddings from the same features (segmentation).

    Args:
        embedding_layer: name of the layer whose output serves as embedding (``model.named_modules()``).
    """

    provides = frozenset({PROBS, EMBEDDINGS, GRAD_EMBEDDINGS})
    tasks = ALL_TASKS

    def __init__(self, embedding_layer: str | None = None) -> None:
        self.embedding_layer = embedding_layer

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        """``probs`` (``(B, C)`` by default), and ``embeddings`` ``(B, D)`` / ``grad_embeddings`` if needed."""
        model.eval()
        task = self.task
        if not needs & {EMBEDDINGS, GRAD_EMBEDDINGS}:
            return {PROBS: task.probs(call_model(model, inputs))}
        if self.embedding_layer is None and callable(getattr(model, "embed", None)):
            probs, features = task.probs(call_model(model, inputs)), apply(model.embed, inputs)
        else:
            with capture_embeddings(model, self.embedding_layer, task.head_types) as captured:
                probs = task.probs(call_model(model, inputs))
            if captured.value is None:
                raise ValueError(
                    f"Expected the embedding layer {self.embedding_layer!r} to run in the model's forward."
                )
            features = captured.value
        out = {PROBS: probs}
        if EMBEDDINGS in needs:
            out[EMBEDDINGS] = task.embeddings(features).float()
        if GRAD_EMBEDDINGS in needs:
            out[GRAD_EMBEDDINGS] = task.gradient_embeddings(probs, features.float())
        return out
