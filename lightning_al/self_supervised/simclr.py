"""SimCLR pre-training of any encoder on the unlabelled pool, and its features cached by fingerprint.

Chen, Kornblith, Norouzi & Hinton 2020, "A Simple Framework for Contrastive Learning of Visual
Representations" (ICML): two random views of every sample pass through the encoder ``f`` and a projection
head ``g``; the NT-Xent loss (`lightning_al.self_supervised.nt_xent_loss`) pulls the two projections of a
sample together and pushes the other ``2B - 2`` views of the batch away. The representation used downstream
is ``h = f(x)``, before the head (the paper's Section 4.2: it is better than ``g(h)``). TypiClust and
ProbCover (Hacohen et al. 2022, Yehuda et al. 2022) select in such a space.

`SimCLR` is the LightningModule (fit it with any Trainer and dataloader); `pretrain_simclr` fits it on a
pool held in memory, encodes the pool, and caches encoder and features in a file named by fingerprints of
the pool, the encoder's initial weights and every setting, so pre-training runs once across rounds and runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_al import namespace
from lightning_al._atomic import atomic_open
from lightning_al._validation import check_int
from lightning_al.estimators.fixed_features import dataset_fingerprint, module_fingerprint
from lightning_al.self_supervised.augment import ImageAugment
from lightning_al.self_supervised.loss import nt_xent_loss
from lightning_al.trainer_args import QUIET, quiet_banners

CACHE_FORMAT = 1


def _check_positive(name: str, value: object, zero: bool = False) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not (value >= 0 if zero else value > 0)
    ):
        raise ValueError(f"Expected `{name}` to be a finite number {'>= 0' if zero else '> 0'}, but got {value!r}.")


def _input_of(batch: Any, input_key: int | str | None) -> Tensor:
    if input_key is None or isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (Mapping, tuple, list)):
        return batch[input_key]
    raise TypeError(f"Expected a tensor, tuple or dict batch, but got {type(batch).__name__}.")


class SimCLR(namespace.default().LightningModule):
    """SimCLR: an encoder ``f`` and a projection head ``g`` trained with NT-Xent on two views of each sample.

    Each training step draws two views of the batch with ``augment`` (from a generator seeded with
    ``seed`` plus the process rank, on the batch's device), encodes both in one forward (so batch-norm
    statistics cover both, as in the authors' code), projects ``z = g(f(x))`` with the head
    ``Linear(D, hidden) → ReLU → Linear(hidden, projection_dim)`` (the paper's ``W2 σ(W1 h)``, 128 outputs,
    hidden width ``D`` as in the authors' code) and minimises `nt_xent_loss` at ``temperature``.
    ``forward`` returns the representation ``h = f(x).flatten(1)``, before the head.

    **Optimiser.** Adam with ``lr`` and ``weight_decay``, the learning rate decayed to 0 by a per-step
    cosine (the paper: LARS at batch 4096 with linear warm-up and cosine decay; LARS exists to keep
    very large batches stable, and at the batches of a pool of a few thousand Adam needs neither it nor
    warm-up). Negatives come from the process's own batch (no gathering across devices).

    Args:
        encoder: the module ``f`` to pre-train, mapping a batch of inputs to features ``(B, ...)``.
        feature_dim: width ``D`` of the flattened features ``f(x).flatten(1)``.
        augment: the views, a callable ``(x, generator) -> x'`` (default: `ImageAugment` with SimCLR's values).
        projection_dim: output width of the head (the paper: 128).
        projection_hidden: hidden width of the head; None: ``feature_dim``.
        temperature: NT-Xent's ``τ`` (0.5, the authors' CIFAR-10 recipe at batch 512; 0.1 at batch 4096).
        lr: Adam's learning rate at the start of the cosine.
        weight_decay: Adam's weight decay (the paper: 1e-6).
        seed: seed of the views' generator.
        input_key: where a batch holds the inputs (index of a tuple, key of a dict); None: the batch is the input.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        augment: ImageAugment | None = None,
        projection_dim: int = 128,
        projection_hidden: int | None = None,
        temperature: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        seed: int = 0,
        input_key: int | str | None = 0,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"Expected `encoder` to be a torch.nn.Module, but got {type(encoder).__name__}.")
        check_int("feature_dim", feature_dim, 1)
        check_int("projection_dim", projection_dim, 1)
        check_int("projection_hidden", projection_hidden, 1, optional=True)
        check_int("seed", seed, 0)
        _check_positive("temperature", temperature)
        _check_positive("lr", lr)
        _check_positive("weight_decay", weight_decay, zero=True)
        if augment is not None and not callable(augment):
            raise TypeError(f"Expected `augment` to be callable (x, generator) -> x, but got {type(augment).__name__}.")
        hidden = projection_hidden or feature_dim
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, projection_dim))
        self.augment = augment if augment is not None else ImageAugment()
        self.temperature, self.lr, self.weight_decay = temperature, lr, weight_decay
        self.seed, self.input_key = seed, input_key
        self._generator: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        """The representation ``h = f(x).flatten(1)`` ``(B, D)`` (before the projection head)."""
        return self.encoder(x).flatten(1)

    def on_fit_start(self) -> None:
        """Seed the views' generator on the training device (``seed`` + the process rank)."""
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed + self.trainer.global_rank)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """NT-Xent of the projections of two views of the batch's inputs ``(B, ...)``."""
        x = _input_of(batch, self.input_key)
        if self._generator is None or self._generator.device.type != x.device.type:
            self._generator = torch.Generator(device=x.device).manual_seed(self.seed)
        views = torch.cat([self.augment(x, self._generator), self.augment(x, self._generator)])
        z = self.head(self(views))
        loss = nt_xent_loss(z[: x.shape[0]], z[x.shape[0] :], self.temperature)
        self.log("simclr_loss", loss, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        """Adam over the encoder and the head, with a per-step cosine decay of the learning rate to 0."""
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@dataclass
class Pretrained:
    """The result of `pretrain_simclr`.

    Attributes:
        encoder: the pre-trained encoder, in eval mode: pass it as ``FrozenEncoder(encoder)``.
        features: ``(N, D)`` float32 representations ``f(x)`` of the pool, row ``i`` for item ``i``: pass them
            as ``PrecomputedEmbeddings(features)``.
        fingerprint: SHA-256 (hex) of the pool, the encoder's initial weights and every setting.
        cache_path: the cache file (None without ``cache_dir``).
        from_cache: whether encoder and features were read from the cache file (no training ran).
    """

    encoder: nn.Module
    features: Tensor
    fingerprint: str
    cache_path: Path | None
    from_cache: bool


def _pool_tensor(data: Tensor | Dataset, input_key: int | str | None) -> Tensor:
    """The pool's inputs stacked into one ``(N, ...)`` tensor."""
    if isinstance(data, Tensor):
        inputs = data
    elif isinstance(data, TensorDataset) and isinstance(input_key, int):
        inputs = data.tensors[input_key]
    else:
        try:
            size = len(data)  # type: ignore[arg-type]
        except TypeError as error:
            raise TypeError(
                f"Expected `data` to be a tensor or a sized dataset, but got {type(data).__name__}."
            ) from error
        items = [_input_of(data[i], input_key) for i in range(size)]
        if not all(isinstance(item, Tensor) for item in items):
            raise TypeError("Expected every item's input to be a tensor (apply the evaluation transform).")
        inputs = torch.stack(items) if items else torch.empty(0)
    if not inputs.is_floating_point() or inputs.ndim < 2 or inputs.shape[0] < 2:
        raise ValueError(
            f"Expected the pool's inputs to be a floating tensor (N, ...) with N >= 2, but got "
            f"dtype={inputs.dtype}, shape={tuple(inputs.shape)}."
        )
    return inputs


def encode(encoder: nn.Module, inputs: Tensor, batch_size: int = 1024) -> Tensor:
    """``encoder(x).flatten(1)`` of every row of ``inputs`` ``(N, ...)`` in eval mode, in batches, as float32
    ``(N, D)`` on the CPU (computed on the encoder's device).

    Args:
        encoder: any module mapping ``(B, ...)`` inputs to ``(B, ...)`` features.
        inputs: the samples, first axis ``N``.
        batch_size: rows per forward.
    """
    check_int("batch_size", batch_size, 1)
    parameter = next(iter(encoder.parameters()), None)
    device = parameter.device if parameter is not None else inputs.device
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            rows = [
                encoder(inputs[i : i + batch_size].to(device)).flatten(1).float().cpu()
                for i in range(0, inputs.shape[0], batch_size)
            ]
    finally:
        encoder.train(was_training)
    return torch.cat(rows)


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def pretrain_simclr(
    encoder: nn.Module,
    data: Tensor | Dataset,
    augment: ImageAugment | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    temperature: float = 0.5,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    projection_dim: int = 128,
    projection_hidden: int | None = None,
    seed: int = 0,
    input_key: int | str | None = 0,
    cache_dir: str | Path | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
) -> Pretrained:
    """Pre-train ``encoder`` with `SimCLR` on the unlabelled pool ``data``, encode the pool, cache both.

    Runs ``epochs`` epochs of shuffled batches of ``batch_size`` (the last partial batch dropped, as
    contrastive batches should be full) with a Trainer of the default Lightning namespace (quiet: no
    logger, checkpoints or progress bar; ``trainer_kwargs`` override, e.g. ``accelerator="gpu"``), from
    ``seed`` (the head's initial weights, the batch order and the views; the caller's global RNG state
    is restored afterwards). Then ``features = f(x)`` for every item (see `Pretrained`).

    With ``cache_dir``, the trained encoder's weights and the features are written to
    ``cache_dir/simclr-<fingerprint>.pt``; a later call with the same pool, the same initial encoder
    weights and the same settings loads them into ``encoder`` instead of training. The fingerprint covers
    the pool (`lightning_al.estimators.fixed_features.dataset_fingerprint`), the initial weights
    (`lightning_al.estimators.fixed_features.module_fingerprint`), ``repr(augment)`` (a custom ``augment``
    needs a ``__repr__`` that names its settings, or the cache never hits), every argument here and the
    plain-valued ``trainer_kwargs``.

    Args:
        encoder: the module ``f`` to train, ``(B, ...) → (B, ...)`` features; trained in place.
        data: the pool's inputs ``(N, ...)``, or a dataset whose items hold them at ``input_key`` (in dataset
            order, so row ``i`` of the features is item ``i``; use the evaluation transform).
        augment: the views (default `ImageAugment()`, SimCLR's values for images ``(B, C, H, W)``; for flat
            vectors pass ``ImageAugment(image_shape=...)``).
        epochs: passes over the pool.
        batch_size: samples per step (``2 * batch_size`` views); at most ``N``.
        temperature: NT-Xent's ``τ``.
        lr: Adam's initial learning rate.
        weight_decay: Adam's weight decay.
        projection_dim: output width of the projection head.
        projection_hidden: hidden width of the head (None: the feature width).
        seed: seed of the run.
        input_key: where a dataset item holds the input (index or key; None: the item is the input).
        cache_dir: folder of the cache file; None: no cache.
        trainer_kwargs: extra Trainer arguments.

    Returns:
        `Pretrained`: the encoder (eval mode) and the ``(N, D)`` features.
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"Expected `encoder` to be a torch.nn.Module, but got {type(encoder).__name__}.")
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 2)
    check_int("seed", seed, 0)
    check_int("projection_dim", projection_dim, 1)
    check_int("projection_hidden", projection_hidden, 1, optional=True)
    _check_positive("temperature", temperature)
    _check_positive("lr", lr)
    _check_positive("weight_decay", weight_decay, zero=True)
    if trainer_kwargs is not None and not isinstance(trainer_kwargs, dict):
        raise TypeError(f"Expected `trainer_kwargs` to be a dict or None, but got {type(trainer_kwargs).__name__}.")
    trainer_kwargs = dict(trainer_kwargs or {})
    inputs = _pool_tensor(data, input_key)
    if batch_size > inputs.shape[0]:
        raise ValueError(
            f"Expected `batch_size` to be at most the pool's {inputs.shape[0]} samples, but got {batch_size}."
        )
    augment = augment if augment is not None else ImageAugment()
    settings = {
        "augment": repr(augment),
        "epochs": epochs,
        "batch_size": batch_size,
        "temperature": temperature,
        "lr": lr,
        "weight_decay": weight_decay,
        "projection_dim": projection_dim,
        "projection_hidden": projection_hidden,
        "seed": seed,
        "trainer": {key: value for key, value in sorted(trainer_kwargs.items()) if _plain(value)},
    }
    key = hashlib.sha256(
        json.dumps(
            {
                "format": CACHE_FORMAT,
                "pool": dataset_fingerprint(inputs),
                "encoder": module_fingerprint(encoder),
                "settings": settings,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    path = Path(cache_dir) / f"simclr-{key[:16]}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("key") != key:
            raise ValueError(
                f"Expected the cache file `{path}` to hold the run with fingerprint {key}, but it records "
                f"{saved.get('key') if isinstance(saved, dict) else type(saved).__name__}. Remove it or use "
                "another `cache_dir`."
            )
        encoder.load_state_dict(saved["encoder"])
        return Pretrained(encoder.eval(), saved["features"], key, path, from_cache=True)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        feature_dim = encode(encoder, inputs[:2]).shape[1]
        parameter = next(iter(encoder.parameters()), None)
        home = parameter.device if parameter is not None else torch.device("cpu")
        module = SimCLR(
            encoder,
            feature_dim,
            augment=augment,
            projection_dim=projection_dim,
            projection_hidden=projection_hidden,
            temperature=temperature,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            input_key=0,
        )
        module.train()  # the encoder may come in eval mode (e.g. a loaded backbone)
        loader = DataLoader(
            TensorDataset(inputs),
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
        )
        with quiet_banners():
            trainer = namespace.default().Trainer(**{**QUIET, "max_epochs": epochs, **trainer_kwargs})
            trainer.fit(module, train_dataloaders=loader)
    encoder.to(trainer.strategy.root_device).eval()  # encode where it trained, then hand it back where it was
    features = encode(encoder, inputs)
    encoder.to(home)
    if path is not None and trainer.is_global_zero:
        with atomic_open(path, "wb") as handle:
            state = {name: value.detach().cpu() for name, value in encoder.state_dict().items()}
            torch.save(
                {"format": CACHE_FORMAT, "key": key, "settings": settings, "encoder": state, "features": features},
                handle,
            )
    return Pretrained(encoder, features, key, path, from_cache=False)
