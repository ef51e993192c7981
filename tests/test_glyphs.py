"""The generated glyph dataset of the learning-curve benchmark: its shapes, balance, range and determinism."""

from __future__ import annotations

import pytest
import torch

from benchmarks.glyphs import CLASSES, _template, glyphs, make_glyphs
from benchmarks.settings import SETTINGS


def test_items_are_digits_shaped_balanced_and_in_range() -> None:
    data = make_glyphs(205, seed=3)
    x, y = data.tensors
    assert x.shape == (205, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert y.bincount(minlength=10).tolist() == [21] * 5 + [20] * 5


def test_the_same_seed_draws_the_same_images_and_another_seed_others() -> None:
    a, b, c = make_glyphs(50, seed=0), make_glyphs(50, seed=0), make_glyphs(50, seed=1)
    assert all(torch.equal(u, v) for u, v in zip(a.tensors, b.tensors, strict=True))
    assert not torch.equal(a.tensors[0], c.tensors[0])


def test_templates_draw_their_shapes() -> None:
    plus, tee = _template("plus"), _template("tee")
    assert plus[5, 3:9].tolist() == [1.0] * 6 and plus[3:9, 5].tolist() == [1.0] * 6
    assert tee[3, 3:9].tolist() == [1.0] * 6 and tee[5, 3] == 0  # the tee's bar is on top
    cross = _template("cross")
    assert all(cross[i, i] == 1 and cross[i, 11 - i] == 1 for i in range(3, 9))
    assert len({tuple(_template(name).flatten().tolist()) for name in CLASSES}) == len(CLASSES)


def test_without_shift_or_noise_each_class_is_one_image_up_to_intensity() -> None:
    x, y = make_glyphs(40, seed=0, max_shift=0, noise=0.0).tensors
    for c in range(10):
        images = x[y == c]
        unit = images / images.amax(dim=1, keepdim=True)
        assert torch.allclose(unit, unit[:1].expand_as(unit), atol=1e-6)


def test_the_classes_are_learnable_from_the_pool() -> None:
    pool, test = glyphs()
    (x, y), (xt, yt) = pool.tensors, test.tensors
    nearest = torch.cdist(xt, x).argmin(dim=1)
    assert float((y[nearest] == yt).float().mean()) > 0.9  # 1-NN on the whole pool


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_shift"):
        make_glyphs(10, seed=0, max_shift=3)


def test_the_glyph_settings_leave_out_the_digit_pca_arms() -> None:
    for name in ("glyphs", "glyphs_cold_start"):
        assert not {"TypiClust", "ProbCover", "BudgetAware", "TypiClust-SimCLR"} & set(SETTINGS[name].arms)
        assert SETTINGS[name].arms[0] == "Random"
