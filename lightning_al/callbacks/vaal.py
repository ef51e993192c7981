"""Variational adversarial active learning: a VAE and a discriminator trained beside the task model.

Sinha, Ebrahimi & Darrell 2019, "Variational Adversarial Active Learning". A β-VAE learns a
latent space of labelled and unlabelled inputs while trying to make every latent look
"labelled"; a discriminator learns to tell labelled latents from unlabelled ones. Samples the
discriminator is most sure are unlabelled are the ones the labelled set represents worst.

This implementation uses small MLPs over the **flattened** model input (images are flattened;
the paper's convolutional VAE is out of scope), trained with their own optimisers during the
main model's fit; the task model is never touched.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

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
) -> tuple[Tensor, Tensor]:
    r"""The VAE's objective of VAAL (Sinha et al. 2019, eqs. 1–3) and its reconstruction part.

    For each of the labelled and unlabelled batches: squared error summed over features and
    averaged over samples, plus `\beta` times the mean `gaussian_kl`; plus
    ``adversary_weight`` times the BCE that makes the discriminator call both batches'
    `\mu` "labelled" (target 1).

    Args:
        vae: the VAE being trained.
        discriminator: the discriminator, whose gradients this loss also fills (zero them before its own step).
        labelled: a batch of labelled inputs ``(B, *input_shape)``.
        unlabelled: a batch of unlabelled inputs ``(B', *input_shape)``.
        beta: weight of the KL term.
        adversary_weight: weight of the adversarial term.
        generator: source of the VAE's sampling noise.

    Returns:
        ``(total, reconstruction)``, two scalar tensors.
    """
    total = labelled.new_zeros(())
    reconstruction = labelled.new_zeros(())
    adversarial = labelled.new_zeros(())
    for x in (labelled, unlabelled):
        recon_B_D, mu_B_L, logvar_B_L = vae(x, generator)
        rec = (recon_B_D - vae.flatten(x)).pow(2).sum(dim=1).mean()
        reconstruction = reconstruction + rec
        total = total + rec + beta * gaussian_kl(mu_B_L, logvar_B_L).mean()
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


class VAALCallback(Callback):
    """Train a VAAL β-VAE and discriminator beside the main model (Sinha et al. 2019, Algorithm 1).

    After every training batch, the labelled batch's inputs (``trainer.datamodule.inputs``) and a
    batch drawn from the unlabelled pool (``trainer.datamodule.pool_dataloader()``'s dataset,
    reshuffled each pass with the callback's own generator, as many samples as the labelled batch)
    drive ``vae_steps`` VAE updates (a fresh unlabelled batch each) and ``discriminator_steps``
    discriminator updates with the callback's own Adam optimisers. The task model, its
    optimiser and the global RNG are left alone. Inputs are flattened (see `VAE`).

    Modules are built at the first batch of a fit from its input shape, on the model's device,
    with weights drawn from ``seed``; with ``reset_each_fit`` (default, as the paper retrains
    every cycle) they are rebuilt, identically, at every fit. ``vae_losses``,
    ``reconstruction_losses`` and ``discriminator_losses`` record the current fit's values per
    batch; their epoch means are logged as ``vaal_vae_loss`` and ``vaal_discriminator_loss``.

    Args:
        latent_dim: VAE latent dimension.
        beta: weight of the KL term (β-VAE).
        adversary_weight: weight λ of the VAE's adversarial term.
        vae_steps: VAE updates per training batch.
        discriminator_steps: discriminator updates per training batch.
        lr: Adam learning rate of both modules.
        seed: seeds module weights, the VAE's noise and the pool shuffles.
        reset_each_fit: rebuild the modules at the start of every fit.
        hidden: hidden width of the VAE (the discriminator uses half of it, at least 1).
    """

    def __init__(
        self,
        latent_dim: int = 32,
        beta: float = 1.0,
        adversary_weight: float = 1.0,
        vae_steps: int = 1,
        discriminator_steps: int = 1,
        lr: float = 5e-4,
        seed: int = 0,
        reset_each_fit: bool = True,
        hidden: int = 128,
    ) -> None:
        check_int("latent_dim", latent_dim, 1)
        check_int("vae_steps", vae_steps, 1)
        check_int("discriminator_steps", discriminator_steps, 0)
        check_int("seed", seed, 0)
        check_int("hidden", hidden, 1)
        for name, value in (("beta", beta), ("adversary_weight", adversary_weight)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"Expected `{name}` to be a float >= 0, but got {value!r}.")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise ValueError(f"Expected `lr` to be a float > 0, but got {lr!r}.")
        if not isinstance(reset_each_fit, bool):
            raise TypeError(f"Expected `reset_each_fit` to be a bool, but got {reset_each_fit!r}.")
        self.latent_dim, self.beta, self.adversary_weight = latent_dim, float(beta), float(adversary_weight)
        self.vae_steps, self.discriminator_steps, self.lr = vae_steps, discriminator_steps, float(lr)
        self.seed, self.reset_each_fit, self.hidden = seed, reset_each_fit, hidden
        self.vae: VAE | None = None
        self.discriminator: Discriminator | None = None
        self.vae_optimizer: torch.optim.Optimizer | None = None
        self.discriminator_optimizer: torch.optim.Optimizer | None = None
        self.vae_losses: list[float] = []
        self.reconstruction_losses: list[float] = []
        self.discriminator_losses: list[float] = []
        self._noise: torch.Generator | None = None
        self._unlabelled = UnlabelledBatches(seed)
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
            discriminator = Discriminator(self.latent_dim, max(1, self.hidden // 2))
        self.vae, self.discriminator = vae.to(device), discriminator.to(device)
        self.vae_optimizer = torch.optim.Adam(self.vae.parameters(), lr=self.lr)
        self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr)
        self._noise = torch.Generator(device=torch.device(device)).manual_seed(self.seed)
        self._unlabelled.restart(self.seed)

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
        if not (callable(getattr(dm, "pool_dataloader", None)) and callable(getattr(dm, "inputs", None))):
            raise ValueError(
                "Expected the Trainer's datamodule to be an ActiveDataModule (with `pool_dataloader` and "
                f"`inputs`), but got {type(dm).__name__}."
            )
        if not self._restored:  # a fresh fit; a resumed one keeps the loaded state
            if self.reset_each_fit:
                self.vae = self.discriminator = None
            self.vae_losses, self.reconstruction_losses, self.discriminator_losses = [], [], []
        self._unlabelled.restart()
        self._restored, self._in_fit = False, True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._in_fit = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._in_fit = False

    def _next_unlabelled(self, trainer: pl.Trainer, batch_size: int, device: torch.device) -> Tensor | None:
        return self._unlabelled.next(trainer.datamodule, batch_size, device)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        labelled = trainer.datamodule.inputs(batch)
        if not isinstance(labelled, Tensor):
            raise TypeError(f"Expected the model input of a batch to be a Tensor, but got {type(labelled).__name__}.")
        device = labelled.device
        if self.vae is None:
            self.build(tuple(labelled.shape[1:]), device)
        self._to(device)
        unlabelled = self._next_unlabelled(trainer, labelled.shape[0], device)
        if unlabelled is None:  # the pool is exhausted: nothing to contrast the labelled set with
            return
        self.vae.train()
        self.discriminator.train()
        with torch.enable_grad():
            for step in range(self.vae_steps):
                if step:
                    unlabelled = self._next_unlabelled(trainer, labelled.shape[0], device)
                loss, reconstruction = vae_loss(
                    self.vae, self.discriminator, labelled, unlabelled, self.beta, self.adversary_weight, self._noise
                )
                self.vae_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_gradients(self.vae.parameters())
                self.vae_optimizer.step()
            disc = None
            for step in range(self.discriminator_steps):
                if step:
                    unlabelled = self._next_unlabelled(trainer, labelled.shape[0], device)
                disc = discriminator_loss(self.vae, self.discriminator, labelled, unlabelled)
                self.discriminator_optimizer.zero_grad(set_to_none=True)
                disc.backward()
                distributed.average_gradients(self.discriminator.parameters())
                self.discriminator_optimizer.step()
        self.discriminator.zero_grad(set_to_none=True)  # the VAE's adversarial term left gradients here
        self.vae_losses.append(float(loss.detach()))
        self.reconstruction_losses.append(float(reconstruction.detach()))
        log = dict(on_step=False, on_epoch=True, batch_size=labelled.shape[0])
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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # saved during a fit (a Lightning checkpoint): the resumed fit keeps the modules; saved between fits
        # (the loop's state): the next fit starts afresh, as it would have without the interruption
        self._restored = bool(state_dict.get("in_fit", False))
        self.vae_losses = list(state_dict["vae_losses"])
        self.reconstruction_losses = list(state_dict["reconstruction_losses"])
        self.discriminator_losses = list(state_dict["discriminator_losses"])
        if "input_shape" not in state_dict:
            self.vae = self.discriminator = self.vae_optimizer = self.discriminator_optimizer = None
            self._unlabelled.generator.set_state(state_dict["shuffle"])
            return
        device = next(self.vae.parameters()).device if self.vae is not None else torch.device("cpu")
        self.build(tuple(state_dict["input_shape"]), device)
        self.vae.load_state_dict(state_dict["vae"])
        self.discriminator.load_state_dict(state_dict["discriminator"])
        self.vae_optimizer.load_state_dict(state_dict["vae_optimizer"])
        self.discriminator_optimizer.load_state_dict(state_dict["discriminator_optimizer"])
        self._unlabelled.generator.set_state(state_dict["shuffle"])
        if self._noise.device.type == state_dict["noise_device"]:
            self._noise.set_state(state_dict["noise"])
