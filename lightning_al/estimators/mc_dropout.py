"""Monte Carlo dropout (Gal & Ghahramani 2016) with the deterministic prefix computed once per batch.

Dropout stays stochastic at inference while the rest of the model is in eval mode (batch
norm uses its running statistics); ``T`` stochastic passes give ``mc_probs`` ``(B, T, C)``.
Two ways to run the ``T`` passes on a batch of ``B``, both on an unmodified model:

- **Cached prefix** (default). A forward pre-hook on the dropout layers tiles the input of
  the first dropout layer that runs ``T`` times along the batch axis, *t-major*
  (``x.repeat(T, 1, ...)``: row ``t * B + b`` is pass ``t`` of sample ``b``). Everything
  before that layer runs once on ``B`` rows, everything after it once on ``T * B`` rows,
  and the logits ``(T * B, C)`` are viewed as ``(T, B, C)``. Exact when the layers after the
  first dropout only combine tensors derived from its input (or broadcast a single row).
- **Full tile** (fallback). If the cached forward fails (e.g. a skip connection from before
  the dropout is added after it: ``B`` rows meet ``T * B`` rows), or a later dropout layer gets
  a row count that is not a multiple of ``T``, or the output is not ``(T * B, C)``, the whole
  input is tiled ``T`` times (same layout) and one forward runs on ``T * B`` rows. A warning is
  issued once per model, which takes this path from then on.

Memory: when ``T * B`` exceeds ``max_rows`` the passes run in groups of ``max(1, max_rows // B)``,
one forward per group; the prefix then runs once per group, so the default (32768) keeps ``T = 20``
passes over batches of 1024 in one forward.

Masks. The dropout layers are put in eval mode and hooks multiply each layer's input by
``keep / q`` with ``keep ~ Bernoulli(q)`` (inverted dropout, the distribution ``nn.Dropout``
samples): elementwise for ``nn.Dropout``, whole channels (axis 1) for ``nn.Dropout1d/2d/3d``.
Independent masks come from random bits drawn in bulk (`scaled_keep_mask`): ``q`` is
``1 - p`` rounded to a multiple of ``2**-16`` (exact for p = 0.5, 0.25, ...; within ``2**-17``
otherwise) and the scale ``1 / q`` uses that ``q``, so every unit keeps its mean exactly; p = 0.5
costs one random bit per element. The first dropout layer's input is tiled and masked in one
pass, written into memory kept from the previous call (one buffer of ``T * B * features`` per
layer, held by the estimator) when no other tensor still uses it: a fresh allocation of that size
costs more than the masking itself on CPU. The masks come from the estimator's own generator,
seeded by ``(seed, call number)``, so scoring is reproducible. Alpha dropout layers keep their own sampling. With
``consistent_masks=True`` (consistent MC dropout, Kirsch et al. 2019) the ``T`` masks of each
layer (``uniform >= p``, so ``q = 1 - p``) are drawn from ``seed`` per layer and feature shape
and reused for every batch, so pass ``t`` of every pool sample runs the same sub-network; they
are drawn afresh after every fit of the model (each round), as the paper's masks are per acquisition.

References: Gal & Ghahramani 2016, "Dropout as a Bayesian Approximation: Representing Model
Uncertainty in Deep Learning"; Gal, Islam & Ghahramani 2017, "Deep Bayesian Active Learning
with Image Data"; Kirsch, van Amersfoort & Gal 2019, "BatchBALD: Efficient and Diverse Batch
Acquisition for Deep Bayesian Active Learning".
"""

from __future__ import annotations

import itertools
import math
import warnings
import weakref
import zlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_al._validation import check_int
from lightning_al.estimators.base import Estimator
from lightning_al.estimators.dropout_masks import scaled_keep_mask
from lightning_al.model_call import call_model
from lightning_al.outputs import MC_PROBS, PROBS
from lightning_al.tasks import ALL_TASKS

if TYPE_CHECKING:
    import pytorch_lightning as pl

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_CHANNEL_DROPOUT_TYPES = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_ALPHA_DROPOUT_TYPES = (nn.AlphaDropout, nn.FeatureAlphaDropout)
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
_MASK_CACHE_SIZE = 32  # consistent-mask entries kept; variable feature shapes evict the oldest
_MASK64 = (1 << 64) - 1


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The dropout modules of ``model`` with ``p > 0``."""
    return [m for m in model.modules() if isinstance(m, _DROPOUT_TYPES) and m.p > 0]


def _named_dropout_layers(model: nn.Module) -> dict[nn.Module, str]:
    return {m: name for name, m in model.named_modules() if isinstance(m, _DROPOUT_TYPES) and m.p > 0}


def _pointwise_conv(module: nn.Module) -> bool:
    """A 1×1 ``nn.Conv2d`` without stride, padding, dilation or groups: a linear map of each pixel's channels."""
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.padding in ((0, 0), "valid")
    )


def _linear_after(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """Dropout layers whose output only a linear map reads: consecutive children of an ``nn.Sequential``, an
    ``nn.Dropout`` then an ``nn.Linear``, or an ``nn.Dropout2d`` then a 1×1 ``nn.Conv2d`` (a segmentation head)."""
    pairs = {}
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module.children())
            for layer, following in itertools.pairwise(children):
                if getattr(layer, "p", 0) > 0 and (
                    (type(layer) is nn.Dropout and isinstance(following, nn.Linear))
                    or (type(layer) is nn.Dropout2d and _pointwise_conv(following))
                ):
                    pairs[layer] = following
    return pairs


def _mix(*values: int) -> int:
    """A 63-bit seed that depends on every value (splitmix64-style mixing)."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = ((state ^ (value & _MASK64)) * 0xBF58476D1CE4E5B9) & _MASK64
        state ^= state >> 31
    return state >> 1


class _UnsafePrefix(Exception):
    """The cached-prefix forward cannot be trusted for this model; use the full tile."""


def _batch_size(inputs: Any) -> int | None:
    """Length of the first axis of the first tensor in ``inputs`` (tensor, or nested tuple/list/dict)."""
    if isinstance(inputs, Tensor):
        return int(inputs.shape[0]) if inputs.ndim > 0 else None
    items = inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, (tuple, list)) else ()
    for item in items:
        size = _batch_size(item)
        if size is not None:
            return size
    return None


def _tile(inputs: Any, batch: int, repeats: int) -> Any:
    """Every tensor of ``inputs`` whose first axis has ``batch`` rows repeated t-major: ``(repeats * batch, ...)``."""
    if isinstance(inputs, Tensor):
        if inputs.ndim == 0 or inputs.shape[0] != batch:
            return inputs
        return inputs.repeat(repeats, *([1] * (inputs.ndim - 1)))
    if isinstance(inputs, dict):
        return type(inputs)((key, _tile(value, batch, repeats)) for key, value in inputs.items())
    if isinstance(inputs, tuple) and hasattr(inputs, "_fields"):  # namedtuple
        return type(inputs)(*(_tile(value, batch, repeats) for value in inputs))
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_tile(value, batch, repeats) for value in inputs)
    return inputs


def _mask_features(module: nn.Module, x: Tensor) -> tuple[int, ...]:
    """Mask shape of one row: all features for ``nn.Dropout``, channels (axis 1) for channel dropout."""
    if isinstance(module, _CHANNEL_DROPOUT_TYPES):
        return (int(x.shape[1]), *([1] * (x.ndim - 2)))
    return tuple(int(s) for s in x.shape[1:])


def _inverted_scale(p: float) -> float:
    return 0.0 if p >= 1 else 1.0 / (1.0 - p)


def _only_holder(tensor: Tensor) -> bool:
    """Whether no tensor but ``tensor`` itself uses its memory (so it can be overwritten); False if unknown."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return False
    storage = tensor.untyped_storage()  # holds one more reference while it lives
    return use_count(storage._cdata) <= 2


class _PassHooks:
    """Hooks for one forward that runs MC passes ``start, ..., start + count - 1`` on every row.

    ``before`` (a pre-hook on every dropout layer) tiles the first dropout input ``count`` times
    when ``tile_first`` (masking it in the same pass, t-major) and checks that later dropout inputs
    have ``count * k`` rows. ``after`` (a forward hook on the non-alpha dropout layers, which are in
    eval mode so their output is their input) multiplies the input by ``keep / q``: stored masks
    viewed as ``(count, 1, *features)`` against rows ``(count, rows / count, ...)`` when masks are
    consistent, else fresh masks ``(rows, *features)`` from ``generator_seed``.
    """

    def __init__(
        self,
        estimator: MCDropout,
        names: dict[nn.Module, str],
        start: int,
        count: int,
        tile_first: bool,
        generator_seed: int,
    ) -> None:
        self.estimator, self.names = estimator, names
        self.start, self.count, self.tile_first = start, count, tile_first
        self.generator_seed = generator_seed
        self.generators: dict[torch.device, torch.Generator] = {}
        self.calls = 0
        self.premasked: Tensor | None = None  # the tiled, already masked input of the first dropout layer
        self.folding: tuple[nn.Module, nn.Linear, Tensor] | None = None  # (dropout, its linear, untiled input)

    def before(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        self.calls += 1
        x = args[0]
        if self.tile_first and self.calls == 1:
            if isinstance(module, _ALPHA_DROPOUT_TYPES):  # samples by itself
                return (x.repeat(self.count, *([1] * (x.ndim - 1))), *args[1:])
            linear = self.estimator._fold_pairs.get(module)
            if self._can_fold(linear, x):
                self.folding = (module, linear, x)  # passes through untiled; the linear's hook expands it
                return None
            self.premasked = self._masked(module, x, tiled=True)
            return (self.premasked, *args[1:])
        if (self.tile_first or self.estimator.consistent_masks) and (x.ndim == 0 or x.shape[0] % self.count):
            problem = (
                f"dropout layer {self.names[module]!r} received {tuple(x.shape)}, whose first axis is not a "
                f"multiple of the {self.count} passes"
            )
            if self.tile_first:
                raise _UnsafePrefix(problem)
            raise ValueError(f"Expected t-major rows at every dropout layer for consistent masks, but {problem}.")
        return None

    def after(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
        if self.premasked is not None and args[0] is self.premasked:
            self.premasked = None
            return None
        if self.folding is not None and module is self.folding[0]:
            return None
        return self._masked(module, args[0], tiled=False)

    def _can_fold(self, linear: nn.Module | None, x: Tensor) -> bool:
        """Consistent masks on a ``(B, F)`` input to an ``nn.Linear`` or a ``(B, F, H, W)`` one to a 1×1 conv."""
        if linear is None or not self.estimator.consistent_masks or linear.weight.dtype != x.dtype:
            return False
        return x.ndim == (4 if isinstance(linear, nn.Conv2d) else 2)

    def folded_linear(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
        """The passes of the folded linear: ``y[t * B + b] = x_b (s_t ⊙ W)^T + bias``, ``(count * B, C)``.

        With masks ``s_t`` shared by every sample (consistent masks), masking the input of a linear
        layer equals masking its weight columns, ``(x ⊙ s_t) W^T = x (W diag(s_t))^T``: one
        ``(B, F) @ (F, count * C)`` product instead of masking ``count * B`` rows of ``F`` features.
        """
        if self.folding is None or module is not self.folding[1]:
            return None
        dropout, linear, x = self.folding
        if args[0].shape != x.shape or args[0].data_ptr() != x.data_ptr():  # not the dropout's output
            return None
        self.folding = None
        features = _mask_features(dropout, x)  # (F,) or, for channel dropout, (F, 1, 1): the masks' own key
        scaled_T_F = self.estimator._scaled_masks(self.names[dropout], dropout.p, features, x).flatten(1)
        scaled_G_F = scaled_T_F[self.start : self.start + self.count]
        weight_C_F = linear.weight.flatten(1)
        weights_GC_F = (scaled_G_F[:, None, :] * weight_C_F[None]).reshape(-1, x.shape[1])
        if x.ndim == 4:  # 1x1 conv: every pixel's channels through the G masked weights at once
            bias = linear.bias.repeat(self.count) if linear.bias is not None else None
            out_B_G_C = nn.functional.conv2d(x, weights_GC_F[:, :, None, None], bias)
            out_B_G_C = out_B_G_C.view(x.shape[0], self.count, -1, *x.shape[2:])
            return out_B_G_C.transpose(0, 1).reshape(self.count * x.shape[0], -1, *x.shape[2:])
        out_B_G_C = (x @ weights_GC_F.T).view(x.shape[0], self.count, -1)
        if linear.bias is not None:
            out_B_G_C = out_B_G_C + linear.bias
        return out_B_G_C.transpose(0, 1).reshape(self.count * x.shape[0], -1)

    def _masked(self, module: nn.Module, x: Tensor, tiled: bool) -> Tensor:
        """``x * keep / q``; with ``tiled`` ``x`` has ``B`` rows and the result ``count * B`` (row ``t * B + b``)."""
        rows, features = x.shape[0] * (self.count if tiled else 1), _mask_features(module, x)
        numel = rows * math.prod(x.shape[1:])
        if self.estimator.consistent_masks:
            scaled_T_F = self.estimator._scaled_masks(self.names[module], module.p, features, x)
            scaled_G_1_F = scaled_T_F[self.start : self.start + self.count].unsqueeze(1)
            x_G_R_F = x.unsqueeze(0) if tiled else x.reshape(self.count, -1, *x.shape[1:])
            if x.requires_grad or scaled_G_1_F.dtype != x.dtype:
                return (x_G_R_F * scaled_G_1_F).reshape(rows, *x.shape[1:])
            out = self.estimator._workspace(self.names[module], numel, x.dtype, x.device)[:numel]
            return torch.mul(x_G_R_F, scaled_G_1_F, out=out.view(self.count, -1, *x.shape[1:])).view(rows, *x.shape[1:])
        if x.device not in self.generators:
            self.generators[x.device] = torch.Generator(device=x.device).manual_seed(self.generator_seed)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        in_place = dtype == x.dtype and features == tuple(x.shape[1:]) and not x.requires_grad
        workspace = self.estimator._workspace(self.names[module], numel, dtype, x.device) if in_place else None
        scaled_R_F = scaled_keep_mask(
            (rows, *features), module.p, self.generators[x.device], dtype, x.device, workspace
        )
        scaled = scaled_R_F.view(self.count, -1, *features) if tiled else scaled_R_F  # tiled: x broadcasts over t
        if in_place:
            return scaled.mul_(x).view(rows, *x.shape[1:])  # one pass over the masks, in reused memory
        return (x * scaled).reshape(rows, *x.shape[1:])


class MCDropout(Estimator):
    """``T`` stochastic passes with dropout active: ``mc_probs`` ``(B, T, C)`` and their mean ``probs`` ``(B, C)``.

    ``mc_probs[b, t] = softmax(f(x_b; mask_t))``, ``probs[b] = mean_t mc_probs[b, t]`` (for the task's own
    probabilities and layout: ``(B, T, L)`` sigmoids for multi-label, ``(B, T, C, H, W)`` for segmentation). The layers
    before the first dropout layer run once per batch (see the module docstring for the
    mechanism, its fallback and the t-major layout). Train/eval modes are restored exactly and
    every hook is removed afterwards, also when the forward raises.

    Args:
        mc_samples: number of stochastic passes ``T``.
        consistent_masks: draw the ``T`` masks of each dropout layer once per round (from ``seed`` and
            the number of fits so far, see `fit`) and reuse them for every batch of the pool, so
            pass ``t`` is the same sub-network for every sample (Kirsch et al. 2019). Supports
            ``nn.Dropout`` and ``nn.Dropout1d/2d/3d``.
        seed: seeds the masks: the consistent ones with ``(seed, fits)``, or (independent masks)
            those of call ``n`` of `predict` with ``(seed, n)``; both counts are kept in
            `state_dict`.
        cache_prefix: compute the part before the first dropout once per batch; False always tiles
            the whole input (one forward on ``T * B`` rows).
        max_rows: most rows one forward may process (``T * B`` is split into groups of passes above
            it, each group recomputing the prefix); None for no limit.
        fold_linear: with consistent masks, when the first dropout layer is an ``nn.Dropout`` followed
            by an ``nn.Linear`` in an ``nn.Sequential`` (so the linear is its only consumer), mask the
            linear's weight columns instead of its input: ``(x ⊙ s_t) W^T = x (W diag(s_t))^T``, one
            ``(B, F) @ (F, T·C)`` product instead of ``T·B`` masked rows (see `_PassHooks.folded_linear`).
            Likewise an ``nn.Dropout2d`` followed by a 1×1 ``nn.Conv2d`` (a segmentation head): one 1×1
            convolution with ``T·C`` output channels over the ``B`` untiled feature maps.

    Reference: Gal & Ghahramani 2016, "Dropout as a Bayesian Approximation"; Gal, Islam & Ghahramani
    2017, "Deep Bayesian Active Learning with Image Data"; Kirsch et al. 2019, "BatchBALD".
    """

    provides = frozenset({MC_PROBS, PROBS})
    tasks = ALL_TASKS

    def __init__(
        self,
        mc_samples: int = 20,
        consistent_masks: bool = False,
        seed: int = 0,
        cache_prefix: bool = True,
        max_rows: int | None = 32768,
        fold_linear: bool = True,
    ) -> None:
        check_int("mc_samples", mc_samples, 1)
        for name, value in (
            ("consistent_masks", consistent_masks),
            ("cache_prefix", cache_prefix),
            ("fold_linear", fold_linear),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"Expected `{name}` to be a bool, but got {value!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"Expected `seed` to be an int, but got {seed!r}.")
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
            raise ValueError(f"Expected `max_rows` to be an int >= 1 or None, but got {max_rows!r}.")
        self.mc_samples = mc_samples
        self.consistent_masks, self.seed = consistent_masks, seed
        self.cache_prefix, self.max_rows = cache_prefix, max_rows
        self.fold_linear = fold_linear
        self.calls = 0  # predict calls so far: call n draws independent masks from (seed, n)
        self.fits = 0  # model fits seen: consistent masks are drawn from (seed, fits, layer)
        self._reset_runtime_state()

    # ----- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The counts that seed the masks: `predict` calls (``"calls"``) and fits seen (``"fits"``)."""
        return {"calls": self.calls, "fits": self.fits}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counts of `state_dict` (an int alone is read as ``calls``); drops cached masks."""
        counts = state if isinstance(state, dict) else {"calls": state}
        for name in ("calls", "fits"):
            value = counts.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Expected `state[{name!r}]` to be an int >= 0, but got {value!r}.")
        self.calls, self.fits = counts.get("calls", 0), counts.get("fits", 0)
        self._masks.clear()

    def fit(self, model: pl.LightningModule, train: Any) -> None:
        """After each fit of the model (each round), consistent masks are drawn afresh."""
        del model, train
        self.fits += 1
        self._masks.clear()

    def _reset_runtime_state(self) -> None:
        # Caches only (not pickled): which models need the full tile, and the consistent masks.
        self._full_tile_models: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self._masks: OrderedDict[tuple[Any, ...], Tensor] = OrderedDict()
        self._buffers: dict[str, Tensor] = {}  # reused memory for the masked dropout outputs, per layer
        self._fold_pairs: dict[nn.Module, nn.Module] = {}  # dropout -> the linear it feeds (this call's model)

    def __getstate__(self) -> dict[str, Any]:
        runtime = ("_full_tile_models", "_masks", "_buffers", "_fold_pairs")
        return {k: v for k, v in self.__dict__.items() if k not in runtime}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime_state()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mc_samples={self.mc_samples}, consistent_masks={self.consistent_masks}, "
            f"seed={self.seed}, cache_prefix={self.cache_prefix}, max_rows={self.max_rows}, "
            f"fold_linear={self.fold_linear})"
        )

    # ----- consistent masks ----------------------------------------------------------------
    def consistent_mask(self, name: str, p: float, feature_shape: tuple[int, ...]) -> Tensor:
        """Keep-mask ``BoolTensor[T, *feature_shape]`` of the dropout layer ``name`` (its qualified module name).

        ``mask[t] = u_t >= p`` with ``u_t ~ Uniform[0, 1)`` from a CPU generator seeded by
        ``(seed, fits, name, feature_shape)``: the same for every batch and device between two fits of
        the model, drawn afresh after each (`fit`), so each round scores under new masks.
        """
        key = ("uniform", name, tuple(feature_shape))
        if key not in self._masks:
            where = zlib.crc32(f"{name}|{tuple(feature_shape)}".encode())
            generator = torch.Generator().manual_seed(_mix(self.seed, self.fits, where))
            self._remember(key, torch.rand((self.mc_samples, *feature_shape), generator=generator))
        self._masks.move_to_end(key)
        return self._masks[key] >= p

    def _scaled_masks(self, name: str, p: float, feature_shape: tuple[int, ...], like: Tensor) -> Tensor:
        """``mask / (1 - p)`` in ``like``'s dtype and device, shape ``(T, *feature_shape)``."""
        key = ("scaled", name, p, tuple(feature_shape), like.device, like.dtype)
        if key not in self._masks:
            mask = self.consistent_mask(name, p, feature_shape).to(torch.float64) * _inverted_scale(p)
            self._remember(key, mask.to(device=like.device, dtype=like.dtype))
        self._masks.move_to_end(key)
        return self._masks[key]

    def _workspace(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Memory for the masked output of dropout layer ``name``, kept across calls while nothing else uses it.

        Writing into pages already mapped avoids the cost of fresh large allocations (page faults on
        every call); a tensor still used elsewhere (e.g. an activation the model kept) is never reused.
        """
        size = 64 * -(-numel // 64)
        buffer = self._buffers.get(name)
        fits = buffer is not None and buffer.numel() >= size and buffer.dtype == dtype and buffer.device == device
        if not fits or not _only_holder(buffer):
            buffer = self._buffers[name] = torch.empty(size, dtype=dtype, device=device)
        return buffer[:size]

    def _remember(self, key: tuple[Any, ...], value: Tensor) -> None:
        self._masks[key] = value
        while len(self._masks) > _MASK_CACHE_SIZE:
            self._masks.popitem(last=False)

    # ----- prediction ----------------------------------------------------------------------
    def predict(self, model: nn.Module, inputs: Any, needs: frozenset[str]) -> dict[str, Tensor]:
        """``mc_probs`` ``(B, T, C)`` of ``T`` stochastic passes over the batch ``inputs`` and their mean ``probs``
        ``(B, C)`` (the task's layout, see the class docstring)."""
        names = _named_dropout_layers(model)
        if not names:
            zero = [name for name, m in model.named_modules() if isinstance(m, _DROPOUT_TYPES)]
            found = f"only dropout layers with p = 0 ({zero})" if zero else "no dropout layer"
            raise ValueError(
                f"Expected the model to contain a dropout module (nn.Dropout, nn.Dropout2d, ...) with p > 0 for "
                f"MCDropout, but {type(model).__name__} has {found}: every pass would be identical and BALD would be "
                "0 (functional dropout calls cannot be switched on at inference)."
            )
        if self.consistent_masks:
            alpha = [name for m, name in names.items() if isinstance(m, _ALPHA_DROPOUT_TYPES)]
            if alpha:
                raise ValueError(
                    f"Expected nn.Dropout or nn.Dropout1d/2d/3d layers for `consistent_masks=True`, but "
                    f"{type(model).__name__} has alpha dropout layers {alpha}; use consistent_masks=False."
                )
        batch = _batch_size(inputs)
        if batch is None or batch < 1:
            raise TypeError(
                "Expected `inputs` to be a tensor, or a tuple/list/dict holding tensors, whose first axis is a "
                f"non-empty batch, but got {type(inputs).__name__} with batch size {batch}."
            )
        per_forward = self.mc_samples if self.max_rows is None else max(1, min(self.mc_samples, self.max_rows // batch))
        call_seed = _mix(self.seed, self.calls)
        self.calls += 1
        self._fold_pairs = _linear_after(model) if self.consistent_masks and self.fold_linear else {}
        modes = [(m, m.training) for m in model.modules()]
        try:
            model.eval()
            for layer in names:  # alpha dropout samples by itself; the hooks mask for the others
                layer.train(isinstance(layer, _ALPHA_DROPOUT_TYPES))
            groups = []  # (B, passes, C) per forward
            for start in range(0, self.mc_samples, per_forward):
                count = min(per_forward, self.mc_samples - start)
                groups.append(self._passes(model, inputs, names, batch, start, count, _mix(call_seed, start)))
        finally:
            for module, training in modes:
                module.training = training
        probs_B_T_C = groups[0] if len(groups) == 1 else torch.cat(groups, dim=1)  # a (B, T, ...) view: no copy
        return {MC_PROBS: probs_B_T_C, PROBS: probs_B_T_C.mean(dim=1)}

    def _passes(
        self,
        model: nn.Module,
        inputs: Any,
        names: dict[nn.Module, str],
        batch: int,
        start: int,
        count: int,
        generator_seed: int,
    ) -> Tensor:
        """Probabilities ``(B, count, C)`` of passes ``start .. start + count - 1``."""
        if self.cache_prefix and model not in self._full_tile_models:
            try:
                return self._forward(model, inputs, names, batch, start, count, True, generator_seed)
            except _OUT_OF_MEMORY:
                raise
            except Exception as error:  # the user's forward failed on tiled rows: retry on the full tile
                reason = f"{type(error).__name__}: {error}"
            tiled = _tile(inputs, batch, count)
            probs = self._forward(model, tiled, names, batch, start, count, False, generator_seed)
            self._full_tile_models.add(model)
            warnings.warn(
                f"MCDropout could not compute the part of {type(model).__name__} before its first dropout layer "
                f"once per batch ({reason}); it now tiles the whole input {self.mc_samples} times instead "
                "(still batched, but slower). Pass cache_prefix=False to skip the attempt.",
                UserWarning,
                stacklevel=3,
            )
            return probs
        tiled = _tile(inputs, batch, count) if count > 1 else inputs
        return self._forward(model, tiled, names, batch, start, count, False, generator_seed)

    def _forward(
        self,
        model: nn.Module,
        inputs: Any,
        names: dict[nn.Module, str],
        batch: int,
        start: int,
        count: int,
        tile_first: bool,
        generator_seed: int,
    ) -> Tensor:
        hooks = _PassHooks(self, names, start, count, tile_first, generator_seed)
        handles = []
        try:
            for layer in names:
                handles.append(layer.register_forward_pre_hook(hooks.before))
                if not isinstance(layer, _ALPHA_DROPOUT_TYPES):
                    handles.append(layer.register_forward_hook(hooks.after))
            if tile_first and self.consistent_masks:
                for linear in set(self._fold_pairs.values()):
                    handles.append(linear.register_forward_hook(hooks.folded_linear))
            logits = call_model(model, inputs)
        finally:
            for handle in handles:
                handle.remove()
        rows = count * batch
        if hooks.calls == 0:
            message = f"none of the dropout layers of {type(model).__name__} ran during its forward"
            if tile_first:
                raise _UnsafePrefix(message)
            raise ValueError(f"Expected the model's forward to run its dropout layers, but {message}.")
        if not isinstance(logits, Tensor) or logits.ndim < 2 or logits.shape[0] != rows:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            message = f"the forward returned {shape} for {count} passes over {batch} samples"
            if tile_first:
                raise _UnsafePrefix(message)
            raise ValueError(f"Expected logits of shape ({rows}, ...) from the tiled input, but {message}.")
        probs_G_B_C = self.task.probs(logits).view(count, batch, *logits.shape[1:])
        return probs_G_B_C.transpose(0, 1)
