"""Committees of models: deep ensembles, snapshot ensembles and their stochastic variants."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_al._validation import check_int
from lightning_al.callbacks.snapshots import SnapshotCallback
from lightning_al.estimators.base import Estimator, Softmax, TrainFn
from lightning_al.estimators.mc_dropout import MCDropout
from lightning_al.outputs import EMBEDDINGS, MC_PROBS, PROBS
from lightning_al.tasks import ALL_TASKS

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from lightning_al.tasks import Task


def reinitialise(module: nn.Module, seed: int) -> nn.Module:
    """Draw fresh initial weights for every submodule of ``module`` that has ``reset_parameters``, from ``seed``.

    ``module`` is changed in place and returned; the global RNG is left as it was.
    """
    devices = {p.device for p in module.parameters()}
    with torch.random.fork_rng(devices=[d for d in devices if d.type == "cuda"]):
        torch.manual_seed(seed)
        resettable = [m for m in module.modules() if callable(getattr(m, "reset_parameters", None))]
        if not resettable:
            raise ValueError(
                f"Expected {type(module).__name__} to have layers with `reset_parameters` so ensemble members can "
                "be initialised independently, but it has none."
            )
        for submodule in resettable:
            submodule.reset_parameters()
    return module


class Committee(Estimator):
    """Base of estimators whose ``T`` axis holds committee members (optionally × MC-dropout samples).

    ``mc_probs`` has shape ``(B, M · S, C)``: ``S = mc_samples_per_member`` stochastic
    passes of each of the ``M`` members, member-major; ``embeddings`` are the first member's
    (see `Softmax` for ``embedding_layer``). With ``S = 1`` each member is run
    once, deterministically; with ``S > 1`` dropout stays on (a stochastic ensemble,
    Pop & Fulop 2018, "Deep Ensemble Bayesian Active Learning").

    Args:
        mc_samples_per_member: MC-dropout passes ``S`` per member (``> 1``: stochastic ensemble).
        embedding_layer: see `Softmax`.
    """

    provides = frozenset({MC_PROBS, PROBS, EMBEDDINGS})
    tasks = ALL_TASKS

    def __init__(self, mc_samples_per_member: int = 1, embedding_layer: str | None = None) -> None:
        check_int("mc_samples_per_member", mc_samples_per_member, 1)
        self.mc_samples_per_member = mc_samples_per_member
        self._embedder = Softmax(embedding_layer)
        self._member_estimator = Softmax() if mc_samples_per_member == 1 else MCDropout(mc_samples_per_member)
        self._members = nn.ModuleList()

    def modules(self) -> list[nn.Module]:
        """The extra members (an ``nn.ModuleList``)."""
        return [self._members]

    def bind(self, task: Task) -> None:
        """Use ``task`` for the committee's members and embeddings too."""
        super().bind(task)
        self._embedder.bind(task)
        self._member_estimator.bind(task)

    def members(self, model: nn.Module) -> list[nn.Module]:
        """The committee for the current round (by default the trained extra members; see subclasses)."""
        return list(self._members)

    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        """``mc_probs`` ``(B, M · S, C)``, their mean ``probs`` ``(B, C)``, if needed the first member's embeddings."""
        per_member = []
        for member in self.members(model):
            out = self._member_estimator.predict(member, inputs, frozenset())
            per_member.append(out[MC_PROBS] if MC_PROBS in out else out[PROBS].unsqueeze(1))
        probs = torch.cat(per_member, dim=1)
        out = {MC_PROBS: probs, PROBS: probs.mean(dim=1)}
        if EMBEDDINGS in needs:  # the first member's features (a deep ensemble's: the loop's model, if included)
            first = self.members(model)[0]
            out[EMBEDDINGS] = self._embedder.predict(first, inputs, frozenset({EMBEDDINGS}))[EMBEDDINGS]
        return out


class DeepEnsemble(Committee):
    """``members`` independently initialised copies of the model, each trained every round.

    The loop's model is member 0; members ``1..M-1`` are copies re-initialised from
    ``seed + m`` and fitted through Lightning with the loop's Trainer arguments (without
    its callbacks, which watch the main model only) on the same labelled set, from scratch
    each round (Lakshminarayanan et al. 2017, "Simple and Scalable Predictive Uncertainty
    Estimation using Deep Ensembles"; used for active learning by Beluch et al. 2018,
    "The power of ensembles for active learning in image classification").

    With ``bootstrap=True`` every extra member trains on a resample of the labelled set drawn
    with replacement (as many draws as labels), as the bootstrap committees of query by bagging
    (Abe & Mamitsuka 1998) and suggestive annotation (Yang et al. 2017).

    With ``include_model=False`` the loop's model is left out of the committee: all ``M``
    members are extra copies, re-initialised from ``seed + 1 .. seed + M`` and trained every
    round (one fit more than with the model included). Suggestive annotation's committee is
    of this kind: every one of its networks is trained on its own bootstrap sample, none on
    the full labelled set. ``embeddings`` are then the first extra member's.

    Args:
        members: ensemble size ``M >= 2``.
        mc_samples_per_member: MC-dropout passes per member (``> 1``: stochastic ensemble).
        seed: members are initialised from ``seed + m`` and trained with that seed.
        bootstrap: train the extra members on bootstrap resamples of the labelled set.
        embedding_layer: see `Softmax`.
        include_model: the loop's model is member 0 (``True``) or not in the committee (``False``).
    """

    def __init__(
        self,
        members: int = 5,
        mc_samples_per_member: int = 1,
        seed: int = 0,
        bootstrap: bool = False,
        embedding_layer: str | None = None,
        include_model: bool = True,
    ) -> None:
        super().__init__(mc_samples_per_member, embedding_layer)
        check_int("members", members, 1)
        if members < 2:
            raise ValueError(f"Expected `members` to be at least 2 for an ensemble, but got {members}.")
        for name, value in (("bootstrap", bootstrap), ("include_model", include_model)):
            if not isinstance(value, bool):
                raise TypeError(f"Expected `{name}` to be a bool, but got {value!r}.")
        self.num_members, self.seed = members, seed
        self.bootstrap, self.include_model = bootstrap, include_model

    @property
    def num_extra(self) -> int:
        """Members trained by `fit`: ``M - 1`` with the loop's model in the committee, else ``M``."""
        return self.num_members - 1 if self.include_model else self.num_members

    def fit(self, model: pl.LightningModule, train: TrainFn) -> None:
        """Re-initialise and train the extra members (``seed + 1 .. seed + num_extra``) from copies of ``model``."""
        self._members = nn.ModuleList()
        for m in range(1, self.num_extra + 1):
            member = reinitialise(copy.deepcopy(model), self.seed + m)
            train(member, self.seed + m, bootstrap=self.bootstrap)
            self._members.append(member.cpu())

    def members(self, model: nn.Module) -> list[nn.Module]:
        """``model`` (unless ``include_model=False``) followed by the members trained this round."""
        if len(self._members) != self.num_extra:
            raise RuntimeError("Expected the ensemble members to be trained by the loop before scoring.")
        return [model, *self._members] if self.include_model else list(self._members)


class SnapshotEnsemble(Committee):
    """The weights at the end of each learning-rate cycle of one fit form the committee.

    A `lightning_al.callbacks.SnapshotCallback` joins the main model's fit, drives a
    cyclic cosine learning rate and keeps one snapshot per cycle (Huang et al. 2017,
    "Snapshot Ensembles: Train 1, Get M for Free"); the snapshots are the cheap implicit
    ensemble that Beluch et al. 2018 compare with deep ensembles.

    Args:
        cycles: number of learning-rate cycles, hence of members.
        mc_samples_per_member: MC-dropout passes per snapshot (``> 1``: stochastic ensemble).
        embedding_layer: see `Softmax`.
    """

    def __init__(self, cycles: int = 5, mc_samples_per_member: int = 1, embedding_layer: str | None = None) -> None:
        super().__init__(mc_samples_per_member, embedding_layer)
        self.snapshot_callback = SnapshotCallback(cycles)

    def callbacks(self) -> list[pl.Callback]:
        """The `SnapshotCallback` that keeps the snapshots."""
        return [self.snapshot_callback]

    def fit(self, model: pl.LightningModule, train: TrainFn) -> None:
        """Make the members from this fit's snapshots (``train`` is unused)."""
        self._members = nn.ModuleList()
        for state in self.snapshot_callback.snapshots:
            member = copy.deepcopy(model).cpu()
            member.load_state_dict(state)
            self._members.append(member)
