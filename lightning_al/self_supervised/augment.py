"""Random views of image tensors for contrastive pre-training, vectorised over the batch (torch only).

SimCLR (Chen, Kornblith, Norouzi & Hinton 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML, Section 3 and Appendix A) learns by making two random views of every image agree:
a random resized crop with a horizontal flip, colour distortion and Gaussian blur. `ImageAugment` writes
the part of that family that applies to any image tensor, for a batch ``(B, C, H, W)`` at once, from an
explicit ``torch.Generator``: the same generator state gives the same views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_range(name: str, value: object, low: float, high: float | None = None) -> None:
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        and low <= value[0] <= value[1]
        and (high is None or value[1] <= high)
    )
    if not ok:
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"Expected `{name}` to be a pair (low, high) with low <= high in {bound}, but got {value!r}.")


def _check_number(name: str, value: object, low: float, high: float | None = None) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not value >= low
        or (high is not None and value > high)
    ):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"Expected `{name}` to be a number {bound}, but got {value!r}.")


def _uniform(low: float, high: float, size: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(size, generator=generator, device=device)


class ImageAugment:
    """A random view of every image of a batch: SimCLR's augmentation family for image tensors.

    In this order, each drawn independently per image from ``generator``:

    1. **random resized crop** (``crop_scale``): a box of area ``s ~ U(crop_scale)`` of the image and
       aspect ratio ``r`` with ``log r ~ U(log crop_ratio)``, sides ``sqrt(s r)`` and ``sqrt(s / r)`` (each
       clipped to the image), at a uniform position, resized back to ``H × W`` by bilinear sampling;
    2. **shift** (``shift``): an integer translation by up to ``shift`` pixels on each axis, the uncovered
       pixels zero (the "pad and random crop" of small-image recipes);
    3. **horizontal flip** with probability ``flip``;
    4. **colour jitter** with probability ``jitter_p``: the image times ``U(1 - brightness, 1 + brightness)``,
       then each channel's deviation from its mean times ``U(1 - contrast, 1 + contrast)``;
    5. **Gaussian blur** with probability ``blur_p``: ``σ ~ U(blur_sigma)`` pixels, a square kernel of odd
       side ``blur_kernel`` (default: 10 % of the smaller side, at least 3) applied separably, zero padding;
    6. **Gaussian noise**: ``+ noise_std · N(0, 1)`` per pixel.

    The defaults are SimCLR's ImageNet values where they apply (crop area 0.08-1, aspect 3/4-4/3, flip 0.5,
    colour strength 1: brightness and contrast 0.8 with probability 0.8, blur with probability 0.5 and σ in
    0.1-2, kernel 10 % of the side; Appendix A; multiplicative brightness as in the authors' code).
    Not written here: saturation, hue and random grayscale (colour images only), the random order of the
    jitter operations (brightness always comes first), the retries of a crop that does not fit (clipped
    instead), and the clipping of values to [0, 1] (inputs may be standardised). Turn a step off with
    ``crop_scale=None``, ``shift=0``, ``flip=0``, ``jitter_p=0``, ``blur_p=0``, ``noise_std=0``.

    **Small or symbolic images.** Choose the family for the data: on 8×8 digits a crop of 8 % of the
    image keeps one or two strokes, so ``crop_scale=(0.5, 1.0)`` or a one-pixel ``shift`` fits better;
    and a mirrored digit is another symbol (a mirrored 2 resembles a 5, a 3 no digit), so ``flip=0``:
    invariance to flips would teach the encoder to confuse classes. Flips suit natural images.

    **Flat vectors.** With ``image_shape=(C, H, W)``, inputs ``(B, C·H·W)`` (e.g. digits' 64 features, an
    8×8 image) are reshaped to ``(B, C, H, W)``, augmented, and flattened back.

    Args:
        crop_scale: range of the crop's area as a fraction of the image, within (0, 1]; None: no crop.
        crop_ratio: range of the crop's aspect ratio (width / height).
        shift: largest translation in pixels (0: none).
        flip: probability of a horizontal flip.
        brightness: brightness factors are drawn from ``U(1 - brightness, 1 + brightness)``.
        contrast: contrast factors are drawn from ``U(1 - contrast, 1 + contrast)``.
        jitter_p: probability of the colour jitter (both factors) for an image.
        blur_p: probability of a Gaussian blur for an image.
        blur_sigma: range of the blur's standard deviation, in pixels.
        blur_kernel: odd side of the blur kernel; None: 10 % of the smaller image side, odd, at least 3.
        noise_std: standard deviation of the additive Gaussian noise.
        image_shape: ``(C, H, W)`` of flat inputs ``(B, C·H·W)``; None: inputs are ``(B, C, H, W)``.
    """

    def __init__(
        self,
        crop_scale: tuple[float, float] | None = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        shift: int = 0,
        flip: float = 0.5,
        brightness: float = 0.8,
        contrast: float = 0.8,
        jitter_p: float = 0.8,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel: int | None = None,
        noise_std: float = 0.0,
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        crop_scale = tuple(crop_scale) if isinstance(crop_scale, list) else crop_scale
        crop_ratio = tuple(crop_ratio) if isinstance(crop_ratio, list) else crop_ratio
        blur_sigma = tuple(blur_sigma) if isinstance(blur_sigma, list) else blur_sigma
        image_shape = tuple(image_shape) if isinstance(image_shape, list) else image_shape
        if crop_scale is not None:
            _check_range("crop_scale", crop_scale, 0.0, 1.0)
            if crop_scale[0] <= 0:
                raise ValueError(f"Expected `crop_scale` to be within (0, 1], but got {crop_scale!r}.")
        _check_range("crop_ratio", crop_ratio, 0.0)
        if crop_ratio[0] <= 0:
            raise ValueError(f"Expected `crop_ratio` to be positive, but got {crop_ratio!r}.")
        if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
            raise ValueError(f"Expected `shift` to be an int >= 0, but got {shift!r}.")
        for name, value in (("flip", flip), ("jitter_p", jitter_p), ("blur_p", blur_p)):
            _check_number(name, value, 0.0, 1.0)
        _check_number("brightness", brightness, 0.0, 1.0)
        _check_number("contrast", contrast, 0.0, 1.0)
        _check_range("blur_sigma", blur_sigma, 0.0)
        if blur_sigma[0] <= 0:
            raise ValueError(f"Expected `blur_sigma` to be positive, but got {blur_sigma!r}.")
        if blur_kernel is not None and (
            isinstance(blur_kernel, bool) or not isinstance(blur_kernel, int) or blur_kernel < 1 or blur_kernel % 2 == 0
        ):
            raise ValueError(f"Expected `blur_kernel` to be an odd int >= 1 or None, but got {blur_kernel!r}.")
        _check_number("noise_std", noise_std, 0.0)
        if image_shape is not None and (
            not isinstance(image_shape, tuple)
            or len(image_shape) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in image_shape)
        ):
            raise ValueError(
                f"Expected `image_shape` to be (C, H, W) of positive ints or None, but got {image_shape!r}."
            )
        self.crop_scale, self.crop_ratio, self.shift, self.flip = crop_scale, crop_ratio, shift, flip
        self.brightness, self.contrast, self.jitter_p = brightness, contrast, jitter_p
        self.blur_p, self.blur_sigma, self.blur_kernel = blur_p, blur_sigma, blur_kernel
        self.noise_std, self.image_shape = noise_std, image_shape

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """One random view of each image: ``(B, C, H, W)`` → ``(B, C, H, W)`` (flat ``(B, C·H·W)`` with
        ``image_shape``), floating, drawn from ``generator`` (which must live on ``x``'s device type)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"Expected `x` to be a floating tensor of images, but got {type(x).__name__}.")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"Expected `generator` to be a torch.Generator, but got {type(generator).__name__}.")
        if generator.device.type != x.device.type:
            raise ValueError(
                f"Expected `generator` on the images' device type {x.device.type!r}, but it is on {generator.device}."
            )
        flat = self.image_shape is not None
        if flat:
            if x.ndim != 2 or x.shape[1] != math.prod(self.image_shape):
                raise ValueError(
                    f"Expected flat images of shape (B, {math.prod(self.image_shape)}) for `image_shape` "
                    f"{self.image_shape}, but got {tuple(x.shape)}."
                )
            images = x.reshape(x.shape[0], *self.image_shape)
        else:
            if x.ndim != 4:
                raise ValueError(
                    "Expected images of shape (B, C, H, W), or `image_shape` for flat inputs, "
                    f"but got {tuple(x.shape)}."
                )
            images = x
        out = self._augment(images, generator)
        return out.reshape(x.shape) if flat else out

    def _augment(self, x: Tensor, g: torch.Generator) -> Tensor:
        size, device = x.shape[0], x.device
        if self.crop_scale is not None:
            x = self._crop(x, g)
        if self.shift:
            x = self._shift(x, g)
        if self.flip:
            flipped = torch.rand(size, generator=g, device=device) < self.flip
            x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
        if self.jitter_p:
            apply = torch.rand(size, generator=g, device=device) < self.jitter_p
            one = torch.ones(size, device=device, dtype=x.dtype)
            bright = torch.where(apply, _uniform(1 - self.brightness, 1 + self.brightness, size, g, device), one)
            contrast = torch.where(apply, _uniform(1 - self.contrast, 1 + self.contrast, size, g, device), one)
            x = x * bright[:, None, None, None]
            mean = x.mean(dim=(2, 3), keepdim=True)
            x = (x - mean) * contrast[:, None, None, None] + mean
        if self.blur_p:
            x = self._blur(x, g)
        if self.noise_std:
            x = x + self.noise_std * torch.randn(x.shape, generator=g, device=device, dtype=x.dtype)
        return x

    def _crop(self, x: Tensor, g: torch.Generator) -> Tensor:
        size, device = x.shape[0], x.device
        area = _uniform(*self.crop_scale, size, g, device)
        log_ratio = _uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]), size, g, device)
        ratio = log_ratio.exp()
        width = (area * ratio).sqrt().clamp(max=1.0)  # fractions of the image's sides
        height = (area / ratio).sqrt().clamp(max=1.0)
        centre_x = (1 - width) * (2 * torch.rand(size, generator=g, device=device) - 1)  # in [-1, 1] coordinates
        centre_y = (1 - height) * (2 * torch.rand(size, generator=g, device=device) - 1)
        theta = torch.zeros(size, 2, 3, device=device, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2] = width, centre_x
        theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _shift(self, x: Tensor, g: torch.Generator) -> Tensor:
        size, _, height, width = x.shape
        s = self.shift
        dy = torch.randint(-s, s + 1, (size,), generator=g, device=x.device)
        dx = torch.randint(-s, s + 1, (size,), generator=g, device=x.device)
        padded = F.pad(x, (s, s, s, s))
        rows = torch.arange(height, device=x.device)[None, :] + s - dy[:, None]  # (B, H): source row of each row
        cols = torch.arange(width, device=x.device)[None, :] + s - dx[:, None]
        batch = torch.arange(size, device=x.device)[:, None, None]
        return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    def _blur(self, x: Tensor, g: torch.Generator) -> Tensor:
        size, channels, height, width = x.shape
        device = x.device
        apply = torch.rand(size, generator=g, device=device) < self.blur_p
        sigma = _uniform(*self.blur_sigma, size, g, device)
        side = self.blur_kernel
        if side is None:
            side = max(3, int(0.1 * min(height, width)) // 2 * 2 + 1)
        radius = side // 2
        offsets = torch.arange(-radius, radius + 1, device=device, dtype=x.dtype)
        kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
        kernel = kernel / kernel.sum(dim=1, keepdim=True)
        identity = (offsets == 0).to(x.dtype).expand(size, -1)
        kernel = torch.where(apply[:, None], kernel, identity).repeat_interleave(channels, dim=0)  # (B·C, side)
        grouped = x.reshape(1, size * channels, height, width)
        grouped = F.conv2d(grouped, kernel[:, None, :, None], padding=(radius, 0), groups=size * channels)
        grouped = F.conv2d(grouped, kernel[:, None, None, :], padding=(0, radius), groups=size * channels)
        return grouped.reshape(size, channels, height, width)

    def __repr__(self) -> str:
        fields = (
            "crop_scale",
            "crop_ratio",
            "shift",
            "flip",
            "brightness",
            "contrast",
            "jitter_p",
            "blur_p",
            "blur_sigma",
            "blur_kernel",
            "noise_std",
            "image_shape",
        )
        return f"{type(self).__name__}({', '.join(f'{name}={getattr(self, name)!r}' for name in fields)})"
