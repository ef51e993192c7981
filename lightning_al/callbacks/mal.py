r"""Minimax active learning: minimax entropy on unlabelled data and a labelled/unlabelled discriminator.

Ebrahimi, Gan, Chen, Biamby, Salahi, Laielli, Zhu & Darrell 2021, "Minimax Active Learning"
(arXiv:2012.10467), built on the minimax entropy of Saito et al. 2019 ("Semi-supervised Domain
Adaptation via Minimax Entropy"). The task model is a feature encoder `F` followed by a
cosine classifier `C` (`CosineClassifier`). Besides the cross-entropy on labelled
data, on unlabelled data `u` the classifier *maximises* and the encoder *minimises*

    \mathcal{L}_\text{Ent}(u) = -\sum_{k=1}^K p(y=k \mid u) \log p(y=k \mid u),

which pulls the class prototypes towards the unlabelled features and clusters those features
around the prototypes, shrinking the gap between labelled and unlabelled data. A discriminator
`D` learns to tell the (`\ell_2`-normalised) encoder features of labelled samples
from those of unlabelled ones, as in VAAL.

What the model must provide. `MALCallback` trains the user's own LightningModule (with
automatic optimisation) and needs only:

- ``encoder_layer``: the name (``model.named_modules()``) of the module whose output is the
  feature `F(x)`, shape ``(B, D)`` (or ``(B, D, ...)``, flattened);
- a ``forward`` that returns the logits ``(B, K)`` computed from that feature; every layer
  between the encoder's output and the logits plays the classifier `C`. The paper's
  `C` is a `CosineClassifier` (a warning says when the model has none: entropy
  maximisation on an unnormalised linear head can win by shrinking its weights);
- a ``training_step`` that runs ``forward`` on the labelled batch (its features are captured
  there for the discriminator).

How it joins training. At ``on_fit_start`` the module's ``training_step`` is wrapped *on the
instance* (see `lightning_al.callbacks.step_patch.TrainingStepPatch`): after the user's
step, a batch drawn from the unlabelled pool runs through ``forward`` with the gradient reversed
at the encoder's output (`minimax_entropy`), and the step returns
``loss - entropy_weight * H``. One backward pass then moves `C` up the entropy and,
through the reversal, `F` down it. The discriminator is trained after each batch with its
own Adam optimiser on detached features, so it never touches the model's optimiser, and the
encoder is not trained to fool it: it only observes the features the minimax game shapes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_al import distributed
from lightning_al._validation import check_int
from lightning_al.callbacks.loss_prediction import check_layers, tap_features
from lightning_al.callbacks.step_patch import RestoresTrainingStep, TrainingStepPatch
from lightning_al.callbacks.vaal import Discriminator
from lightning_al.data.unlabelled import UnlabelledBatches
from lightning_al.functional.mal import cosine_logits
from lightning_al.model_call import call_model

if TYPE_CHECKING:
    import pytorch_lightning as pl


class CosineClassifier(nn.Module):
    r"""MAL's classifier `C`: logits `\frac{1}{T} \frac{w_k^\top f}{\|w_k\| \|f\|}`, no bias.

    Inputs ``(B, D)`` (or ``(B, D, ...)``, flattened) → logits ``(B, K)`` in ``[-1/T, 1/T]``;
    see `lightning_al.functional.mal.cosine_logits`.

    Args:
        in_features: feature size ``D``.
        num_classes: number of classes ``K``.
        temperature: ``T``; 0.05 is the value of Saito et al. 2019.
    """

    def __init__(self, in_features: int, num_classes: int, temperature: float = 0.05) -> None:
        super().__init__()
        check_int("in_features", in_features, 1)
        check_int("num_classes", num_classes, 1)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
            raise ValueError(f"Expected `temperature` to be a float > 0, but got {temperature!r}.")
        self.in_features, self.num_classes, self.temperature = in_features, num_classes, float(temperature)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's initialisation

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(B, K)`` of ``features`` ``(B, D)`` (or ``(B, D, ...)``, flattened)."""
        return cosine_logits(features.flatten(1), self.weight, self.temperature)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, temperature={self.temperature}"


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return -grad


def reverse_gradient(x: Tensor) -> Tensor:
    """``x`` itself in the forward pass; its gradient is negated in the backward pass.

    Reference: Ganin & Lempitsky 2015, "Unsupervised Domain Adaptation by Backpropagation" (ICML).
    """
    return _ReverseGradient.apply(x)


def entropy_of_logits(logits_B_K: Tensor) -> Tensor:
    r"""Per-sample entropy `-\sum_k p_k \log p_k` of ``softmax(logits_B_K)``, differentiable, in nats: ``(B,)``.

    Args:
        logits_B_K: ``(B, K)`` logits.
    """
    log_p = torch.log_softmax(logits_B_K.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def minimax_entropy(model: nn.Module, encoder: nn.Module, inputs: Any) -> tuple[Tensor, Tensor]:
    r"""MAL's unlabelled objective: the mean entropy of ``model(inputs)``, gradient reversed at ``encoder``.

    Returns ``(H, features)``: ``H`` the mean over the batch of `entropy_of_logits`, a
    scalar; ``features`` the encoder's output, detached and flattened, ``(B, D)``. Minimising
    ``-weight * H`` makes the layers after ``encoder`` (the classifier) ascend `H` and,
    because the gradient changes sign at the encoder's output, the encoder descend it: the
    `\min_F \max_C \mathcal{L}_\text{Ent}` game in one backward pass.
    """
    captured: list[Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(f"Expected the encoder layer to output a tensor, but got {type(output).__name__}.")
        captured.append(output.detach().flatten(1))
        return reverse_gradient(output)

    handle = encoder.register_forward_hook(hook)
    try:
        logits = call_model(model, inputs)
    finally:
        handle.remove()
    if not captured:
        raise ValueError("Expected the encoder layer to run in the model's forward, but it did not.")
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"Expected the model's forward to return logits of shape (B, K), but got {shape}.")
    return entropy_of_logits(logits).mean(), captured[-1]


def discriminator_loss(discriminator: nn.Module, labelled_B_D: Tensor, unlabelled_B_D: Tensor) -> Tensor:
    """BCE of the discriminator on normalised features: labelled → 1, unlabelled → 0 (each batch averaged).

    Args:
        discriminator: maps ``(B, D)`` features to ``(B,)`` logits of "labelled".
        labelled_B_D: ``(B, D)`` encoder features of labelled samples (``ℓ2``-normalised here).
        unlabelled_B_D: ``(B', D)`` encoder features of unlabelled samples.

    Returns:
        The scalar loss, the sum of both batches' mean BCE.
    """
    logits_lab = discriminator(F.normalize(labelled_B_D.float(), dim=1))
    logits_unl = discriminator(F.normalize(unlabelled_B_D.float(), dim=1))
    return F.binary_cross_entropy_with_logits(
        logits_lab, torch.ones_like(logits_lab)
    ) + F.binary_cross_entropy_with_logits(logits_unl, torch.zeros_like(logits_unl))


class MALCallback(RestoresTrainingStep):
    r"""Train the user's encoder and classifier with MAL's minimax entropy, and a discriminator beside them.

    Per training batch (Ebrahimi et al. 2021, §3): the model's loss (its labelled cross-entropy)
    becomes ``loss - entropy_weight * H`` with ``H`` the mean entropy on an unlabelled batch of the
    same size (`minimax_entropy`), drawn from ``trainer.datamodule.pool_dataloader()``'s
    dataset with the callback's own generator; then the `lightning_al.callbacks.vaal.Discriminator`
    takes one Adam step on the `discriminator_loss` of the labelled and unlabelled features.
    See the module docstring for what the model must provide.

    The discriminator is built at the first batch of a fit (its input size is the feature size),
    on the features' device, with weights drawn from ``seed``; with ``reset_each_fit`` (default,
    as every active-learning round retrains) it is rebuilt identically at every fit, unless a
    state saved during a fit was just loaded (a fit resumed from a Lightning checkpoint continues
    with the same discriminator, optimiser and records; its next unlabelled batches come from a
    fresh pass shuffled by the restored generator). ``entropies`` and
    ``discriminator_losses`` record the current fit's values per batch; their epoch means are
    logged as ``mal_entropy`` and ``mal_discriminator_loss``.

    Args:
        encoder_layer: name of the layer whose output is the feature `F(x)`.
        entropy_weight: λ, the weight of the unlabelled entropy in the model's loss.
        discriminator_hidden: hidden width of the discriminator.
        lr: Adam learning rate of the discriminator.
        seed: seeds the discriminator's weights and the unlabelled shuffles.
        reset_each_fit: rebuild the discriminator at the start of every fit.
    """

    def __init__(
        self,
        encoder_layer: str,
        entropy_weight: float = 0.1,
        discriminator_hidden: int = 64,
        lr: float = 5e-4,
        seed: int = 0,
        reset_each_fit: bool = True,
    ) -> None:
        if not isinstance(encoder_layer, str) or not encoder_layer:
            raise ValueError(
                f"Expected `encoder_layer` to be a layer name (a non-empty str), but got {encoder_layer!r}."
            )
        if isinstance(entropy_weight, bool) or not isinstance(entropy_weight, int | float) or not entropy_weight >= 0:
            raise ValueError(f"Expected `entropy_weight` to be a float >= 0, but got {entropy_weight!r}.")
        check_int("discriminator_hidden", discriminator_hidden, 1)
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise ValueError(f"Expected `lr` to be a float > 0, but got {lr!r}.")
        check_int("seed", seed, 0)
        if not isinstance(reset_each_fit, bool):
            raise TypeError(f"Expected `reset_each_fit` to be a bool, but got {reset_each_fit!r}.")
        self.encoder_layer, self.entropy_weight = encoder_layer, float(entropy_weight)
        self.discriminator_hidden, self.lr, self.seed = discriminator_hidden, float(lr), seed
        self.reset_each_fit = reset_each_fit
        self.discriminator: Discriminator | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.entropies: list[float] = []
        self.discriminator_losses: list[float] = []
        self._batches = UnlabelledBatches(seed)
        self._patch = TrainingStepPatch()
        self._encoder: nn.Module | None = None
        self._pending: tuple[Tensor, Tensor] | None = None
        self._in_fit = False
        self._restored = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(encoder_layer=self.encoder_layer, seed=self.seed)

    # ----- the discriminator -------------------------------------------------------------
    def build(self, feature_dim: int, device: torch.device | str = "cpu") -> None:
        """(Re)create the discriminator and its optimiser on ``device`` for features of size ``feature_dim``.

        The weights are drawn from ``seed``; the global RNG is left as it was.
        """
        with torch.random.fork_rng(devices=[]):  # the global CPU RNG is restored afterwards
            torch.manual_seed(self.seed)
            discriminator = Discriminator(feature_dim, self.discriminator_hidden)
        self.discriminator = discriminator.to(device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr)

    def unlabelled_prob(self, features_B_D: Tensor) -> Tensor:
        r"""``1 - D(f / ‖f‖)`` for ``f = features_B_D`` ``(B, D)``: the probability of "unlabelled" ``(B,)``."""
        if self.discriminator is None:
            raise RuntimeError("Expected the MALCallback to have trained during a fit before scoring, but it has not.")
        self.discriminator.eval()
        device = next(self.discriminator.parameters()).device
        with torch.no_grad():
            logits_B = self.discriminator(F.normalize(features_B_D.flatten(1).float().to(device), dim=1))
        return torch.sigmoid(-logits_B)  # 1 - sigmoid(l), without cancellation

    # ----- hooks -------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = getattr(trainer, "datamodule", None)
        if not (callable(getattr(dm, "pool_dataloader", None)) and callable(getattr(dm, "inputs", None))):
            raise ValueError(
                "Expected the Trainer's datamodule to be an ActiveDataModule (with `pool_dataloader` and "
                f"`inputs`), but got {type(dm).__name__}."
            )
        if not pl_module.automatic_optimization:
            raise ValueError("Expected a LightningModule with automatic optimisation for MAL's minimax entropy.")
        self._encoder = check_layers(pl_module, [self.encoder_layer], arg="encoder_layer")[self.encoder_layer]
        if not any(isinstance(module, CosineClassifier) for module in pl_module.modules()):
            warnings.warn(
                f"{type(pl_module).__name__} has no CosineClassifier: MAL's entropy maximisation expects a "
                "cosine classifier after the encoder (a linear head can raise the entropy by shrinking its weights).",
                stacklevel=2,
            )
        if not self._restored:  # a fresh fit; a resumed one keeps the loaded state
            if self.reset_each_fit:
                self.discriminator = self.optimizer = None
            self.entropies, self.discriminator_losses = [], []
            self._batches.restart(self.seed if self.reset_each_fit else None)
        else:
            self._batches.restart()
        if self.discriminator is not None:
            self.discriminator.to(pl_module.device)
            self.optimizer.load_state_dict(self.optimizer.state_dict())  # moves its state to the device
        self._restored, self._in_fit, self._pending = False, True, None

        def wrap(original: Any) -> Any:
            def training_step(*args: Any, **kwargs: Any) -> Any:
                return self._training_step(trainer, pl_module, original, *args, **kwargs)

            return training_step

        self._patch.install(pl_module, wrap)

    def _training_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, original: Any, *args: Any, **kwargs: Any
    ) -> Any:
        with tap_features(pl_module, [self.encoder_layer]) as captured:
            out = original(*args, **kwargs)
        loss = out["loss"] if isinstance(out, Mapping) else out
        if not isinstance(loss, Tensor):  # the user skipped this batch
            return out
        if self.encoder_layer not in captured:
            raise ValueError(f"Expected the layer {self.encoder_layer!r} to run in `training_step`, but it did not.")
        labelled_B_D = captured[self.encoder_layer].detach().flatten(1)
        unlabelled = self._batches.next(trainer.datamodule, labelled_B_D.shape[0], labelled_B_D.device)
        if unlabelled is None:  # the pool is exhausted: nothing to play the minimax game on
            return out
        entropy, unlabelled_B_D = minimax_entropy(pl_module, self._encoder, unlabelled)
        self._pending = (labelled_B_D, unlabelled_B_D)
        self.entropies.append(float(entropy.detach()))
        pl_module.log("mal_entropy", entropy.detach(), on_step=False, on_epoch=True, batch_size=len(unlabelled_B_D))
        total = loss - self.entropy_weight * entropy
        return {**out, "loss": total} if isinstance(out, Mapping) else total

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is None:
            return
        labelled_B_D, unlabelled_B_D = self._pending
        self._pending = None
        if self.discriminator is None:
            self.build(labelled_B_D.shape[1], labelled_B_D.device)
        self.discriminator.train()
        with torch.enable_grad():
            loss = discriminator_loss(self.discriminator, labelled_B_D, unlabelled_B_D)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(self.discriminator.parameters())
            self.optimizer.step()
        self.discriminator_losses.append(float(loss.detach()))
        pl_module.log(
            "mal_discriminator_loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(labelled_B_D)
        )

    def _restore(self) -> None:  # the fit ended, however it did
        self._patch.restore()
        self._pending, self._in_fit = None, False

    # ----- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "entropies": list(self.entropies),
            "discriminator_losses": list(self.discriminator_losses),
            "shuffle": self._batches.generator.get_state(),
            "in_fit": self._in_fit,
        }
        if self.discriminator is not None:
            state.update(
                feature_dim=self.discriminator.net[0].in_features,
                discriminator={k: v.detach().cpu().clone() for k, v in self.discriminator.state_dict().items()},
                optimizer=self.optimizer.state_dict(),
            )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.entropies = list(state_dict["entropies"])
        self.discriminator_losses = list(state_dict["discriminator_losses"])
        if "feature_dim" in state_dict:
            device = next(self.discriminator.parameters()).device if self.discriminator is not None else "cpu"
            self.build(int(state_dict["feature_dim"]), device)
            self.discriminator.load_state_dict(state_dict["discriminator"])
            self.optimizer.load_state_dict(state_dict["optimizer"])
        else:
            self.discriminator = self.optimizer = None
        self._batches.generator.set_state(state_dict["shuffle"])
        self._restored = bool(state_dict["in_fit"])  # a state saved during a fit survives the next fit start
