"""Variational adversarial active learning: a VAE and a discriminator trained beside the task model.

Sinha, Ebrahimi & Darrell 2019, "Variational Adversarial Active Learning". A β-VAE learns a
latent space of labelled and unlabelled inputs while trying to make every latent look
"labelled"; a discriminator learns to tell labelled latents from unlabelled ones. Samples the
discriminator is most sure are unlabelled are the ones the labelled set represents worst.

This implementation uses small MLPs over the **flattened** model input (images are flattened;
the paper's convolutional VAE is out of scope), trained with their own optimisers during the
main model's fit; the task model is never touched. The defaults follow the authors' code
(github.com/sinhasam/vaal): two VAE steps and one discriminator step per training batch, each VAE
step on a fresh labelled and unlabelled batch; the ELBO as element-mean squared error plus β times
the KL summed over batch and latent; a 512-wide discriminator; Kaiming-normal weights with zero
biases; Adam at 5e-4 for both modules. Each departure the library used before is an option
(``loss_form="per_sample"``, ``vae_steps=1``, ``fresh_labelled=False``, ``discriminator_hidden``,
``weight_init="default"``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_al import distributed
from lightning_al._validation import check_int
from lightning_al.data.unlabelled import UnlabelledBatches
from lightning_al.namespace import Callback

if TYPE_CHECKING:
    import pytorch_lightning as pl


def gaussian_kl(mu_B_L: Tensor, logvar_B_L: Tensor) -> Tensor:
    r"""KL divergence of ``N(mu, diag(exp(logvar)))`` from ``N(0, I)``, per sample, in nats.

    `\tfrac12 \sum_l \bigl(\mu_l^2 + e^{v_l} - 1 - v_l\bigr)` (Kingma & Welling 2014,
    "Auto-Encoding Variational Bayes", appendix B).

    Args:
        mu_B_L: ``(B, L)`` means.
        logvar_B_L: ``(B, L)`` log-variances ``v``.

    Returns:
        ``(B,)`` divergences.
    """
    return 0.5 * (mu_B_L.pow(2) + logvar_B_L.exp() - 1.0 - logvar_B_L).sum(dim=1)


LossForm = Literal["authors", "per_sample"]
LOSS_FORMS: tuple[str, ...] = ("authors", "per_sample")
WeightInit = Literal["kaiming", "default"]
WEIGHT_INITS: tuple[str, ...] = ("kaiming", "default")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"Expected `{name}` to be one of {', '.join(map(repr, choices))}, but got {value!r}.")


def elbo_terms(
    x_B_D: Tensor, recon_B_D: Tensor, mu_B_L: Tensor, logvar_B_L: Tensor, loss_form: LossForm = "authors"
) -> tuple[Tensor, Tensor]:
    r"""The reconstruction and KL terms of a β-VAE's loss on one batch, as two scalars (Sinha et al. 2019, eq. 1).

    ``"authors"`` (the authors' code): the squared error averaged over every element,
    `\tfrac{1}{BD}\sum_{b,d}(\hat x_{bd} - x_{bd})^2`, and the KL summed over the batch and the latent,
    `\sum_b \mathrm{KL}_b` (`gaussian_kl`). ``"per_sample"``: the per-sample ELBO, the squared error
    summed over features and the KL, both averaged over the batch, `\tfrac1B\sum_{b,d}(\hat x_{bd} -
    x_{bd})^2` and `\tfrac1B\sum_b \mathrm{KL}_b`. Relative to the reconstruction, the authors' form
    weighs the KL ``B · D`` times more.

    Args:
        x_B_D: ``(B, D)`` flattened inputs.
        recon_B_D: ``(B, D)`` their reconstructions.
        mu_B_L: ``(B, L)`` posterior means.
        logvar_B_L: ``(B, L)`` posterior log-variances.
        loss_form: ``"authors"`` or ``"per_sample"``.

    Returns:
        ``(reconstruction, kl)``, two scalar tensors (multiply ``kl`` by β yourself).

    Example:
        >>> x, recon = torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
        >>> mu, logvar = torch.tensor([[1.0], [0.0]]), torch.zeros(2, 1)
        >>> [round(t.item(), 3) for t in elbo_terms(x, recon, mu, logvar)]
        [0.75, 0.5]
        >>> [round(t.item(), 3) for t in elbo_terms(x, recon, mu, logvar, "per_sample")]
        [1.5, 0.25]
    """
    _check_choice("loss_form", loss_form, LOSS_FORMS)
    squared_B_D = (recon_B_D - x_B_D).pow(2)
    kl_B = gaussian_kl(mu_B_L, logvar_B_L)
    if loss_form == "authors":
        return squared_B_D.mean(), kl_B.sum()
    return squared_B_D.sum(dim=1).mean(), kl_B.mean()


def kaiming_init_(module: nn.Module, keep: tuple[nn.Module, ...] = ()) -> None:
    """Kaiming-normal weights (fan-in, ReLU gain √2) and zero biases for every ``nn.Linear`` of ``module``, in place.

    The initialisation of the authors' VAAL code (He et al. 2015, "Delving deep into rectifiers").
    Layers in ``keep`` keep their current (PyTorch default) weights: the authors' code leaves the
    VAE's mean and log-variance heads at PyTorch's default, so `VAALCallback` passes the encoder's
    last layer here.

    Args:
        module: the module whose linear layers are re-initialised.
        keep: linear layers to leave as they are.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear) and not any(layer is k for k in keep):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class VAE(nn.Module):
    """A small MLP variational auto-encoder over flattened inputs.

    ``encode(x)`` → ``(mu, logvar)``, each ``(B, latent_dim)``; ``decode(z)`` → ``(B, D)``
    with ``D = prod(input_shape)``; ``forward(x, generator)`` samples
    ``z = mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)`` drawn from ``generator`` and
    returns ``(reconstruction_B_D, mu_B_L, logvar_B_L)``. Inputs of any shape ``(B, *input_shape)``
    are flattened to ``(B, D)``.

    Args:
        input_shape: the shape of one input (an int for vectors).
        latent_dim: dimension ``L`` of the latent space.
        hidden: width of the hidden layers.
    """

    def __init__(self, input_shape: int | tuple[int, ...], latent_dim: int = 32, hidden: int = 128) -> None:
        super().__init__()
        shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
        if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(
                f"Expected `input_shape` to be a positive int or a tuple of them, but got {input_shape!r}."
            )
        check_int("latent_dim", latent_dim, 1)
        check_int("hidden", hidden, 1)
        self.input_shape, self.latent_dim = shape, latent_dim
        input_dim = math.prod(shape)
        self.encoder = nn.Sequential(
            nn.Linear(input_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, input_dim)
        )

    def flatten(self, x: Tensor) -> Tensor:
        """``(B, *input_shape)`` → ``(B, D)`` float."""
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.input_shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Expected inputs of shape (B, {', '.join(map(str, self.input_shape))}), but got {got}.")
        return x.flatten(1).float()

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)`` of the posterior, each ``(B, latent_dim)``, for inputs ``x`` ``(B, *input_shape)``."""
        mu_B_L, logvar_B_L = self.encoder(self.flatten(x)).chunk(2, dim=1)
        return mu_B_L, logvar_B_L

    def decode(self, z_B_L: Tensor) -> Tensor:
        """The reconstruction ``(B, D)`` of latents ``z_B_L`` ``(B, latent_dim)``, flattened."""
        return self.decoder(z_B_L)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(reconstruction_B_D, mu_B_L, logvar_B_L)`` of ``x``, through a latent sampled with ``generator``."""
        mu_B_L, logvar_B_L = self.encode(x)
        eps_B_L = torch.randn(mu_B_L.shape, generator=generator, device=mu_B_L.device, dtype=mu_B_L.dtype)
        z_B_L = mu_B_L + (0.5 * logvar_B_L).exp() * eps_B_L
        return self.decode(z_B_L), mu_B_L, logvar_B_L


class Discriminator(nn.Module):
    """MLP from a latent ``(B, L)`` to the logit ``(B,)`` of "this sample is labelled".

    Args:
        latent_dim: dimension ``L`` of the latent space.
        hidden: width of the hidden layers.
    """

    def __init__(self, latent_dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        check_int("latent_dim", latent_dim, 1)
        check_int("hidden", hidden, 1)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, z_B_L: Tensor) -> Tensor:
        """The logits ``(B,)`` of "labelled" for latents ``z_B_L`` ``(B, L)``."""
        return self.net(z_B_L).squeeze(1)


def vae_loss(
    vae: VAE,
    discriminator: Discriminator,
    labelled: Tensor,
    unlabelled: Tensor,
    beta: float,
    adversary_weight: float,
    generator: torch.Generator | None = None,
    loss_form: LossForm = "authors",
) -> tuple[Tensor, Tensor]:
    r"""The VAE's objective of VAAL (Sinha et al. 2019, eqs. 1–3) and its reconstruction part.

    For each of the labelled and unlabelled batches, the reconstruction term plus `\beta` times the
    KL term of `elbo_terms` in ``loss_form``; plus ``adversary_weight`` times the BCE that makes the
    discriminator call both batches' `\mu` "labelled" (target 1), each batch's BCE averaged over it
    and the two summed.

    Args:
        vae: the VAE being trained.
        discriminator: the discriminator, whose gradients this loss also fills (zero them before its own step).
        labelled: a batch of labelled inputs ``(B, *input_shape)``.
        unlabelled: a batch of unlabelled inputs ``(B', *input_shape)``.
        beta: weight of the KL term.
        adversary_weight: weight of the adversarial term.
        generator: source of the VAE's sampling noise.
        loss_form: ``"authors"`` (element-mean squared error, KL summed over batch and latent) or
            ``"per_sample"`` (both per sample, averaged over the batch); see `elbo_terms`.

    Returns:
        ``(total, reconstruction)``, two scalar tensors; ``reconstruction`` sums both batches' reconstruction terms.
    """
    _check_choice("loss_form", loss_form, LOSS_FORMS)
    total = labelled.new_zeros(())
    reconstruction = labelled.new_zeros(())
    adversarial = labelled.new_zeros(())
    for x in (labelled, unlabelled):
        recon_B_D, mu_B_L, logvar_B_L = vae(x, generator)
        rec, kl = elbo_terms(vae.flatten(x), recon_B_D, mu_B_L, logvar_B_L, loss_form)
        reconstruction = reconstruction + rec
        total = total + rec + beta * kl
        logits_B = discriminator(mu_B_L)
        adversarial = adversarial + F.binary_cross_entropy_with_logits(logits_B, torch.ones_like(logits_B))
    return total + adversary_weight * adversarial, reconstruction


def discriminator_loss(vae: VAE, discriminator: Discriminator, labelled: Tensor, unlabelled: Tensor) -> Tensor:
    """BCE of the discriminator on detached ``mu``: labelled → 1, unlabelled → 0 (each batch averaged).

    Args:
        vae: the VAE whose encoder means ``mu`` the discriminator reads (no gradient reaches it).
        discriminator: the discriminator being trained.
        labelled: a batch of labelled inputs ``(B, *input_shape)``.
        unlabelled: a batch of unlabelled inputs ``(B', *input_shape)``.

    Returns:
        The scalar loss, the sum of both batches' mean BCE.
    """
    with torch.no_grad():
        mu_lab, _ = vae.encode(labelled)
        mu_unl, _ = vae.encode(unlabelled)
    logits_lab, logits_unl = discriminator(mu_lab), discriminator(mu_unl)
    return F.binary_cross_entropy_with_logits(
        logits_lab, torch.ones_like(logits_lab)
    ) + F.binary_cross_entropy_with_logits(logits_unl, torch.zeros_like(logits_unl))


class _LabelledSource:
    """A datamodule's labelled training set where `UnlabelledBatches` reads a pool: its own shuffle of it."""

    def __init__(self, dm: Any) -> None:
        self._dm = dm

    def pool_dataloader(self) -> Any:
        return self._dm.train_dataloader()

    def inputs(self, batch: Any) -> Any:
        return self._dm.inputs(batch)


class VAALCallback(Callback):
    """Train a VAAL β-VAE and discriminator beside the main model (Sinha et al. 2019, Algorithm 1).

    After every training batch, ``vae_steps`` VAE updates and then ``discriminator_steps``
    discriminator updates, with the callback's own Adam optimisers. Each update reads a labelled
    batch and an unlabelled batch: the first VAE update reads the training batch's inputs
    (``trainer.datamodule.inputs``) and a batch from the unlabelled pool
    (``trainer.datamodule.pool_dataloader()``'s dataset, reshuffled each pass with the callback's own
    generator); every later update draws a fresh unlabelled batch and, with ``fresh_labelled``, a
    fresh labelled one from the callback's own shuffle of the labelled training set (otherwise it
    reuses the training batch). Drawn batches have the size of the fit's first training batch,
    fewer at the end of a pass (a labelled set smaller than a batch is one batch). The first
    discriminator update reads the last VAE update's batches, as in the authors' code. The task
    model, its optimiser, its batches and the global RNG are left alone. Inputs are flattened (see
    `VAE`).

    Modules are built at the first batch of a fit from its input shape, on the model's device,
    with weights drawn from ``seed``; with ``reset_each_fit`` (default, as the paper retrains
    every cycle) they are rebuilt, identically, at every fit. ``vae_losses``,
    ``reconstruction_losses`` and ``discriminator_losses`` record the current fit's values per
    training batch (the last update's); their epoch means are logged as ``vaal_vae_loss`` and
    ``vaal_discriminator_loss``.

    The defaults are the authors' (github.com/sinhasam/vaal: ``arguments.py``, ``solver.py``,
    ``model.py``). ``vae_steps=1, loss_form="per_sample", fresh_labelled=False,
    discriminator_hidden=64, weight_init="default"`` is the form this library used before.

    Args:
        latent_dim: VAE latent dimension.
        beta: weight β of the KL term (β-VAE).
        adversary_weight: weight λ of the VAE's adversarial term.
        vae_steps: VAE updates per training batch (the authors': 2).
        discriminator_steps: discriminator updates per training batch (the authors': 1).
        lr: Adam learning rate of both modules.
        seed: seeds module weights, the VAE's noise and the batch shuffles.
        reset_each_fit: rebuild the modules at the start of every fit.
        hidden: hidden width of the VAE's MLPs.
        discriminator_hidden: hidden width of the discriminator (the authors': 512).
        loss_form: ``"authors"`` (element-mean squared error + β · KL summed over batch and latent) or
            ``"per_sample"`` (per-sample squared error and KL, averaged over the batch); see `elbo_terms`.
        fresh_labelled: VAE updates after the first draw a fresh labelled batch too (the authors' code),
            rather than reusing the training batch.
        weight_init: ``"kaiming"`` (Kaiming-normal weights, zero biases; the VAE's mean/log-variance
            head left at PyTorch's default, as in the authors' code; see `kaiming_init_`) or
            ``"default"`` (PyTorch's default initialisation everywhere).
    """

    def __init__(
        self,
        latent_dim: int = 32,
        beta: float = 1.0,
        adversary_weight: float = 1.0,
        vae_steps: int = 2,
        discriminator_steps: int = 1,
        lr: float = 5e-4,
        seed: int = 0,
        reset_each_fit: bool = True,
        hidden: int = 128,
        discriminator_hidden: int = 512,
        loss_form: LossForm = "authors",
        fresh_labelled: bool = True,
        weight_init: WeightInit = "kaiming",
    ) -> None:
        check_int("latent_dim", latent_dim, 1)
        check_int("vae_steps", vae_steps, 1)
        check_int("discriminator_steps", discriminator_steps, 0)
        check_int("seed", seed, 0)
        check_int("hidden", hidden, 1)
        check_int("discriminator_hidden", discriminator_hidden, 1)
        for name, value in (("beta", beta), ("adversary_weight", adversary_weight)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"Expected `{name}` to be a float >= 0, but got {value!r}.")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise ValueError(f"Expected `lr` to be a float > 0, but got {lr!r}.")
        for name, value in (("reset_each_fit", reset_each_fit), ("fresh_labelled", fresh_labelled)):
            if not isinstance(value, bool):
                raise TypeError(f"Expected `{name}` to be a bool, but got {value!r}.")
        _check_choice("loss_form", loss_form, LOSS_FORMS)
        _check_choice("weight_init", weight_init, WEIGHT_INITS)
        self.latent_dim, self.beta, self.adversary_weight = latent_dim, float(beta), float(adversary_weight)
        self.vae_steps, self.discriminator_steps, self.lr = vae_steps, discriminator_steps, float(lr)
        self.seed, self.reset_each_fit, self.hidden = seed, reset_each_fit, hidden
        self.discriminator_hidden, self.loss_form = discriminator_hidden, loss_form
        self.fresh_labelled, self.weight_init = fresh_labelled, weight_init
        self.vae: VAE | None = None
        self.discriminator: Discriminator | None = None
        self.vae_optimizer: torch.optim.Optimizer | None = None
        self.discriminator_optimizer: torch.optim.Optimizer | None = None
        self.vae_losses: list[float] = []
        self.reconstruction_losses: list[float] = []
        self.discriminator_losses: list[float] = []
        self._noise: torch.Generator | None = None
        self._unlabelled = UnlabelledBatches(seed)
        self._labelled = UnlabelledBatches(seed + 1)  # the callback's own shuffle of the labelled set
        self._restored = False  # a state saved during a fit was loaded: the next fit start keeps it
        self._in_fit = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(latent_dim=self.latent_dim, seed=self.seed)

    # ----- modules -----------------------------------------------------------------------
    def build(self, input_shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        """(Re)create the modules and optimisers on ``device`` for inputs of ``input_shape``, weights from ``seed``."""
        with torch.random.fork_rng(devices=[]):  # the global CPU RNG is restored afterwards
            torch.default_generator.manual_seed(self.seed)
            vae = VAE(tuple(input_shape), self.latent_dim, self.hidden)
            discriminator = Discriminator(self.latent_dim, self.discriminator_hidden)
            if self.weight_init == "kaiming":
                kaiming_init_(vae, keep=(vae.encoder[-1],))
                kaiming_init_(discriminator)
        self.vae, self.discriminator = vae.to(device), discriminator.to(device)
        self.vae_optimizer = torch.optim.Adam(self.vae.parameters(), lr=self.lr)
        self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr)
        self._noise = torch.Generator(device=torch.device(device)).manual_seed(self.seed)
        self._unlabelled.restart(self.seed)
        self._labelled.restart(self.seed + 1)

    def _to(self, device: torch.device) -> None:
        assert self.vae is not None and self.discriminator is not None  # internal invariant
        if next(self.vae.parameters()).device == device:
            return
        self.vae.to(device)
        self.discriminator.to(device)
        for optimizer in (self.vae_optimizer, self.discriminator_optimizer):
            for state in optimizer.state.values():
                for key, value in state.items():
                    if isinstance(value, Tensor) and key != "step":
                        state[key] = value.to(device)
        self._noise = torch.Generator(device=device).manual_seed(self.seed)  # device-bound: re-seeded on a move

    # ----- hooks -------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = getattr(trainer, "datamodule", None)
        if not (
            callable(getattr(dm, "pool_dataloader", None))
            and callable(getattr(dm, "inputs", None))
            and callable(getattr(dm, "train_dataloader", None))
        ):
            raise ValueError(
                "Expected the Trainer's datamodule to be an ActiveDataModule (with `pool_dataloader`, "
                f"`train_dataloader` and `inputs`), but got {type(dm).__name__}."
            )
        if not self._restored:  # a fresh fit; a resumed one keeps the loaded state
            if self.reset_each_fit:
                self.vae = self.discriminator = None
            self.vae_losses, self.reconstruction_losses, self.discriminator_losses = [], [], []
        self._unlabelled.restart()
        self._labelled.restart()
        self._restored, self._in_fit = False, True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._in_fit = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._in_fit = False

    def _next_unlabelled(self, trainer: pl.Trainer, batch_size: int, device: torch.device) -> Tensor | None:
        return self._unlabelled.next(trainer.datamodule, batch_size, device)

    def _next_batches(
        self, trainer: pl.Trainer, labelled: Tensor, batch_size: int, device: torch.device
    ) -> tuple[Tensor, Tensor | None]:
        """A fresh labelled batch (``labelled`` again unless ``fresh_labelled``) and a fresh unlabelled one."""
        if self.fresh_labelled:
            labelled = self._labelled.next(_LabelledSource(trainer.datamodule), batch_size, device)
        return labelled, self._next_unlabelled(trainer, batch_size, device)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        labelled = trainer.datamodule.inputs(batch)
        if not isinstance(labelled, Tensor):
            raise TypeError(f"Expected the model input of a batch to be a Tensor, but got {type(labelled).__name__}.")
        device, batch_size = labelled.device, labelled.shape[0]
        if self.vae is None:
            self.build(tuple(labelled.shape[1:]), device)
        self._to(device)
        unlabelled = self._next_unlabelled(trainer, batch_size, device)
        if unlabelled is None:  # the pool is exhausted: nothing to contrast the labelled set with
            return
        self.vae.train()
        self.discriminator.train()
        with torch.enable_grad():
            for step in range(self.vae_steps):
                if step:
                    labelled, unlabelled = self._next_batches(trainer, labelled, batch_size, device)
                loss, reconstruction = vae_loss(
                    self.vae,
                    self.discriminator,
                    labelled,
                    unlabelled,
                    self.beta,
                    self.adversary_weight,
                    self._noise,
                    loss_form=self.loss_form,
                )
                self.vae_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_gradients(self.vae.parameters())
                self.vae_optimizer.step()
            disc = None
            for step in range(self.discriminator_steps):
                if step:
                    labelled, unlabelled = self._next_batches(trainer, labelled, batch_size, device)
                disc = discriminator_loss(self.vae, self.discriminator, labelled, unlabelled)
                self.discriminator_optimizer.zero_grad(set_to_none=True)
                disc.backward()
                distributed.average_gradients(self.discriminator.parameters())
                self.discriminator_optimizer.step()
        self.discriminator.zero_grad(set_to_none=True)  # the VAE's adversarial term left gradients here
        self.vae_losses.append(float(loss.detach()))
        self.reconstruction_losses.append(float(reconstruction.detach()))
        log = dict(on_step=False, on_epoch=True, batch_size=batch_size)
        pl_module.log("vaal_vae_loss", loss.detach(), **log)
        if disc is not None:
            self.discriminator_losses.append(float(disc.detach()))
            pl_module.log("vaal_discriminator_loss", disc.detach(), **log)

    # ----- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "vae_losses": list(self.vae_losses),
            "reconstruction_losses": list(self.reconstruction_losses),
            "discriminator_losses": list(self.discriminator_losses),
            "shuffle": self._unlabelled.generator.get_state(),
            "labelled_shuffle": self._labelled.generator.get_state(),
            "in_fit": self._in_fit,
        }
        if self.vae is not None:
            state.update(
                input_shape=tuple(self.vae.input_shape),
                vae=self.vae.state_dict(),
                discriminator=self.discriminator.state_dict(),
                vae_optimizer=self.vae_optimizer.state_dict(),
                discriminator_optimizer=self.discriminator_optimizer.state_dict(),
                noise=self._noise.get_state(),
                noise_device=self._noise.device.type,
            )
        return state

    def _load_shuffles(self, state_dict: dict[str, Any]) -> None:
        self._unlabelled.generator.set_state(state_dict["shuffle"])
        if "labelled_shuffle" in state_dict:  # absent from states saved before the labelled shuffle existed
            self._labelled.generator.set_state(state_dict["labelled_shuffle"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # saved during a fit (a Lightning checkpoint): the resumed fit keeps the modules; saved between fits
        # (the loop's state): the next fit starts afresh, as it would have without the interruption
        self._restored = bool(state_dict.get("in_fit", False))
        self.vae_losses = list(state_dict["vae_losses"])
        self.reconstruction_losses = list(state_dict["reconstruction_losses"])
        self.discriminator_losses = list(state_dict["discriminator_losses"])
        if "input_shape" not in state_dict:
            self.vae = self.discriminator = self.vae_optimizer = self.discriminator_optimizer = None
            self._load_shuffles(state_dict)
            return
        device = next(self.vae.parameters()).device if self.vae is not None else torch.device("cpu")
        self.build(tuple(state_dict["input_shape"]), device)
        self.vae.load_state_dict(state_dict["vae"])
        self.discriminator.load_state_dict(state_dict["discriminator"])
        self.vae_optimizer.load_state_dict(state_dict["vae_optimizer"])
        self.discriminator_optimizer.load_state_dict(state_dict["discriminator_optimizer"])
        self._load_shuffles(state_dict)
        if self._noise.device.type == state_dict["noise_device"]:
            self._noise.set_state(state_dict["noise"])
