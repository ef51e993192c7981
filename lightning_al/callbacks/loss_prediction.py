"""A loss-prediction head trained alongside the user's model (Yoo & Kweon 2019, "Learning Loss for Active Learning").

The head reads intermediate features of the unmodified model (through forward hooks) and
learns to rank the model's per-sample losses; the pool samples with the highest predicted
loss are queried (`lightning_al.strategies.loss_prediction.LossPrediction`).

How the head joins training. The paper trains backbone and head jointly on
``target loss + weight * ranking loss``, so the ranking loss must be part of the backward
pass Lightning runs. At ``on_fit_start`` the callback wraps the module's ``training_step``
*on the instance* (the class is untouched): the wrapper runs the user's step, computes the
per-sample cross-entropy of the logits captured from the model's forward against
``trainer.datamodule.targets(batch)`` (detached), runs the head on the captured features and
returns ``loss + weight * ranking_loss``. The original ``training_step`` is restored at
``on_fit_end``, on an exception, and at ``teardown``.

When the ranking loss stops moving the backbone. The paper (Sec. 4.1) stops the head's gradient
into the target model after 120 of its 200 epochs. Fits in active learning are often far shorter
than 200 epochs, so the default states that point as a share of the fit, ``detach_fraction=0.6``
of its optimiser steps (``trainer.estimated_stepping_batches``, which follows ``max_epochs`` or
``max_steps``); ``detach_after_epoch`` still gives an absolute epoch. An absolute epoch 120 is never
reached by the 10-epoch fits of the digits benchmark, where the ranking loss would then shape the
backbone for the whole fit. Measured there (3 seeds, AULC ÷ Random, with the paper's other settings):
0.982 ± 0.020 detached after 0.6 of each fit, 0.999 ± 0.001 never detached -- no clear gain either
way on that small model, so the default stays the paper's share.

The head's parameters are not part of the model. With ``own_optimizer=True`` they have
their own optimiser, by default the paper's and its reference code's: SGD, learning rate 0.1,
momentum 0.9, weight decay 5e-4, the learning rate divided by 10 after 0.8 of the fit (epoch 160
of 200). ``head_optimizer="adam"`` (lr 1e-3) is the alternative; measured on the digits benchmark with
the paper's other settings (3 seeds, AULC ÷ Random): SGD 0.982 ± 0.020 and Adam 1.001 ± 0.008 on
balanced digits, SGD 1.064 ± 0.027 and Adam 1.054 ± 0.055 on imbalanced digits, so neither is better
and the default stays the reference code's. The optimiser is stepped and zeroed in
``on_before_optimizer_step`` (after the backward of each optimisation step, so gradient accumulation
is respected). With ``own_optimizer=False`` the head joins the model's first optimiser as a new
parameter group instead, with that optimiser's settings (zeroed and stepped with it; a learning-rate
scheduler created before the group exists may not drive it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_al import distributed
from lightning_al._validation import check_int
from lightning_al.callbacks.step_patch import RestoresTrainingStep, TrainingStepPatch
from lightning_al.functional.ranking import loss_prediction_ranking_loss
from lightning_al.model_call import call_model

if TYPE_CHECKING:
    import pytorch_lightning as pl


class LossPredictionHead(nn.Module):
    """Predicts a scalar loss per sample from several feature maps.

    Each feature of shape ``(B, D_k)`` or ``(B, D_k, *spatial)`` is global-average-pooled over
    its spatial axes, mapped by ``Linear(D_k, hidden)`` and a ReLU; the ``K`` results are
    concatenated and ``Linear(K * hidden, 1)`` gives the prediction, shape ``(B,)`` (the loss-prediction
    module of Yoo & Kweon 2019, "Learning Loss for Active Learning").

    Args:
        in_dims: channel count ``D_k`` of each tapped feature, in order.
        hidden: width of each per-feature branch.
    """

    def __init__(self, in_dims: Sequence[int], hidden: int = 128) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError(f"Expected `in_dims` to list at least one feature size, but got {in_dims!r}.")
        for dim in in_dims:
            check_int("in_dims[k]", dim, 1)
        check_int("hidden", hidden, 1)
        self.in_dims, self.hidden = [int(d) for d in in_dims], hidden
        self.branches = nn.ModuleList(nn.Linear(dim, hidden) for dim in self.in_dims)
        self.out = nn.Linear(hidden * len(self.in_dims), 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Predicted losses ``(B,)`` from ``features``, one ``(B, D_k, ...)`` tensor per tapped layer, in order."""
        if len(features) != len(self.branches):
            raise ValueError(f"Expected {len(self.branches)} features, but got {len(features)}.")
        pooled = []
        for k, (feature, branch) in enumerate(zip(features, self.branches, strict=True)):
            if feature.ndim < 2 or feature.shape[1] != self.in_dims[k]:
                raise ValueError(
                    f"Expected feature {k} to have shape (B, {self.in_dims[k]}, ...), but got {tuple(feature.shape)}."
                )
            vector = feature.flatten(2).mean(dim=2) if feature.ndim > 2 else feature
            pooled.append(torch.relu(branch(vector)))
        return self.out(torch.cat(pooled, dim=1)).squeeze(1)


def _as_tensor(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"Expected a tapped layer to output a tensor, but got {type(output).__name__}.")


def check_layers(model: nn.Module, layers: Sequence[str], arg: str = "layers") -> dict[str, nn.Module]:
    """The modules of ``model`` named by ``layers``; a clear error lists the valid names otherwise.

    ``arg`` is the name of the argument that gave ``layers``, for the error message.
    """
    modules = dict(model.named_modules())
    wrong = [name for name in layers if name not in modules]
    if wrong:
        raise ValueError(
            f"Expected `{arg}` to name layers of {type(model).__name__}, one of {[n for n in modules if n]}, "
            f"but got {wrong}."
        )
    return {name: modules[name] for name in layers}


@contextlib.contextmanager
def tap_features(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of the named layers of ``model`` while the ``with`` block runs (last call wins)."""
    captured: dict[str, Tensor] = {}
    handles = []
    for name, module in check_layers(model, layers).items():

        def hook(module: nn.Module, args: Any, output: Any, name: str = name) -> None:
            captured[name] = _as_tensor(output)

        handles.append(module.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


HEAD_OPTIMIZERS = ("sgd", "adam")
# The head's learning rate when `lr` is None, per optimiser: the reference code's SGD rate, Adam's usual rate.
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}


def _check_fraction(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"Expected `{name}` to be a number in [0, 1] or None, but got {value!r}.")


def step_at_fraction(fraction: float, total_steps: int) -> int:
    """The first optimiser step (0-based) at which ``fraction`` of ``total_steps`` steps have been taken.

    ``ceil(fraction * total_steps)``, robust to the rounding of ``fraction`` (``0.7 * 10`` gives 7, not 8):
    0.6 of a 200-step fit is step 120, so steps 0-119 run before the switch, as the paper's 120 of 200 epochs.
    """
    return math.ceil(fraction * total_steps - 1e-9)


class LossPredictionCallback(RestoresTrainingStep):
    """Train a `LossPredictionHead` on the ranking of the model's per-sample losses.

    Per training batch: the model's loss becomes ``loss + weight * L_rank`` where ``L_rank`` is
    `lightning_al.functional.ranking.loss_prediction_ranking_loss` between the head's
    predictions and the per-sample cross-entropy of the model's logits (the output of
    ``logits_layer``, by default the module itself) against ``trainer.datamodule.targets(batch)``
    (the second element of a tuple batch without a datamodule). The head is built on the first
    batch, once the feature sizes are known, on the features' device; the ranking loss is
    logged as ``"loss_prediction_loss"`` and each epoch's mean is kept in ``epoch_losses``
    (Yoo & Kweon 2019, "Learning Loss for Active Learning", CVPR).

    The defaults are the paper's (Sec. 4.1) and its reference code's: ``hidden=128``, ``margin=1``,
    ``weight=1``, the head's gradient into the backbone stopped after 0.6 of the fit (120 of 200
    epochs), the head trained by SGD (lr 0.1, momentum 0.9, weight decay 5e-4, lr / 10 after 0.8 of
    the fit, epoch 160 of 200). The paper's fixed epoch is restated as a share of the fit because
    active-learning fits are often much shorter than 200 epochs.

    Args:
        layers: names (``model.named_modules()``) of the layers whose outputs feed the head (the paper
            taps the output of every residual stage of a ResNet-18, four layers).
        hidden: width of each feature branch of the head.
        margin: the ranking loss's margin ξ.
        weight: λ, the weight of the ranking loss in the total loss.
        detach_fraction: from this share of the fit's optimiser steps on (``ceil(detach_fraction *
            trainer.estimated_stepping_batches)``, from ``max_epochs`` or ``max_steps``), no gradient
            flows from the head into the backbone; 0 never lets it flow, 1 or None never stops it.
        detach_after_epoch: an absolute epoch (0-based) from which the gradient is stopped instead;
            when given, ``detach_fraction`` is not used.
        head_optimizer: ``"sgd"`` (the reference code's) or ``"adam"``, for ``own_optimizer=True``.
        lr: learning rate of the head's parameters; None is 0.1 for SGD, 1e-3 for Adam and, when the head
            joins the model's optimiser, that optimiser's rate.
        momentum: SGD's momentum (``head_optimizer="sgd"`` only).
        weight_decay: L2 weight decay of the head's own optimiser.
        lr_decay_fraction: from this share of the fit's optimiser steps on, the head's own optimiser runs at
            ``lr * lr_decay``; None keeps ``lr`` throughout.
        lr_decay: the factor of that step decay.
        own_optimizer: give the head its own optimiser instead of a group in the model's optimiser (whose
            settings, scheduler included, then apply to the head; ``lr`` alone may override its rate).
        reset_each_fit: re-initialise the head (from ``seed``) at every fit, to match a backbone the loop
            resets every round (``reset_weights=True``); a state loaded with `load_state_dict` survives the
            next fit start. The reference code keeps both across rounds (``reset_weights=False`` and
            ``reset_each_fit=False``).
        logits_layer: name of the module whose output are the logits ``(B, C)``; ``""`` is the model.
        seed: seeds the head's initialisation.
    """

    def __init__(
        self,
        layers: list[str],
        hidden: int = 128,
        margin: float = 1.0,
        weight: float = 1.0,
        detach_fraction: float | None = 0.6,
        detach_after_epoch: int | None = None,
        head_optimizer: str = "sgd",
        lr: float | None = None,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_decay_fraction: float | None = 0.8,
        lr_decay: float = 0.1,
        own_optimizer: bool = True,
        reset_each_fit: bool = True,
        logits_layer: str = "",
        seed: int = 0,
    ) -> None:
        if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
            raise ValueError(f"Expected `layers` to be a non-empty list of layer names, but got {layers!r}.")
        if not all(isinstance(name, str) for name in layers):
            raise TypeError(f"Expected `layers` to hold layer names (str), but got {layers!r}.")
        check_int("hidden", hidden, 1)
        check_int("detach_after_epoch", detach_after_epoch, 0, optional=True)
        check_int("seed", seed)
        _check_fraction("detach_fraction", detach_fraction)
        _check_fraction("lr_decay_fraction", lr_decay_fraction)
        if head_optimizer not in HEAD_OPTIMIZERS:
            raise ValueError(
                f"Expected `head_optimizer` to be one of {list(HEAD_OPTIMIZERS)}, but got {head_optimizer!r}."
            )
        numbers = {"margin": margin, "weight": weight, "momentum": momentum, "weight_decay": weight_decay}
        numbers["lr_decay"] = lr_decay
        if lr is not None:
            numbers["lr"] = lr
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"Expected `{name}` to be a number >= 0, but got {value!r}.")
        if not isinstance(logits_layer, str):
            raise TypeError(f"Expected `logits_layer` to be a layer name (str), but got {logits_layer!r}.")
        self.layers, self.hidden, self.margin, self.weight = list(layers), hidden, float(margin), float(weight)
        self.detach_fraction = None if detach_fraction is None else float(detach_fraction)
        self.detach_after_epoch = detach_after_epoch
        self.head_optimizer, self.lr = head_optimizer, None if lr is None else float(lr)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.lr_decay_fraction = None if lr_decay_fraction is None else float(lr_decay_fraction)
        self.lr_decay = float(lr_decay)
        self.own_optimizer, self.reset_each_fit = bool(own_optimizer), bool(reset_each_fit)
        self.logits_layer, self.seed = logits_layer, seed
        self.head: LossPredictionHead | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.epoch_losses: list[float] = []
        self._pending_optimizer_state: dict[str, Any] | None = None
        self._restored = False  # a state saved during a fit was loaded: the next fit start keeps it
        self._in_fit = False
        self._patch = TrainingStepPatch()
        self._handles: list[Any] = []
        self._captured: dict[str, Tensor] = {}
        self._capturing = False
        self._epoch_sum, self._epoch_count = 0.0, 0
        self._detach_step: int | None = None  # this fit's first detached optimiser step (detach_fraction)
        self._decay_step: int | None = None  # this fit's first optimiser step at the decayed rate

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=tuple(self.layers), hidden=self.hidden)

    @property
    def head_lr(self) -> float:
        """The head's own optimiser's base learning rate: ``lr``, or the default of ``head_optimizer``."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.head_optimizer]

    # ----- the head ----------------------------------------------------------------------
    def _build_head(self, in_dims: list[int], device: torch.device) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.head = LossPredictionHead(in_dims, self.hidden).to(device)
        self.optimizer = None
        if self.own_optimizer:
            params = self.head.parameters()
            if self.head_optimizer == "sgd":
                self.optimizer = torch.optim.SGD(
                    params, lr=self.head_lr, momentum=self.momentum, weight_decay=self.weight_decay
                )
            else:
                self.optimizer = torch.optim.Adam(params, lr=self.head_lr, weight_decay=self.weight_decay)
            if self._pending_optimizer_state is not None:
                self.optimizer.load_state_dict(self._pending_optimizer_state)
        self._pending_optimizer_state = None

    def _join_model_optimizer(self, trainer: pl.Trainer) -> None:
        if self.own_optimizer or self.head is None:
            return
        if not trainer.optimizers:
            raise ValueError("Expected the model to configure an optimiser for the head to join, but it has none.")
        params = list(self.head.parameters())
        optimizer = trainer.optimizers[0]
        if not any(p is params[0] for group in optimizer.param_groups for p in group["params"]):
            group: dict[str, Any] = {"params": params}  # the optimiser's defaults fill in the rest
            if self.lr is not None:
                group["lr"] = self.lr
            group["initial_lr"] = group.get("lr", optimizer.defaults["lr"])
            optimizer.add_param_group(group)

    def _fit_steps(self, trainer: pl.Trainer, arg: str) -> int:
        """The fit's number of optimiser steps, for a setting given as a share of it (``arg`` names it)."""
        total = trainer.estimated_stepping_batches
        if not (isinstance(total, int | float) and math.isfinite(total) and total > 0):
            raise ValueError(
                f"Expected a fit bounded by `max_epochs` or `max_steps` for `{arg}` (a share of the fit's steps), "
                f"but the Trainer estimates {total} steps. Bound the fit, or "
                + (
                    "give `detach_after_epoch` (an absolute epoch)."
                    if arg == "detach_fraction"
                    else f"pass `{arg}=None`."
                )
            )
        return int(total)

    def _detached(self, trainer: pl.Trainer) -> bool:
        """Whether the head's gradient stops at the features for the current step."""
        if self.detach_after_epoch is not None:
            return trainer.current_epoch >= self.detach_after_epoch
        return self._detach_step is not None and trainer.global_step >= self._detach_step

    # ----- hooks -------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._detach_step = self._decay_step = None
        if self.detach_after_epoch is None and self.detach_fraction is not None:
            self._detach_step = step_at_fraction(self.detach_fraction, self._fit_steps(trainer, "detach_fraction"))
        if self.own_optimizer and self.lr_decay_fraction is not None:
            self._decay_step = step_at_fraction(self.lr_decay_fraction, self._fit_steps(trainer, "lr_decay_fraction"))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if sum(callback is self for callback in trainer.callbacks) > 1:
            raise ValueError(
                "Expected the LossPredictionCallback to be given to the Trainer once, but it is there twice."
            )
        if not pl_module.automatic_optimization:
            raise ValueError("Expected a LightningModule with automatic optimisation for the loss-prediction head.")
        modules = check_layers(pl_module, [*self.layers, self.logits_layer])
        if self.reset_each_fit and not self._restored:
            self.head, self.optimizer = None, None
        self._restored, self._in_fit = False, True
        if self.head is not None:
            self.head.to(pl_module.device)
            if self.optimizer is not None:  # moves the optimiser's state to the parameters' device
                self.optimizer.load_state_dict(self.optimizer.state_dict())
            self._join_model_optimizer(trainer)
        self.epoch_losses, self._epoch_sum, self._epoch_count = [], 0.0, 0
        for name in self.layers:
            self._handles.append(modules[name].register_forward_hook(self._store(name)))
        self._handles.append(modules[self.logits_layer].register_forward_hook(self._store("\0logits")))

        def wrap(original: Any) -> Any:
            def training_step(*args: Any, **kwargs: Any) -> Any:
                return self._training_step(trainer, pl_module, original, *args, **kwargs)

            return training_step

        self._patch.install(pl_module, wrap)

    def _store(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._capturing:
                self._captured[name] = _as_tensor(output)

        return hook

    def _training_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, original: Any, *args: Any, **kwargs: Any
    ) -> Any:
        self._captured, self._capturing = {}, True
        try:
            out = original(*args, **kwargs)
        finally:
            self._capturing = False
        captured, self._captured = self._captured, {}
        loss = out["loss"] if isinstance(out, Mapping) else out
        if not isinstance(loss, Tensor):  # the user skipped this batch
            return out
        batch = args[0] if args else kwargs["batch"]
        ranking = self._ranking_loss(trainer, pl_module, captured, batch)
        if ranking is None:
            return out
        total = loss + self.weight * ranking
        return {**out, "loss": total} if isinstance(out, Mapping) else total

    def _ranking_loss(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, captured: dict[str, Tensor], batch: Any
    ) -> Tensor | None:
        missing = [name for name in [*self.layers, "\0logits"] if name not in captured]
        if missing:
            names = [self.logits_layer or "the model" if n == "\0logits" else n for n in missing]
            raise ValueError(f"Expected the layers {names} to run in `training_step`, but they did not.")
        logits = captured["\0logits"]
        if logits.ndim != 2:
            raise ValueError(
                f"Expected the output of `logits_layer` to be logits of shape (B, C), but got {tuple(logits.shape)}."
            )
        targets_of = getattr(trainer.datamodule, "targets", None)
        targets = targets_of(batch) if callable(targets_of) else batch[1]
        per_sample = nn.functional.cross_entropy(logits.detach().float(), targets, reduction="none")
        features = [captured[name] for name in self.layers]
        if self._detached(trainer):
            features = [feature.detach() for feature in features]
        if self.head is None:
            self._build_head([int(f.shape[1]) for f in features], features[0].device)
            self._join_model_optimizer(trainer)
        assert self.head is not None
        self.head.train(pl_module.training)
        predicted = self.head(features).float()
        ranking = loss_prediction_ranking_loss(predicted, per_sample, self.margin)
        pl_module.log("loss_prediction_loss", ranking.detach(), on_step=False, on_epoch=True, batch_size=len(targets))
        self._epoch_sum += float(ranking.detach()) * len(targets)
        self._epoch_count += len(targets)
        return ranking

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.head is not None:  # DDP does not wrap the head: its gradients are averaged here
            distributed.average_gradients(self.head.parameters())
        if self.optimizer is not None:
            decayed = self._decay_step is not None and trainer.global_step >= self._decay_step
            for group in self.optimizer.param_groups:
                group["lr"] = self.head_lr * (self.lr_decay if decayed else 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_count:
            self.epoch_losses.append(self._epoch_sum / self._epoch_count)
        self._epoch_sum, self._epoch_count = 0.0, 0

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._patch.restore()
        self._capturing, self._in_fit = False, False

    # ----- prediction and state -----------------------------------------------------------
    def predict_loss(self, model: nn.Module, inputs: Any) -> Tensor:
        """The head's predicted loss ``(B,)`` for ``inputs``, running ``model`` in eval mode."""
        if self.head is None:
            raise ValueError("Expected a trained loss-prediction head, but the callback has not seen a training batch.")
        model.eval()
        self.head.eval()
        with tap_features(model, self.layers) as captured:
            call_model(model, inputs)
        missing = [name for name in self.layers if name not in captured]
        if missing:
            raise ValueError(f"Expected the layers {missing} to run in the model's forward, but they did not.")
        return self.head([captured[name] for name in self.layers]).float()

    def state_dict(self) -> dict[str, Any]:
        if self.head is None:
            return {"in_dims": None, "head": None, "optimizer": None, "in_fit": self._in_fit}
        return {
            "in_fit": self._in_fit,
            "in_dims": list(self.head.in_dims),
            "head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("head") is None:
            self.head, self.optimizer = None, None
            return
        device = next(self.head.parameters()).device if self.head is not None else torch.device("cpu")
        self._pending_optimizer_state = state_dict.get("optimizer") if self.own_optimizer else None
        self._build_head(list(state_dict["in_dims"]), device)
        assert self.head is not None
        self.head.load_state_dict(state_dict["head"])
        # saved during a fit (a Lightning checkpoint): the resumed fit keeps the head; saved between fits (the
        # loop's state): the next fit starts afresh, as it would have without the interruption
        self._restored = bool(state_dict.get("in_fit", True))
