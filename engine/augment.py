"""Image augmentation per training batch (Keras ``ImageDataGenerator`` names and semantics).

Images are ``x (N, C, H, W)``. Each image ``n`` gets one random affine map, composed as in Keras'
``apply_affine_transform`` (rotation, then shift, then zoom, about the image centre
``c = ((H - 1) / 2, (W - 1) / 2)``) followed by the optional flips. The map is applied backwards,
as an inverse coordinate grid: output pixel ``o = (row, col)`` reads the input at::

    p = c + R(theta) @ (Z @ (o' - c) + t),    R = [[cos, -sin], [sin, cos]],  Z = diag(zx, zy)

where ``o'`` is ``o`` with its column mirrored (``W - 1 - col``) for a horizontal flip and its row
mirrored for a vertical flip, ``t = (tx, ty)`` the (row, column) shift in pixels. So a shift of
``t`` moves the content by ``-t`` pixels, ``zx > 1`` shows a larger area (the content shrinks),
and ``theta = 90`` degrees turns the image a quarter clockwise. Positions outside the image take
the nearest edge pixel (``fill_mode="nearest"``, the Keras default). Sampling is bilinear
(``interpolation="bilinear"``, Keras' default order 1) or nearest-pixel.

The whole batch is resampled at once: the ``(N, 2, H * W)`` grid of source positions is one
matrix product, the samples one ``np.take`` per bilinear tap (of one shared index array); nothing
loops over images or pixels.

Random draws (``rng``, the trainer's seeded ``numpy.random.Generator``, in this order, only for
the options that are on): ``theta ~ U(-rotation_range, rotation_range)`` degrees; the row shift
from ``height_shift_range`` and the column shift from ``width_shift_range``, each a fraction of the
side when the float is < 1, pixels ``U(-r, r)`` when it is a float >= 1, and a whole number of
pixels in ``[-r, r]`` when it is an int; ``zx, zy ~ U(1 - z, 1 + z)`` (or ``U(lo, hi)`` for a pair
``zoom_range = (lo, hi)``); each flip with probability 1/2.

Featurewise statistics (``fit`` on the training images, once): per channel ``mean`` and ``std``
over ``(N, H, W)``; ``standardize`` computes ``x - mean`` and/or ``x / (std + 1e-6)`` (Keras'
epsilon), after the random transform as in Keras. Standardization is part of the model: predict
time must apply ``standardize`` (never the random transform); ``state()`` gives the arrays to save.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.errors import InputError

FILL_MODES: tuple[str, ...] = ("nearest",)
INTERPOLATIONS: tuple[str, ...] = ("bilinear", "nearest")
STD_EPS = 1e-6  # Keras adds it to the featurewise std


def _range_pair(value: float | Sequence[float], name: str) -> tuple[float, float]:
    """``z -> (1 - z, 1 + z)``; a pair ``(lo, hi)`` stays (Keras' ``zoom_range``)."""
    if isinstance(value, int | float):
        lo, hi = 1.0 - float(value), 1.0 + float(value)
    else:
        lo, hi = (float(v) for v in value)
    if not (0.0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"{name} must give 0 < lower <= upper, got {value!r}")
    return lo, hi


def _draw_shift(value: float, size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` shifts in pixels from a Keras shift range (module docstring)."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return rng.integers(-int(value), int(value), size=n, endpoint=True).astype(np.float64)
    r = float(value)
    shift = rng.uniform(-r, r, size=n)
    return shift * size if r < 1.0 else shift


class ImageAugmenter:
    """Keras ``ImageDataGenerator``-style augmentation of ``(N, C, H, W)`` batches.

    Parameters use Keras' names: ``featurewise_center``, ``featurewise_std_normalization``,
    ``rotation_range`` (degrees), ``width_shift_range``, ``height_shift_range``, ``zoom_range``,
    ``horizontal_flip``, ``vertical_flip``, ``fill_mode`` (``"nearest"``) and ``interpolation``
    (``"bilinear"`` or ``"nearest"``).

    ``augmenter(x, rng)`` is what a training step calls: the random transform, then the
    featurewise standardization.
    """

    def __init__(
        self,
        *,
        featurewise_center: bool = False,
        featurewise_std_normalization: bool = False,
        rotation_range: float = 0.0,
        width_shift_range: float = 0.0,
        height_shift_range: float = 0.0,
        zoom_range: float | Sequence[float] = 0.0,
        horizontal_flip: bool = False,
        vertical_flip: bool = False,
        fill_mode: str = "nearest",
        interpolation: str = "bilinear",
    ) -> None:
        if fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}"
            )
        for name, v in (
            ("rotation_range", rotation_range),
            ("width_shift_range", width_shift_range),
            ("height_shift_range", height_shift_range),
        ):
            if not (math.isfinite(float(v)) and float(v) >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.featurewise_center = bool(featurewise_center)
        self.featurewise_std_normalization = bool(featurewise_std_normalization)
        self.rotation_range = float(rotation_range)
        self.width_shift_range = width_shift_range
        self.height_shift_range = height_shift_range
        self.zoom_range = _range_pair(zoom_range, "zoom_range")
        self.horizontal_flip = bool(horizontal_flip)
        self.vertical_flip = bool(vertical_flip)
        self.fill_mode = fill_mode
        self.interpolation = interpolation
        self.mean: np.ndarray | None = None  # (C,) after fit
        self.std: np.ndarray | None = None  # (C,) after fit

    # ------------------------------------------------------------------ featurewise statistics
    @property
    def needs_fit(self) -> bool:
        return self.featurewise_center or self.featurewise_std_normalization

    def fit(self, X: np.ndarray) -> ImageAugmenter:
        """Per-channel ``mean (C,)`` and ``std (C,)`` of the training images ``X (N, C, H, W)``."""
        X = np.asarray(X)
        if X.ndim != 4:
            raise ValueError(f"fit expects images (N, C, H, W), got shape {X.shape}")
        self.mean = X.mean(axis=(0, 2, 3), dtype=np.float64).astype(X.dtype)
        self.std = X.std(axis=(0, 2, 3), dtype=np.float64).astype(X.dtype)
        return self

    def state(self) -> dict[str, np.ndarray]:
        """The fitted statistics by name (``mean``, ``std``), for serialization with a model."""
        return {k: v for k, v in (("mean", self.mean), ("std", self.std)) if v is not None}

    def standardize(self, x: np.ndarray) -> np.ndarray:
        """``x - mean`` and / or ``x / (std + 1e-6)`` per channel (a new array)."""
        if not self.needs_fit:
            return x
        if self.mean is None or self.std is None:  # fit sets both
            raise ValueError("featurewise statistics are not fitted: call fit(X_train) first")
        out = x
        if self.featurewise_center:
            out = out - self.mean.reshape(1, -1, 1, 1)
        if self.featurewise_std_normalization:
            out = out / (self.std.reshape(1, -1, 1, 1) + STD_EPS)
        return out

    # ------------------------------------------------------------------ random affine maps
    @property
    def transforms(self) -> bool:
        """Whether any random geometric transform is on."""
        return bool(
            self.rotation_range
            or self.width_shift_range
            or self.height_shift_range
            or self.zoom_range != (1.0, 1.0)
            or self.horizontal_flip
            or self.vertical_flip
        )

    def random_params(
        self, n: int, height: int, width: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Per-image parameters ``theta`` (degrees), ``tx``, ``ty`` (pixels), ``zx``, ``zy``,
        ``flip_h``, ``flip_v`` (bools), each of shape ``(n,)``; see the module docstring."""
        zeros = np.zeros(n)
        p: dict[str, np.ndarray] = {
            "theta": zeros,
            "tx": zeros,
            "ty": zeros,
            "zx": zeros + 1.0,
            "zy": zeros + 1.0,
        }
        if self.rotation_range:
            p["theta"] = rng.uniform(-self.rotation_range, self.rotation_range, size=n)
        if self.height_shift_range:
            p["tx"] = _draw_shift(self.height_shift_range, height, n, rng)
        if self.width_shift_range:
            p["ty"] = _draw_shift(self.width_shift_range, width, n, rng)
        if self.zoom_range != (1.0, 1.0):
            p["zx"], p["zy"] = rng.uniform(*self.zoom_range, size=(2, n))
        no = np.zeros(n, dtype=bool)
        p["flip_h"] = rng.random(n) < 0.5 if self.horizontal_flip else no
        p["flip_v"] = rng.random(n) < 0.5 if self.vertical_flip else no
        return p

    def apply_transform(self, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
        """Resample every image of ``x (N, C, H, W)`` through its map (module formula).

        Returns a new ``(N, C, H, W)`` array of the dtype of ``x``.
        """
        H, W = x.shape[2:]
        grid = source_grid(params, H, W, dtype=np.float32 if x.dtype == np.float32 else np.float64)
        return sample(x, grid, self.interpolation)

    def random_transform(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The random geometric transform of one batch only (``x`` itself when none is on)."""
        if not self.transforms:
            return x
        N, _, H, W = x.shape
        return self.apply_transform(x, self.random_params(N, H, W, rng))

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One training batch: random transform (if any), then featurewise standardization."""
        if self.transforms:
            N, _, H, W = x.shape
            x = self.apply_transform(x, self.random_params(N, H, W, rng))
        if self.needs_fit:
            x = self.standardize(x)
        return x


def source_grid(
    params: dict[str, np.ndarray], H: int, W: int, *, dtype: np.dtype | type = np.float64
) -> np.ndarray:
    """Source positions ``(N, 2, H * W)`` (row, col) of every output pixel of every image."""
    theta = np.deg2rad(np.asarray(params["theta"], dtype=np.float64))
    N = theta.shape[0]
    cos, sin = np.cos(theta), np.sin(theta)
    zx = np.asarray(params["zx"], dtype=np.float64)
    zy = np.asarray(params["zy"], dtype=np.float64)
    # A (N, 2, 2) = R @ Z; p = c + A @ (o' - c) + R @ t.
    A = np.empty((N, 2, 2))
    A[:, 0, 0], A[:, 0, 1] = cos * zx, -sin * zy
    A[:, 1, 0], A[:, 1, 1] = sin * zx, cos * zy
    tx = np.asarray(params["tx"], dtype=np.float64)
    ty = np.asarray(params["ty"], dtype=np.float64)
    cr, cc = (H - 1) / 2.0, (W - 1) / 2.0
    # Flips mirror the output coordinate about the centre: fold them into A's columns.
    A[:, :, 0] *= np.where(params["flip_v"], -1.0, 1.0)[:, None]
    A[:, :, 1] *= np.where(params["flip_h"], -1.0, 1.0)[:, None]
    offset = np.empty((N, 2, 1))
    offset[:, 0, 0] = cr + cos * tx - sin * ty
    offset[:, 1, 0] = cc + sin * tx + cos * ty
    rows = np.arange(H, dtype=np.float64) - cr
    cols = np.arange(W, dtype=np.float64) - cc
    o = np.empty((2, H * W))
    o[0] = np.repeat(rows, W)
    o[1] = np.tile(cols, H)
    # One (2N, 2) @ (2, H * W) product, not N stacked ones (the same sums).
    grid = (A.reshape(2 * N, 2) @ o).reshape(N, 2, H * W).astype(dtype, copy=False)
    grid += offset.astype(dtype)
    return grid


def sample(x: np.ndarray, grid: np.ndarray, interpolation: str = "bilinear") -> np.ndarray:
    """Read ``x (N, C, H, W)`` at the positions ``grid (N, 2, H * W)``, edges extended (nearest).

    ``bilinear``: ``(1-fr)(1-fc) x[r0,c0] + (1-fr) fc x[r0,c1] + fr (1-fc) x[r1,c0] + fr fc
    x[r1,c1]`` with ``r0 = floor(r)``, ``fr = r - r0``, ``r1 = min(r0 + 1, H - 1)`` (positions
    clipped to the image first, which is the ``nearest`` fill), computed as
    ``top + (bottom - top) * fr`` with ``top = v00 + (v01 - v00) * fc``; ``nearest``:
    ``x[round(r), round(c)]``.

    The bilinear taps are read from a copy of ``x`` with one more row and column repeating the
    last ones, so that they sit at the fixed flat offsets ``0, 1, W + 1, W + 2`` from the top-left
    one: one index array, four ``np.take`` of shifted views, and at the last row or column the
    extra tap has the edge's value (the ``min`` above, with weight 0 anyway).
    """
    N, C, H, W = x.shape
    r = np.clip(grid[:, 0], 0.0, H - 1)
    c = np.clip(grid[:, 1], 0.0, W - 1)
    if interpolation == "nearest":
        flat = x.reshape(-1)
        base = (np.arange(N, dtype=np.intp) * (C * H * W))[:, None, None] + (
            np.arange(C, dtype=np.intp) * (H * W)
        )[None, :, None]
        idx = np.rint(r).astype(np.intp) * W + np.rint(c).astype(np.intp)
        return np.take(flat, base + idx[:, None, :]).reshape(N, C, H, W)
    Hp, Wp = H + 1, W + 1
    xp = np.empty((N, C, Hp, Wp), dtype=x.dtype)
    xp[:, :, :H, :W] = x
    xp[:, :, H, :W] = x[:, :, H - 1]
    xp[:, :, :, W] = xp[:, :, :, W - 1]
    r0 = np.floor(r)
    c0 = np.floor(c)
    fr = (r - r0).astype(x.dtype, copy=False)[:, None, :]
    fc = (c - c0).astype(x.dtype, copy=False)[:, None, :]
    # Flat index of the top-left tap: r0 * Wp + c0 is exact in the grid's float type up to
    # 2 ** (mantissa bits + 1) pixels, else it is formed in float64.
    if Hp * Wp > 2 ** (np.finfo(r0.dtype).nmant + 1):
        r0 = r0.astype(np.float64)
    pos = r0 * Wp
    pos += c0
    base = (np.arange(N, dtype=np.intp) * (C * Hp * Wp))[:, None, None] + (
        np.arange(C, dtype=np.intp) * (Hp * Wp)
    )[None, :, None]
    i00 = base + pos.astype(np.intp)[:, None, :]
    flat = xp.reshape(-1)
    v00 = np.take(flat, i00)
    top = np.take(flat[1:], i00)  # v01, then the top row's value
    v10 = np.take(flat[Wp:], i00)
    out = np.take(flat[Wp + 1 :], i00)  # v11, then the bottom row's value, then the result
    top -= v00
    top *= fc
    top += v00
    out -= v10
    out *= fc
    out += v10
    out -= top
    out *= fr
    out += top
    return out.reshape(N, C, H, W)


# --- image input ------------------------------------------------------------------------------


def as_images(X: Any, feature_names: Sequence[str] | None = None) -> tuple[str, np.ndarray] | None:
    """``(column name, images)`` when ``X`` holds images, else ``None`` (a table).

    Images are an array ``(N, C, H, W)`` or ``(N, H, W)`` (one channel), or a mapping with one
    such column (``{"x": images}``; with ``feature_names`` the one name listed). The array is not
    copied (a memory map stays one). The name defaults to ``feature_names[0]`` or ``"x"``.
    """
    if isinstance(X, Mapping):
        names = list(feature_names) if feature_names is not None else list(X)
        if len(names) != 1 or names[0] not in X:
            return None
        value = X[names[0]]
        if not isinstance(value, np.ndarray) or value.ndim not in (3, 4):
            return None
        return str(names[0]), value
    if isinstance(X, np.ndarray) and X.ndim in (3, 4):
        name = str(feature_names[0]) if feature_names else "x"
        return name, X
    return None


class ImagePreprocessor:
    """Encoding of image inputs: ``x (N, C, H, W)`` -> float ``(N, C, H, W)`` the network reads.

    ``z = x * scale`` (``scale = 1 / 255`` for ``uint8`` pixels unless featurewise statistics are
    used, else 1), then the featurewise standardization of the spec's ``augmentation``
    (``ImageAugmenter.standardize``, per-channel ``mean`` / ``std`` fitted on the training split
    of ``z``). No per-pixel standardization. ``(N, H, W)`` input gets ``C = 1``.

    It plays the part of ``engine.preprocess.Preprocessor`` for a model: ``feature_names`` (the
    one image column), ``groups`` (every pixel in that one feature), ``n_features_out``
    (``C * H * W``), ``transform``, ``to_state`` / ``from_state``.

    ``pixel_dtype`` is the dtype of the training images (``"uint8"``, ``"float32"``, ...; ``None``
    for a model saved before it was recorded): what a caller must send to predict, e.g. whether
    decoded PNG pixels (0..255) are in the model's scale.
    """

    kind = "images"

    def __init__(
        self,
        name: str,
        input_shape: Sequence[int],
        scale: float,
        augmenter: ImageAugmenter | None = None,
        pixel_dtype: str | None = None,
    ) -> None:
        self.feature_names = [str(name)]
        self.input_shape = tuple(int(v) for v in input_shape)
        self.scale = float(scale)
        self.pixel_dtype = pixel_dtype
        self.augmenter = augmenter if augmenter is not None and augmenter.needs_fit else None

    @property
    def n_features_out(self) -> int:
        return math.prod(self.input_shape)

    @property
    def groups(self) -> list[tuple[int, int]]:
        return [(0, self.n_features_out)]

    @classmethod
    def fit_transform(
        cls,
        name: str,
        x: np.ndarray,
        *,
        rows: np.ndarray | None,
        augmenter: ImageAugmenter | None,
        dtype: Any,
    ) -> tuple[ImagePreprocessor, np.ndarray]:
        """Fit on the images ``rows`` (all when ``None``) and encode every image."""
        x4 = _nchw(x, None, name)
        stats = augmenter is not None and augmenter.needs_fit
        scale = 1.0 / 255.0 if x4.dtype == np.uint8 and not stats else 1.0
        pre = cls(name, x4.shape[1:], scale, augmenter, pixel_dtype=str(x4.dtype))
        z = pre._scaled(x4, dtype)
        if pre.augmenter is not None:
            pre.augmenter.fit(z if rows is None else z[rows])
            z = pre.augmenter.standardize(z).astype(dtype, copy=False)
        return pre, z

    def _scaled(self, x4: np.ndarray, dtype: Any) -> np.ndarray:
        if x4.dtype.kind not in "uif":
            raise InputError(
                f"Image column {self.feature_names[0]!r} holds {x4.dtype} values, not pixels.",
                "not_numeric",
                column=self.feature_names[0],
            )
        z = np.asarray(x4, dtype=dtype)
        if z is x4 or np.shares_memory(z, x4):
            z = z.copy()
        if self.scale != 1.0:
            z *= self.scale
        if x4.dtype.kind == "f" and not np.isfinite(z).all():
            bad = int(np.flatnonzero(~np.isfinite(z).reshape(len(z), -1).all(axis=1))[0])
            raise InputError(
                f"Image {bad} holds NaN or infinite pixels.",
                "non_finite",
                column=self.feature_names[0],
                row=bad,
            )
        return z

    def transform(self, X: Any, *, dtype: Any = np.float64, unknown: str = "error") -> np.ndarray:
        """Encode images ``(N, C, H, W)`` / ``(N, H, W)`` (or ``{name: images}``) of the fitted
        shape; ``InputError`` ``shape_mismatch`` otherwise."""
        found = as_images(X, self.feature_names) if isinstance(X, Mapping) else None
        name = self.feature_names[0]
        if isinstance(X, Mapping) and found is None:
            raise InputError(
                f"Images are expected under column {name!r}, as an array (N, C, H, W).",
                "missing_column",
                column=name,
            )
        x = found[1] if found is not None else np.asarray(X)
        z = self._scaled(_nchw(x, self.input_shape, name), dtype)
        if self.augmenter is not None:
            z = self.augmenter.standardize(z).astype(dtype, copy=False)
        return z

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(meta, arrays)``: the column, shape, scale, the featurewise flags and statistics."""
        aug = self.augmenter
        meta = {
            "kind": self.kind,
            "feature_names": self.feature_names,
            "input_shape": list(self.input_shape),
            "scale": self.scale,
            "pixel_dtype": self.pixel_dtype,
            "featurewise_center": bool(aug and aug.featurewise_center),
            "featurewise_std_normalization": bool(aug and aug.featurewise_std_normalization),
        }
        return meta, (aug.state() if aug is not None else {})

    @classmethod
    def from_state(
        cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
    ) -> ImagePreprocessor:
        """Inverse of :meth:`to_state`."""
        aug = None
        if meta["featurewise_center"] or meta["featurewise_std_normalization"]:
            aug = ImageAugmenter(
                featurewise_center=meta["featurewise_center"],
                featurewise_std_normalization=meta["featurewise_std_normalization"],
            )
            aug.mean, aug.std = arrays["mean"], arrays["std"]
        pixel_dtype = meta.get("pixel_dtype")
        return cls(
            meta["feature_names"][0],
            meta["input_shape"],
            meta["scale"],
            aug,
            pixel_dtype=pixel_dtype if isinstance(pixel_dtype, str) else None,
        )


def _nchw(x: np.ndarray, shape: tuple[int, ...] | None, name: str) -> np.ndarray:
    """``x`` as ``(N, C, H, W)`` (a view), checked against ``shape`` ``(C, H, W)`` if given."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or (shape is not None and tuple(x.shape[1:]) != tuple(shape)):
        want = "(N, C, H, W)" if shape is None else f"(N, {', '.join(map(str, shape))})"
        raise InputError(
            f"Image column {name!r}: expected images of shape {want}, got an array of shape "
            f"{tuple(x.shape)}.",
            "shape_mismatch",
            column=name,
        )
    return x
