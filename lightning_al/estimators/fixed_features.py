"""Embeddings that do not come from the task model: a frozen encoder, or features computed once.

At round 0 of a cold start no label exists and the task model has never been trained, so its
penultimate features are those of a random network: a poor space to cluster (TypiClust) or to
cover (ProbCover) in. Hacohen et al. 2022 and Yehuda et al. 2022 use self-supervised features
instead (SimCLR, Chen et al. 2020; see `lightning_al.self_supervised`). These estimators provide such
``embeddings`` to any strategy that requires them, while ``probs`` still come from the task model
(``task.probs(model(x))``) when also required.

A frozen encoder's embedding of a sample does not change between rounds, so `FrozenEncoder` computes
it once per dataset id and serves it from a cache afterwards; with ``cache_dir`` the cache is also a
file named by fingerprints of the dataset (`dataset_fingerprint`) and of the encoder's weights
(`module_fingerprint`), which a repeated or resumed run reads back.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_al._atomic import atomic_open
from lightning_al.estimators.base import Estimator, TrainFn
from lightning_al.model_call import KeywordInputs, PositionalInputs, apply, call_model
from lightning_al.outputs import EMBEDDINGS, PROBS
from lightning_al.tasks import ALL_TASKS

CACHE_FORMAT = 1
# Weights of the per-sample input checksum: cos(j · golden angle), distinct for every input position j.
_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))
# Two checksums agree when they differ by at most this fraction of the sum of absolute input values (+ 1).
_CHECKSUM_RTOL = 1e-6


# ----- fingerprints ----------------------------------------------------------------------------------------
def _update_with_tensor(digest: Any, tensor: Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def _update_with_value(digest: Any, value: Any, where: str) -> None:
    if isinstance(value, Tensor):
        _update_with_tensor(digest, value)
    elif isinstance(value, np.ndarray) or hasattr(value, "__array_interface__"):  # numpy arrays, PIL images
        array = np.ascontiguousarray(np.asarray(value))
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _update_with_value(digest, value[key], where)
        digest.update(b"}")
    elif isinstance(value, (tuple, list)):
        digest.update(b"(")
        for item in value:
            _update_with_value(digest, item, where)
        digest.update(b")")
    elif value is None or isinstance(value, (bool, int, float, complex, str, bytes, np.generic)):
        digest.update(f"{type(value).__name__}:{value!r}".encode())
    else:
        raise TypeError(
            f"Expected {where} to hold tensors, arrays, images, numbers, strings or containers of them, "
            f"but got a {type(value).__name__}."
        )


def dataset_fingerprint(dataset: Any) -> str:
    """SHA-256 (hex) of every item of a map-style dataset, in index order: its values, dtypes and shapes.

    Two datasets have the same fingerprint when they hold the same items at the same indices. The
    items are read once (with the dataset's transform: pass the evaluation-transform dataset). A
    ``TensorDataset`` is hashed from its tensors directly.

    Args:
        dataset: a sized, indexable dataset (or a tensor, whose first axis indexes the items) whose items are
            tensors, numpy arrays, images, numbers, strings, or tuples/lists/dicts of them.

    Raises:
        TypeError: an item holds a value of another kind (its fingerprint would not be reproducible).
    """
    digest = hashlib.sha256(b"lightning_al.dataset")
    if isinstance(dataset, Tensor):
        _update_with_tensor(digest, dataset)
        return digest.hexdigest()
    tensors = getattr(dataset, "tensors", None)
    if isinstance(dataset, torch.utils.data.TensorDataset) and isinstance(tensors, tuple):
        for tensor in tensors:
            _update_with_tensor(digest, tensor)
        return digest.hexdigest()
    try:
        size = len(dataset)
    except TypeError as error:
        raise TypeError(
            f"Expected `dataset` to be a sized, indexable dataset, but got {type(dataset).__name__}."
        ) from error
    digest.update(f"len={size}".encode())
    for index in range(size):
        _update_with_value(digest, dataset[index], f"dataset item {index}")
    return digest.hexdigest()


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 (hex) of a module's class and its ``state_dict``: every parameter's and buffer's name, dtype,
    shape and bytes (on the CPU). Equal weights of the same class give the same fingerprint.

    Args:
        module: any ``nn.Module``.
    """
    digest = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, value in module.state_dict().items():
        digest.update(name.encode())
        if isinstance(value, Tensor):
            _update_with_tensor(digest, value)
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


# ----- per-sample input checksums --------------------------------------------------------------------------
def _batch_tensors(inputs: Any, size: int) -> list[Tensor]:
    """The tensors of ``inputs`` whose first axis is the batch (``size`` rows), in a fixed order."""
    if isinstance(inputs, Tensor):
        return [inputs] if inputs.ndim >= 1 and inputs.shape[0] == size else []
    if isinstance(inputs, Mapping):
        return [t for key in sorted(inputs, key=repr) for t in _batch_tensors(inputs[key], size)]
    if isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
        return [t for item in inputs for t in _batch_tensors(item, size)]
    return []


def input_checksums(inputs: Any, size: int) -> Tensor:
    """Two float64 checksums per sample of a batch of model inputs: ``(size, 2)``, on the CPU.

    For every input tensor with ``size`` rows (flattened to ``(size, F)``): ``sum_j x_j cos(j θ)``, with θ
    the golden angle, and ``sum_j |x_j|``, added over the tensors. A changed, moved or permuted value
    changes the first; they serve to check that a sample is the one its cached features were computed
    from, not as a cryptographic hash.

    Args:
        inputs: a batch of model inputs (a tensor, or a tuple/dict of them) as the pool's loader yields it.
        size: the batch size ``B``.
    """
    total = torch.zeros(size, 2, dtype=torch.float64)
    for tensor in _batch_tensors(inputs, size):
        tensor = tensor.detach()
        if tensor.device.type == "mps":  # no float64 there
            tensor = tensor.cpu()
        flat = tensor.reshape(size, -1).to(torch.float64)
        if flat.is_complex():
            flat = torch.view_as_real(flat).reshape(size, -1)
        weights = torch.cos(torch.arange(flat.shape[1], device=flat.device, dtype=torch.float64) * _GOLDEN_ANGLE)
        total += torch.stack([flat @ weights, flat.abs().sum(dim=1)], dim=1).cpu()
    return total


def _take_rows(inputs: Any, keep: Tensor, size: int) -> Any:
    """``inputs`` restricted to the rows ``keep`` (a ``(size,)`` mask); None if some part cannot be sliced."""
    if isinstance(inputs, Tensor):
        return inputs[keep.to(inputs.device)] if inputs.ndim >= 1 and inputs.shape[0] == size else None
    if isinstance(inputs, KeywordInputs | PositionalInputs | dict | tuple | list):
        items = list(inputs.items()) if isinstance(inputs, Mapping) else list(enumerate(inputs))
        taken = [(key, _take_rows(value, keep, size)) for key, value in items]
        if any(value is None for _, value in taken):
            return None
        if isinstance(inputs, Mapping):
            return type(inputs)(taken) if isinstance(inputs, KeywordInputs) else dict(taken)
        values = [value for _, value in taken]
        return PositionalInputs(values) if isinstance(inputs, PositionalInputs) else type(inputs)(values)
    return None


# ----- the cache ------------------------------------------------------------------------------------------
class _FeatureCache:
    """Rows ``(D,)`` of features and ``(2,)`` input checksums by dataset id, in host tensors grown on demand."""

    def __init__(self) -> None:
        self.features: Tensor | None = None
        self.checksums = torch.zeros(0, 2, dtype=torch.float64)
        self.filled = torch.zeros(0, dtype=torch.bool)
        self.dirty = False

    def __len__(self) -> int:
        return int(self.filled.sum())

    def _grow(self, max_id: int, dim: int) -> None:
        size = self.filled.shape[0]
        if max_id < size and self.features is not None:
            return
        capacity = max(max_id + 1, 2 * size)
        with torch.inference_mode(False):  # plain tensors, writable inside and outside the scoring pass
            features = torch.zeros(capacity, dim)
            checksums = torch.zeros(capacity, 2, dtype=torch.float64)
            filled = torch.zeros(capacity, dtype=torch.bool)
            if self.features is not None:
                features[:size], checksums[:size], filled[:size] = self.features, self.checksums, self.filled
        self.features, self.checksums, self.filled = features, checksums, filled

    def hits(self, ids: Tensor) -> Tensor:
        """``(B,)`` mask of the ids with a cached row."""
        inside = ids < self.filled.shape[0]
        hit = torch.zeros_like(ids, dtype=torch.bool)
        hit[inside] = self.filled[ids[inside]]
        return hit

    def store(self, ids: Tensor, features: Tensor, checksums: Tensor) -> None:
        if self.features is not None and features.shape[1] != self.features.shape[1]:
            raise ValueError(
                f"Expected the encoder's features to keep their width {self.features.shape[1]}, "
                f"but got {features.shape[1]}."
            )
        self._grow(int(ids.max()), features.shape[1])
        self.features[ids] = features.detach().float().cpu()
        self.checksums[ids] = checksums
        self.filled[ids] = True
        self.dirty = True

    def rows(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(ids_M, features_M_D, checksums_M_2)`` of the filled rows."""
        ids = self.filled.nonzero().flatten()
        if self.features is None:
            return ids, torch.zeros(0, 0), self.checksums[ids]
        return ids, self.features[ids], self.checksums[ids]


def _check_checksums(ids: Tensor, cached: Tensor, seen: Tensor) -> None:
    """Refuse samples whose inputs differ from those their cached features were computed from."""
    tolerance = _CHECKSUM_RTOL * (cached[:, 1].abs() + seen[:, 1].abs() + 1.0)
    bad = ((cached - seen).abs() > tolerance[:, None]).any(dim=1)
    if bad.any():
        raise ValueError(
            f"Expected the inputs of dataset ids {ids[bad][:10].tolist()} to be those their cached features were "
            "computed from, but they differ: the pool's transform is random, or the dataset changed under the "
            "same ids. Give the pool a deterministic evaluation transform, pass `cache=False` to encode every "
            "round, or use another `cache_dir` / `dataset_fingerprint`."
        )


def _check_rows(features: Tensor, expected: int) -> None:
    if features.shape[0] != expected:
        raise ValueError(
            f"Expected `encoder` to return one row of features per sample ({expected}), but got {features.shape[0]}."
        )


class FrozenEncoder(Estimator):
    """``embeddings = encoder(x).flatten(1)`` from a user's pretrained encoder that the loop never trains.

    The encoder runs in eval mode on the scoring device (it moves there with the model). Its
    weights are not part of any fit: the loop's Trainer fits only the task model. ``probs`` come
    from the task model. Typical encoders: a self-supervised one (`lightning_al.self_supervised`,
    SimCLR as in Hacohen et al. 2022 and Yehuda et al. 2022), an ImageNet backbone, a fixed PCA.

    **Cache.** With ``cache=True`` each sample's embedding is computed the first time its dataset id
    is scored and served from a host table afterwards (``(num_items, D)`` floats), so later rounds run
    the encoder on no sample twice. Every cached row keeps two checksums of the sample's inputs
    (`input_checksums`); a sample whose inputs differ from those its row was computed from (a random
    pool transform, a changed dataset) is refused, never mixed in. Before every round's scoring (the
    `fit` hook) the encoder's weights are fingerprinted again (`module_fingerprint`); if they changed,
    the cache starts afresh.

    **Cache file.** With ``cache_dir`` (and the dataset's ``dataset_fingerprint``), the table is also
    written to ``cache_dir/frozen-<dataset>-<encoder>.pt`` (16 hex digits of each fingerprint; the full
    ones are in the file and checked when it is read) before every round's scoring and by `save_cache`,
    merged with what the file already holds. A repeated or resumed run on the same dataset with the same
    encoder reads it back and encodes only the samples it lacks; a file whose recorded fingerprints differ
    is refused. The encoder fingerprint is taken from the weights as the scoring pass runs them (after a
    ``"bf16-true"`` precision has cast them, say), so a run at another precision uses another file.

    The cache is a memo, not run state: `state_dict` is empty, and a resumed run refills the cache from
    the file or by encoding.

    Args:
        encoder: module mapping a batch of the model's inputs to features ``(B, ...)``.
        cache: keep each dataset id's embedding after its first computation (needs the batch's ids).
        cache_dir: folder of the cache file; None keeps the cache in memory only.
        dataset_fingerprint: `dataset_fingerprint` of the pool's dataset (required with ``cache_dir``:
            the estimator never sees the dataset itself).
    """

    provides = frozenset({PROBS, EMBEDDINGS})
    tasks = ALL_TASKS

    def __init__(
        self,
        encoder: nn.Module,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        dataset_fingerprint: str | None = None,
    ) -> None:
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"Expected `encoder` to be a torch.nn.Module, but got {type(encoder).__name__}.")
        if not isinstance(cache, bool):
            raise TypeError(f"Expected `cache` to be a bool, but got {cache!r}.")
        if cache_dir is not None and not isinstance(cache_dir, (str, Path)):
            raise TypeError(f"Expected `cache_dir` to be a path or None, but got {type(cache_dir).__name__}.")
        if cache_dir is not None and not cache:
            raise ValueError(f"Expected `cache=True` with a `cache_dir`, but got cache=False and {cache_dir!r}.")
        if cache_dir is not None and (not isinstance(dataset_fingerprint, str) or not dataset_fingerprint):
            raise ValueError(
                "Expected `dataset_fingerprint` (lightning_al.estimators.fixed_features.dataset_fingerprint of the "
                f"pool's dataset) with a `cache_dir`, but got {dataset_fingerprint!r}."
            )
        if dataset_fingerprint is not None and cache_dir is None:
            raise ValueError(
                f"Expected a `cache_dir` to name the cache file with `dataset_fingerprint` {dataset_fingerprint!r}, "
                "but got None."
            )
        self.encoder = encoder
        self.cache = cache
        self.needs_ids = cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.dataset_fingerprint = dataset_fingerprint
        self.encoder_fingerprint: str | None = None  # of the weights the cache was computed with
        self._cache = _FeatureCache()

    def modules(self) -> list[nn.Module]:
        """The encoder."""
        return [self.encoder]

    # ----- the cache file ---------------------------------------------------------------------------------
    @property
    def cache_path(self) -> Path | None:
        """The cache file (known once the encoder has been fingerprinted, at the first scoring); None without
        ``cache_dir``."""
        if self.cache_dir is None or self.encoder_fingerprint is None or self.dataset_fingerprint is None:
            return None
        return self.cache_dir / f"frozen-{self.dataset_fingerprint[:16]}-{self.encoder_fingerprint[:16]}.pt"

    def _header(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "dataset": self.dataset_fingerprint, "encoder": self.encoder_fingerprint}

    def _read_file(self) -> dict[str, Any] | None:
        path = self.cache_path
        if path is None or not path.exists():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        header = {key: saved.get(key) for key in ("format", "dataset", "encoder")} if isinstance(saved, dict) else {}
        if header != self._header():
            raise ValueError(
                f"Expected the cache file `{path}` to hold features of dataset {self.dataset_fingerprint} encoded "
                f"by encoder {self.encoder_fingerprint} (format {CACHE_FORMAT}), but it records {header}. Remove "
                "it or use another `cache_dir`."
            )
        return saved

    def _start_cache(self) -> None:
        """Fingerprint the encoder and load the cache file's rows, if any (the first scoring of a run)."""
        self.encoder_fingerprint = module_fingerprint(self.encoder)
        self._cache = _FeatureCache()
        saved = self._read_file()
        if saved is not None and saved["ids"].numel():
            self._cache.store(saved["ids"], saved["features"], saved["checksums"])
            self._cache.dirty = False

    def save_cache(self) -> Path | None:
        """Write the cached rows to the cache file (merged with the rows it holds); returns its path.

        Nothing is written without ``cache_dir`` or while nothing new was cached. The write is atomic;
        processes writing the same file concurrently can lose each other's new rows, never corrupt them
        (a lost row is recomputed later).
        """
        path = self.cache_path
        if path is None or not self._cache.dirty:
            return path
        ids, features, checksums = self._cache.rows()
        saved = self._read_file()
        if saved is not None and saved["ids"].numel():
            missing = ~torch.isin(saved["ids"], ids)
            ids = torch.cat([ids, saved["ids"][missing]])
            features = torch.cat([features, saved["features"][missing]])
            checksums = torch.cat([checksums, saved["checksums"][missing]])
        with atomic_open(path, "wb") as handle:
            torch.save({**self._header(), "ids": ids, "features": features, "checksums": checksums}, handle)
        self._cache.dirty = False
        return path

    def fit(self, model: nn.Module, train: TrainFn) -> None:
        """Before each round's scoring: persist the rows cached so far; start afresh if the encoder changed."""
        del model, train
        if not self.cache or self.encoder_fingerprint is None:
            return
        self.save_cache()
        if module_fingerprint(self.encoder) != self.encoder_fingerprint:
            self._start_cache()

    # ----- scoring ----------------------------------------------------------------------------------------
    def _encode(self, inputs: Any) -> Tensor:
        self.encoder.eval()
        with torch.no_grad():
            features = apply(self.encoder, inputs)
        if not isinstance(features, Tensor) or features.ndim < 2:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"Expected `encoder` to return features of shape (B, ...), but got {shape}.")
        return features.flatten(1).float()

    def _cached_embeddings(self, inputs: Any, ids: Tensor) -> Tensor:
        """``(B, D)`` embeddings of the batch, encoding only the ids the cache lacks."""
        if self.encoder_fingerprint is None:
            self._start_cache()
        ids_cpu = ids.detach().cpu().long()
        size = ids_cpu.numel()
        checksums = input_checksums(inputs, size)
        hit = self._cache.hits(ids_cpu)
        if hit.any():
            _check_checksums(ids_cpu[hit], self._cache.checksums[ids_cpu[hit]], checksums[hit])
        if hit.all():
            device = next(iter(_batch_tensors(inputs, size)), ids).device
            return self._cache.features[ids_cpu].to(device)
        miss = ~hit
        part = _take_rows(inputs, miss, size) if hit.any() else inputs
        if part is None:  # inputs that cannot be sliced by row: encode the whole batch, keep the misses
            encoded = self._encode(inputs)
            _check_rows(encoded, size)
            self._cache.store(ids_cpu[miss], encoded[miss.to(encoded.device)], checksums[miss])
        else:
            encoded = self._encode(part)
            _check_rows(encoded, int(miss.sum()))
            self._cache.store(ids_cpu[miss], encoded, checksums[miss])
        return self._cache.features[ids_cpu].to(encoded.device)

    def predict(
        self, model: nn.Module, inputs: Any, needs: frozenset[str], ids: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``embeddings`` ``(B, D)`` from the encoder (or the cache, by the batch's dataset ``ids`` ``(B,)``) and/or
        ``probs`` ``(B, C)`` from ``model``, as ``needs`` asks. Without ``ids`` nothing is cached."""
        out: dict[str, Tensor] = {}
        if EMBEDDINGS in needs:
            use_cache = self.cache and ids is not None and ids.numel() > 0
            out[EMBEDDINGS] = self._cached_embeddings(inputs, ids) if use_cache else self._encode(inputs)
        if PROBS in needs:
            model.eval()
            out[PROBS] = self.task.probs(call_model(model, inputs))
        return out

    @property
    def num_cached(self) -> int:
        """How many dataset ids have a cached embedding."""
        return len(self._cache)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.encoder).__name__}, cache={self.cache})"


class PrecomputedEmbeddings(Estimator):
    """``embeddings`` looked up by dataset id in a table computed once (e.g. self-supervised features).

    Row ``i`` of the table is the embedding of dataset item ``i`` (the dataset index, the identity
    of a sample everywhere in this library). The table stays on the CPU; only the rows of each
    batch are copied. `lightning_al.self_supervised.pretrain_simclr` returns such a table (its
    ``features``).

    Args:
        features: ``(len(dataset), D)`` floating tensor, or the path of a file saved with
            ``torch.save`` holding one (loaded with ``weights_only=True``, so no code runs on load).
    """

    provides = frozenset({PROBS, EMBEDDINGS})
    tasks = ALL_TASKS
    needs_ids = True

    def __init__(self, features: Tensor | str | Path) -> None:
        source = features
        if isinstance(features, (str, Path)):
            features = torch.load(Path(features), map_location="cpu", weights_only=True)
        if not isinstance(features, Tensor):
            raise TypeError(f"Expected `features` to be a torch.Tensor or a path to one, but got {type(source)!r}.")
        if features.ndim != 2 or not features.is_floating_point() or features.shape[0] == 0:
            raise ValueError(
                f"Expected `features` to be a non-empty floating tensor of shape (num_items, D), "
                f"but got dtype={features.dtype}, shape={tuple(features.shape)}."
            )
        bad = ~torch.isfinite(features).all(dim=1)
        if bad.any():
            raise ValueError(
                f"Expected `features` to be finite, but rows {bad.nonzero().flatten()[:10].tolist()} hold NaN or inf."
            )
        self.features = features.detach().cpu()

    def predict(
        self, model: nn.Module, inputs: Any, needs: frozenset[str], ids: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``embeddings`` ``(B, D)``, the table's rows ``ids`` ``(B,)``, and/or ``probs`` ``(B, C)`` from ``model``."""
        out: dict[str, Tensor] = {}
        if EMBEDDINGS in needs:
            if ids is None:
                raise ValueError("Expected the batch's dataset `ids` to look up precomputed features, but got None.")
            ids = ids.cpu().long()
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.features.shape[0]):
                raise ValueError(
                    f"Expected dataset ids in [0, {self.features.shape[0]}) (one row of `features` per item), "
                    f"but got ids in [{int(ids.min())}, {int(ids.max())}]."
                )
            out[EMBEDDINGS] = self.features[ids].float()
        if PROBS in needs:
            model.eval()
            out[PROBS] = self.task.probs(call_model(model, inputs))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_items={self.features.shape[0]}, dim={self.features.shape[1]})"
