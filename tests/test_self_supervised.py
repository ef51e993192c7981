"""SimCLR pre-training: the NT-Xent kernel, the image augmentations, the module and its cached features."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_al as al
from lightning_al.estimators.fixed_features import FrozenEncoder, PrecomputedEmbeddings
from lightning_al.outputs import EMBEDDINGS
from lightning_al.self_supervised import ImageAugment, SimCLR, encode, nt_xent_loss, pretrain_simclr
from lightning_al.strategies.cold_start import TypiClust
from tests.conftest import FAST_TRAINER, QUIET_TRAINER, TinyClassifier, blobs


# ----- NT-Xent ----------------------------------------------------------------------------------------------
def reference_nt_xent(z1, z2, temperature):
    """Chen et al. 2020, Eq. 1 and Algorithm 1, one pair at a time: views 2k and 2k+1 of sample k."""
    views = []
    for a, b in zip(z1, z2, strict=True):
        views += [a.double(), b.double()]
    n = len(views)

    def sim(u, v):
        return float(u @ v / (u.norm() * v.norm()))

    def ell(i, j):
        numerator = math.exp(sim(views[i], views[j]) / temperature)
        denominator = sum(math.exp(sim(views[i], views[k]) / temperature) for k in range(n) if k != i)
        return -math.log(numerator / denominator)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n // 2)) / n


def test_nt_xent_hand_values_on_two_by_two():
    eye = torch.eye(2)
    # z1 = z2: each positive has similarity 1, the two negatives 0 -> -log(e / (e + 2))
    assert float(nt_xent_loss(eye, eye, temperature=1.0)) == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)
    # views swapped: the positive has similarity 0, one negative 1 -> -log(1 / (2 + e))
    swapped = eye.flip(0)
    assert float(nt_xent_loss(eye, swapped, temperature=1.0)) == pytest.approx(math.log(2 + math.e), abs=1e-6)
    # temperature 0.5 doubles the logits: -log(e^2 / (e^2 + 2))
    assert float(nt_xent_loss(eye, eye, temperature=0.5)) == pytest.approx(math.log(1 + 2 / math.e**2), abs=1e-6)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_nt_xent_matches_the_pairwise_reference(temperature):
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    expected = reference_nt_xent(z1, z2, temperature)
    assert float(nt_xent_loss(z1, z2, temperature)) == pytest.approx(expected, rel=1e-5)
    # cosine similarity: the scale of a projection does not matter
    assert float(nt_xent_loss(3 * z1, z2 * torch.arange(1, 6)[:, None], temperature)) == pytest.approx(expected, 1e-5)


def test_nt_xent_has_gradients_and_a_single_pair_has_no_negatives():
    z1 = torch.randn(4, 3, requires_grad=True)
    nt_xent_loss(z1, torch.randn(4, 3)).backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()
    assert float(nt_xent_loss(torch.randn(1, 3), torch.randn(1, 3))) == pytest.approx(0.0, abs=1e-6)


def test_nt_xent_refuses_bad_input():
    with pytest.raises(ValueError, match=r"one shape \(B, D\).*\(2, 3\) and \(3, 3\)"):
        nt_xent_loss(torch.randn(2, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="`temperature` to be a number > 0, but got 0"):
        nt_xent_loss(torch.randn(2, 3), torch.randn(2, 3), temperature=0)
    with pytest.raises(TypeError, match="to be tensors"):
        nt_xent_loss([[1.0]], torch.randn(1, 1))


# ----- augmentations ---------------------------------------------------------------------------------------
OFF = dict(crop_scale=None, shift=0, flip=0.0, jitter_p=0.0, blur_p=0.0, noise_std=0.0)


def _images(size=6, channels=2, side=8, seed=0):
    return torch.rand(size, channels, side, side, generator=torch.Generator().manual_seed(seed))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_every_step_off_is_the_identity_and_a_full_crop_too():
    x = _images()
    torch.testing.assert_close(ImageAugment(**OFF)(x, _gen()), x)
    full_crop = ImageAugment(**{**OFF, "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)})
    torch.testing.assert_close(full_crop(x, _gen()), x, atol=1e-5, rtol=0)


def test_views_are_seeded_and_differ_between_seeds():
    x = _images()
    augment = ImageAugment(noise_std=0.05)
    torch.testing.assert_close(augment(x, _gen(1)), augment(x, _gen(1)))
    assert not torch.allclose(augment(x, _gen(1)), augment(x, _gen(2)))
    g = _gen(1)
    assert not torch.allclose(augment(x, g), augment(x, g))  # two views from one generator differ


def test_flip_mirrors_the_width():
    x = _images()
    torch.testing.assert_close(ImageAugment(**{**OFF, "flip": 1.0})(x, _gen()), x.flip(-1))


def test_shift_translates_by_at_most_shift_pixels_with_zero_fill():
    x = _images(size=20)
    out = ImageAugment(**{**OFF, "shift": 1})(x, _gen())
    padded = F.pad(x, (1, 1, 1, 1))
    seen = set()
    for b in range(x.shape[0]):
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(out[b], padded[b, :, 1 - dy : 9 - dy, 1 - dx : 9 - dx])
        ]
        assert matches, f"image {b} is no shift of its input"
        seen.update(matches)
    assert len(seen) > 3  # several shifts are drawn


def test_crop_zooms_into_the_image():
    # a horizontal ramp: a crop of width w resamples it with slope w times the original one
    ramp = torch.linspace(0, 1, 8).expand(4, 1, 8, 8).contiguous()
    out = ImageAugment(**{**OFF, "crop_scale": (0.25, 0.25), "crop_ratio": (1.0, 1.0)})(ramp, _gen())
    slopes = (out[..., 1:] - out[..., :-1]).mean(dim=(1, 2, 3))
    torch.testing.assert_close(slopes, torch.full((4,), 0.5 / 7), atol=1e-4, rtol=0)


def test_brightness_and_contrast_factors_are_in_their_ranges():
    x = _images(size=30) + 0.1
    bright = ImageAugment(**{**OFF, "jitter_p": 1.0, "brightness": 0.3, "contrast": 0.0})(x, _gen())
    factors = bright / x
    per_image = factors.flatten(1)
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image))  # one factor per image
    assert ((per_image[:, 0] >= 0.7) & (per_image[:, 0] <= 1.3)).all() and per_image[:, 0].std() > 0.05
    contrast = ImageAugment(**{**OFF, "jitter_p": 1.0, "brightness": 0.0, "contrast": 0.5})(x, _gen())
    mean = x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(contrast.mean(dim=(2, 3), keepdim=True), mean)  # each channel keeps its mean
    scale = ((contrast - mean) / (x - mean)).flatten(1)
    assert ((scale >= 0.5 - 1e-4) & (scale <= 1.5 + 1e-4)).all()


def test_blur_is_a_separable_gaussian_with_zero_padding():
    x = _images(size=3, channels=1)
    sigma = 0.8
    out = ImageAugment(**{**OFF, "blur_p": 1.0, "blur_sigma": (sigma, sigma), "blur_kernel": 3})(x, _gen())
    weights = torch.tensor([math.exp(-(t**2) / (2 * sigma**2)) for t in (-1, 0, 1)])
    weights = weights / weights.sum()
    padded = F.pad(x, (1, 1, 1, 1))
    expected = torch.zeros_like(x)
    for i in range(8):
        for j in range(8):
            window = padded[:, :, i : i + 3, j : j + 3]
            expected[:, :, i, j] = (window * weights[:, None] * weights[None, :]).sum(dim=(2, 3))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_noise_has_the_given_standard_deviation():
    x = torch.zeros(64, 1, 16, 16)
    out = ImageAugment(**{**OFF, "noise_std": 0.2})(x, _gen())
    assert float(out.std()) == pytest.approx(0.2, rel=0.03) and abs(float(out.mean())) < 0.01


def test_flat_vectors_are_augmented_as_images():
    x = _images(channels=1).flatten(1)  # (B, 64), e.g. digits
    flat = ImageAugment(**{**OFF, "flip": 1.0}, image_shape=(1, 8, 8))(x, _gen())
    torch.testing.assert_close(flat, x.reshape(-1, 1, 8, 8).flip(-1).flatten(1))
    with pytest.raises(ValueError, match=r"flat images of shape \(B, 64\)"):
        ImageAugment(image_shape=(1, 8, 8))(torch.rand(2, 63), _gen())


def test_augment_refuses_bad_arguments():
    with pytest.raises(ValueError, match="`crop_scale` to be a pair"):
        ImageAugment(crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="`flip` to be a number in"):
        ImageAugment(flip=2.0)
    with pytest.raises(ValueError, match="`blur_kernel` to be an odd int"):
        ImageAugment(blur_kernel=4)
    with pytest.raises(ValueError, match=r"`image_shape` to be \(C, H, W\)"):
        ImageAugment(image_shape=(8, 8))
    with pytest.raises(ValueError, match=r"images of shape \(B, C, H, W\)"):
        ImageAugment()(torch.rand(2, 64), _gen())
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="`generator` on the images' device type"):
            ImageAugment()(torch.rand(1, 1, 8, 8, device="cuda"), _gen())


# ----- pre-training ------------------------------------------------------------------------------------------
def _encoder(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _pool(n=64, seed=0):
    return torch.rand(n, 16, generator=torch.Generator().manual_seed(seed))


DIGIT_LIKE = ImageAugment(image_shape=(1, 4, 4), crop_scale=(0.5, 1.0), flip=0.0, noise_std=0.05)
QUICK = dict(augment=DIGIT_LIKE, epochs=3, batch_size=16, trainer_kwargs=dict(accelerator="cpu"))


def test_pretraining_is_seeded_and_leaves_the_global_rng_alone():
    encoder, pool = _encoder(), _pool()
    state = torch.get_rng_state()
    first = pretrain_simclr(encoder, pool, seed=1, **QUICK)
    assert torch.equal(torch.get_rng_state(), state)
    second = pretrain_simclr(_encoder(), _pool(), seed=1, **QUICK)
    torch.testing.assert_close(first.features, second.features, atol=0, rtol=0)
    other = pretrain_simclr(_encoder(), _pool(), seed=2, **QUICK)
    assert not torch.allclose(first.features, other.features)
    assert first.features.shape == (64, 8) and not first.from_cache
    torch.testing.assert_close(first.features, encode(first.encoder, _pool()))
    assert not first.encoder.training


def test_fitting_the_module_lowers_the_loss_and_pulls_two_views_together():
    pool = _pool(128)
    noise = ImageAugment(**{**OFF, "noise_std": 0.1}, image_shape=(1, 4, 4))  # views close to their sample
    module = SimCLR(_encoder(), feature_dim=8, augment=noise, lr=1e-2, seed=0)
    g = torch.Generator().manual_seed(5)
    v1, v2 = noise(pool, g), noise(pool, g)

    def measure():
        module.eval()
        with torch.no_grad():
            h1, h2 = module(v1), module(v2)
            loss = float(nt_xent_loss(module.head(h1), module.head(h2), module.temperature))
        sim = F.normalize(h1, dim=1) @ F.normalize(h2, dim=1).T
        others = (sim.sum() - sim.diagonal().sum()) / (sim.numel() - sim.shape[0])
        return loss, float(sim.diagonal().mean() - others)

    loss_before, gap_before = measure()
    module.train()
    loader = DataLoader(TensorDataset(pool), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    pl.Trainer(max_epochs=30, accelerator="cpu", **QUIET_TRAINER).fit(module, loader)
    loss_after, gap_after = measure()
    assert loss_after < loss_before - 0.5
    assert gap_after > gap_before + 0.2  # h = f(x): a sample's two views closer than other samples' views


def test_the_cache_file_skips_training_and_restores_the_weights(tmp_path, monkeypatch):
    first = pretrain_simclr(_encoder(), _pool(), cache_dir=tmp_path, **QUICK)
    assert first.cache_path is not None and first.cache_path.exists()
    assert first.cache_path.name == f"simclr-{first.fingerprint[:16]}.pt"

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the cache holds this run")

    monkeypatch.setattr(SimCLR, "training_step", no_training)
    fresh = _encoder()
    again = pretrain_simclr(fresh, _pool(), cache_dir=tmp_path, **QUICK)
    assert again.from_cache and again.fingerprint == first.fingerprint
    torch.testing.assert_close(again.features, first.features, atol=0, rtol=0)
    torch.testing.assert_close(encode(fresh, _pool()), first.features)
    monkeypatch.undo()
    # another pool, other initial weights or another setting is another run
    assert pretrain_simclr(_encoder(), _pool(seed=1), cache_dir=tmp_path, **QUICK).fingerprint != first.fingerprint
    assert pretrain_simclr(_encoder(seed=1), _pool(), cache_dir=tmp_path, **QUICK).fingerprint != first.fingerprint
    hotter = pretrain_simclr(_encoder(), _pool(), cache_dir=tmp_path, **{**QUICK, "epochs": 2})
    assert hotter.fingerprint != first.fingerprint and len(list(tmp_path.glob("simclr-*.pt"))) == 4
    saved = torch.load(first.cache_path, weights_only=True)
    torch.save({**saved, "key": "0" * 64}, first.cache_path)
    with pytest.raises(ValueError, match=r"Expected the cache file .* to hold the run with fingerprint"):
        pretrain_simclr(_encoder(), _pool(), cache_dir=tmp_path, **QUICK)


def test_a_dataset_pool_and_the_result_as_an_estimator():
    train = blobs(48, in_features=16, seed=0)
    result = pretrain_simclr(_encoder(), train, **QUICK)  # items (x, y): the inputs at index 0
    torch.testing.assert_close(result.features, encode(result.encoder, train.tensors[0]))
    ids = torch.tensor([5, 0, 7])
    precomputed = PrecomputedEmbeddings(result.features).predict(
        TinyClassifier(in_features=16), train.tensors[0][ids], frozenset({EMBEDDINGS}), ids=ids
    )
    frozen = FrozenEncoder(result.encoder).predict(
        TinyClassifier(in_features=16), train.tensors[0][ids], frozenset({EMBEDDINGS}), ids=ids
    )
    torch.testing.assert_close(precomputed[EMBEDDINGS], frozen[EMBEDDINGS])
    dm = al.ActiveDataModule(train, batch_size=16, seed=0)
    loop = al.ActiveLearningLoop(
        TypiClust(k_neighbours=5, estimator=PrecomputedEmbeddings(result.features)),
        query_size=4,
        rounds=1,
        trainer_kwargs=FAST_TRAINER,
        progress=False,
    )
    history = loop.run(TinyClassifier(in_features=16), dm)
    assert len(history[0]["selected_ids"]) == 4


def test_pretraining_refuses_bad_arguments():
    with pytest.raises(ValueError, match="`batch_size` to be at most the pool's 64 samples, but got 65"):
        pretrain_simclr(_encoder(), _pool(), batch_size=65)
    with pytest.raises(ValueError, match="`temperature` to be a finite number > 0"):
        pretrain_simclr(_encoder(), _pool(), temperature=-1.0)
    with pytest.raises(ValueError, match="floating tensor"):
        pretrain_simclr(_encoder(), torch.ones(10, 16, dtype=torch.long))
    with pytest.raises(TypeError, match=r"`encoder` to be a torch.nn.Module"):
        SimCLR("resnet", feature_dim=8)
