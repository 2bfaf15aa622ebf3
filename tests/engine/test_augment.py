"""Image augmentation: exact shifts, flips and quarter turns, seeding, featurewise statistics, and
bilinear resampling equal to scipy.ndimage.affine_transform (what Keras' ImageDataGenerator calls).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.augment import ImageAugmenter

SEED = 99


def images(n: int = 6, c: int = 2, h: int = 9, w: int = 11, dtype: str = "float64") -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal((n, c, h, w)).astype(dtype)


def pinned(n: int, **values: float | bool) -> dict[str, np.ndarray]:
    """Per-image parameters: identity except the given values (the same for every image)."""
    p = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "zx": 1.0, "zy": 1.0, "flip_h": False, "flip_v": False}
    p.update(values)
    return {k: np.full(n, v) for k, v in p.items()}


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize(("tx", "ty"), [(0, 3), (2, 0), (-1, -4), (3, 2)])
def test_a_shift_of_k_pixels_moves_the_content_k_pixels(interpolation, tx, ty) -> None:
    x = images()
    out = ImageAugmenter(interpolation=interpolation).apply_transform(x, pinned(6, tx=tx, ty=ty))
    H, W = x.shape[2:]
    # Output pixel (r, c) shows input (r + tx, c + ty); outside, the nearest edge pixel.
    rows = np.clip(np.arange(H) + tx, 0, H - 1)
    cols = np.clip(np.arange(W) + ty, 0, W - 1)
    assert np.allclose(out, x[:, :, rows][:, :, :, cols], atol=1e-12)
    # A single bright pixel lands exactly (-tx, -ty) away.
    dot = np.zeros((1, 1, H, W))
    dot[0, 0, 4, 5] = 1.0
    moved = ImageAugmenter().apply_transform(dot, pinned(1, tx=tx, ty=ty))
    assert np.argwhere(moved[0, 0] > 0.5).tolist() == [[4 - tx, 5 - ty]]


@pytest.mark.parametrize("value", [3, 0.25, 2.5])
def test_random_shift_ranges_follow_keras_units(value: float) -> None:
    aug = ImageAugmenter(width_shift_range=value, height_shift_range=value)
    p = aug.random_params(2000, 20, 40, np.random.default_rng(0))
    if isinstance(value, int):  # whole pixels in [-k, k]
        assert set(np.unique(p["ty"])) == set(range(-value, value + 1))
    elif value < 1:  # fraction of the side
        assert 0.9 * value * 40 < np.abs(p["ty"]).max() <= value * 40
        assert 0.9 * value * 20 < np.abs(p["tx"]).max() <= value * 20
    else:  # pixels
        assert 0.9 * value < np.abs(p["ty"]).max() <= value
    assert not p["theta"].any() and np.all(p["zx"] == 1.0)


def test_integer_random_shifts_resample_exactly() -> None:
    x = images(n=16)
    aug = ImageAugmenter(width_shift_range=2, height_shift_range=2)
    out = aug(x, np.random.default_rng(5))
    p = aug.random_params(16, *x.shape[2:], np.random.default_rng(5))
    for n in range(16):  # each image moved by its own drawn shift
        H, W = x.shape[2:]
        rows = np.clip(np.arange(H) + int(p["tx"][n]), 0, H - 1)
        cols = np.clip(np.arange(W) + int(p["ty"][n]), 0, W - 1)
        assert np.allclose(out[n], x[n][:, rows][:, :, cols], atol=1e-12)


def test_flips_flip() -> None:
    x = images(n=32)
    aug = ImageAugmenter(horizontal_flip=True, vertical_flip=True)
    out = aug(x, np.random.default_rng(1))
    p = aug.random_params(32, *x.shape[2:], np.random.default_rng(1))
    assert p["flip_h"].any() and not p["flip_h"].all()
    assert p["flip_v"].any() and not p["flip_v"].all()
    for n in range(32):
        ref = x[n]
        if p["flip_h"][n]:
            ref = ref[:, :, ::-1]
        if p["flip_v"][n]:
            ref = ref[:, ::-1, :]
        assert np.allclose(out[n], ref, atol=1e-12)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize(("theta", "k"), [(90.0, -1), (-90.0, 1), (180.0, 2)])
def test_quarter_turns_rotate(interpolation: str, theta: float, k: int) -> None:
    x = images(n=4, h=10, w=10)
    out = ImageAugmenter(interpolation=interpolation).apply_transform(x, pinned(4, theta=theta))
    assert np.allclose(out, np.rot90(x, k, axes=(2, 3)), atol=1e-9)


def test_rotation_range_pinned_at_90_rotates_each_image_by_its_draw() -> None:
    x = images(n=8, h=7, w=7)
    aug = ImageAugmenter(rotation_range=90.0)
    p = aug.random_params(8, 7, 7, np.random.default_rng(3))
    p["theta"] = np.where(p["theta"] > 0, 90.0, -90.0)  # pin the magnitude, keep the drawn sign
    out = aug.apply_transform(x, p)
    for n in range(8):
        assert np.allclose(out[n], np.rot90(x[n], -1 if p["theta"][n] > 0 else 1, axes=(1, 2)))


def test_zoom_scales_about_the_centre() -> None:
    x = images(n=2, h=9, w=9)
    out = ImageAugmenter().apply_transform(x, pinned(2, zx=2.0, zy=2.0))
    # zoom 2 reads twice as far from the centre (4, 4): output (4 + d) shows input (4 + 2d).
    for d in (-2, -1, 0, 1, 2):
        assert np.allclose(out[:, :, 4 + d, 4 + d], x[:, :, 4 + 2 * d, 4 + 2 * d])
    assert np.allclose(out[:, :, 0, 0], x[:, :, 0, 0])  # beyond the edge: the nearest pixel


def test_same_seed_same_batch_different_seed_different_batch() -> None:
    x = images(n=8, dtype="float32")
    aug = ImageAugmenter(
        rotation_range=20,
        width_shift_range=0.1,
        height_shift_range=0.1,
        zoom_range=0.1,
        horizontal_flip=True,
    )
    a = aug(x, np.random.default_rng(7))
    b = aug(x, np.random.default_rng(7))
    c = aug(x, np.random.default_rng(8))
    assert a.dtype == np.float32 and a.shape == x.shape
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_bilinear_matches_scipy_affine_transform_like_keras() -> None:
    """Keras resamples each channel with ndimage.affine_transform(order=1, mode="nearest")."""
    ndi = pytest.importorskip("scipy.ndimage")
    x = images(n=5, c=2, h=12, w=10)
    aug = ImageAugmenter(
        rotation_range=40, width_shift_range=0.2, height_shift_range=2.5, zoom_range=(0.7, 1.3)
    )
    p = aug.random_params(5, 12, 10, np.random.default_rng(11))
    out = aug.apply_transform(x, p)
    cr, cc = 5.5, 4.5
    for n in range(5):
        t = np.deg2rad(p["theta"][n])
        R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        A = R @ np.diag([p["zx"][n], p["zy"][n]])
        offset = np.array([cr, cc]) - A @ np.array([cr, cc]) + R @ [p["tx"][n], p["ty"][n]]
        for ch in range(2):
            ref = ndi.affine_transform(x[n, ch], A, offset, order=1, mode="nearest")
            assert np.allclose(out[n, ch], ref, atol=1e-9)


def test_featurewise_statistics_are_fitted_once_and_applied() -> None:
    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((40, 3, 6, 6)) * np.array([1.0, 2.0, 5.0])[:, None, None] + 3.0
    aug = ImageAugmenter(featurewise_center=True, featurewise_std_normalization=True)
    with pytest.raises(ValueError, match="fit"):
        aug(X, np.random.default_rng(0))
    aug.fit(X)
    assert np.allclose(aug.state()["mean"], X.mean(axis=(0, 2, 3)))
    assert np.allclose(aug.state()["std"], X.std(axis=(0, 2, 3)))
    out = aug(X, np.random.default_rng(0))
    assert np.allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    assert np.allclose(out.std(axis=(0, 2, 3)), 1.0, atol=1e-5)
    # A new batch uses the fitted statistics, not its own.
    batch = X[:4] + 1.0
    expected = (batch - aug.mean[:, None, None]) / (aug.std[:, None, None] + 1e-6)
    assert np.allclose(aug(batch, np.random.default_rng(0)), expected)
    center_only = ImageAugmenter(featurewise_center=True, horizontal_flip=True).fit(X)
    flipped = center_only(X, np.random.default_rng(2))
    assert np.allclose(flipped.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="fill_mode"):
        ImageAugmenter(fill_mode="reflect")
    with pytest.raises(ValueError, match="zoom_range"):
        ImageAugmenter(zoom_range=1.5)
    with pytest.raises(ValueError, match="rotation_range"):
        ImageAugmenter(rotation_range=-5)
