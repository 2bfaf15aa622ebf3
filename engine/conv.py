"""Image layers (NCHW): Conv2D, MaxPool2D, AvgPool2D, Flatten, BatchNorm.

They follow the protocol of ``engine.layers`` (``forward(x, training)``, ``backward(dout)`` that
fills ``grads[name]`` for every ``params[name]``, ``predict``). Shapes: ``x (N, C, H, W)`` is a
batch of ``N`` images with ``C`` channels of ``H x W`` pixels; a convolution has ``F`` filters of
``kh x kw`` pixels, ``W (F, C, kh, kw)`` (PyTorch's layout) and ``b (F,)``, and returns
``out (N, F, Ho, Wo)``. ``K = C * kh * kw`` is the length of one receptive field.

Output sizes (Keras / TensorFlow padding rules, stride ``s``, window ``k``):

- ``valid``: ``Ho = (H - k) // s + 1``, no padding;
- ``same``: ``Ho = ceil(H / s)``, with ``pad = max((Ho - 1) * s + k - H, 0)`` zeros split as
  ``pad // 2`` before and the rest after (so an odd total pads one more row at the bottom).

Convolution is im2col + one matrix product: the windows of the batch are copied into
``cols (K + 1, N * Ho * Wo)`` whose last row is ones, so the bias is folded into the product
``[W | b] (F, K + 1) @ cols``; backward gets ``[dW | db]`` from one product
``dout (F, N * Ho * Wo) @ cols.T`` and scatters ``W.T @ dout`` back onto the image (col2im). The
copies loop over the ``kh * kw`` kernel offsets at most, never over images or pixels; ``cols`` and
the padded input are scratch buffers reused from batch to batch.

All arrays stay in the dtype of the parameters (float32 by default, float64 for gradient checks).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from engine.initializers import init_weights
from engine.layers import Layer

PADDINGS: tuple[str, ...] = ("valid", "same")


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 2)`` stays; every entry must be a positive int."""
    pair = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int | np.integer) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def output_size(size: int, k: int, s: int, padding: str) -> tuple[int, int, int]:
    """``(out, pad_before, pad_after)`` along one axis of ``size`` pixels (module formulas)."""
    if padding == "valid":
        if size < k:
            raise ValueError(f"window {k} is larger than the input ({size} pixels)")
        return (size - k) // s + 1, 0, 0
    if padding == "same":
        out = -(-size // s)
        pad = max((out - 1) * s + k - size, 0)
        return out, pad // 2, pad - pad // 2
    raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """View ``(N, C, Ho, Wo, kh, kw)`` of every ``kh x kw`` window of ``x (N, C, H, W)``."""
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))
    if sh > 1 or sw > 1:
        win = win[:, :, ::sh, ::sw]
    return win


def _offset_slices(kh: int, kw: int, sh: int, sw: int, Ho: int, Wo: int):
    """For each kernel offset ``(i, j)``: the strided slices of the input it touches."""
    for i in range(kh):
        for j in range(kw):
            yield i, j, slice(i, i + sh * (Ho - 1) + 1, sh), slice(j, j + sw * (Wo - 1) + 1, sw)


class _Scratch:
    """Arrays reused from batch to batch (one per name, reallocated when the shape changes)."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, bool]:
        """``(array, fresh)``; ``fresh`` is True when the array was just allocated."""
        a = self._arrays.get(name)
        if a is not None and a.shape == shape and a.dtype == dtype:
            return a, False
        a = self._arrays[name] = np.empty(shape, dtype=dtype)
        return a, True


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as in Keras and PyTorch) of ``x (N, C, H, W)``.

    ``out[n, f, y, x] = b[f] + sum_{c, i, j} W[f, c, i, j] * xp[n, c, y * sh + i, x * sw + j]``
    with ``xp`` the zero-padded input (module docstring for ``valid`` / ``same``).

    Parameters
    ----------
    W : ndarray (F, C, kh, kw)
    b : ndarray (F,)
    strides : int or (sh, sw)
    padding : ``"valid"`` or ``"same"``
    need_dx : bool
        ``False`` for the first layer of a network (its input gradient is never used).

    Notes
    -----
    Forward ``out (F, N * Ho * Wo) = [W | b] (F, K + 1) @ cols (K + 1, N * Ho * Wo)``, returned as
    ``(N, F, Ho, Wo)``. Backward, with ``dout`` reshaped to ``(F, N * Ho * Wo)``:
    ``[dW | db] = dout @ cols.T`` and ``dx = col2im(W.T (K, F) @ dout)`` (the sum, over the
    windows that contain a pixel, of their gradients).
    """

    def __init__(
        self,
        W: np.ndarray,
        b: np.ndarray,
        *,
        strides: int | tuple[int, int] = 1,
        padding: str = "valid",
        need_dx: bool = True,
    ) -> None:
        super().__init__()
        if W.ndim != 4 or b.shape != (W.shape[0],):
            raise ValueError(f"Conv2D needs W (F, C, kh, kw) and b (F,), got {W.shape}, {b.shape}")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.params = {"W": W, "b": b}
        self.grads = {"W": np.zeros_like(W), "b": np.zeros_like(b)}
        self.strides = _pair(strides, "strides")
        self.padding = padding
        self.need_dx = need_dx
        self._scratch = _Scratch()

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.params["W"].shape[2], self.params["W"].shape[3]

    def output_shape(self, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(F, Ho, Wo)`` for one image of shape ``(C, H, W)``."""
        F, C, kh, kw = self.params["W"].shape
        if input_shape[0] != C:
            raise ValueError(f"Conv2D expects {C} input channels, got {input_shape[0]}")
        Ho = output_size(input_shape[1], kh, self.strides[0], self.padding)[0]
        Wo = output_size(input_shape[2], kw, self.strides[1], self.padding)[0]
        return F, Ho, Wo

    def _im2col(self, x: np.ndarray, reuse: bool) -> tuple[np.ndarray, tuple[int, ...]]:
        """``cols (K + 1, N * Ho * Wo)`` (last row ones) and the padded input's geometry."""
        W = self.params["W"]
        _, C, kh, kw = W.shape
        sh, sw = self.strides
        N, _, H, Wd = x.shape
        Ho, pt, pb = output_size(H, kh, sh, self.padding)
        Wo, pl, pr = output_size(Wd, kw, sw, self.padding)
        scratch = self._scratch if reuse else _Scratch()
        if pt or pb or pl or pr:
            xp, fresh = scratch.get("xp", (N, C, H + pt + pb, Wd + pl + pr), W.dtype)
            if fresh:
                xp.fill(0.0)  # the border stays zero from batch to batch
            xp[:, :, pt : pt + H, pl : pl + Wd] = x
        else:
            xp = x
        K = C * kh * kw
        cols, fresh = scratch.get("cols", (K + 1, N, Ho, Wo), W.dtype)
        if fresh:
            cols[K] = 1.0
        # One strided copy: cols[(c, i, j), n, y, x] = xp[n, c, y * sh + i, x * sw + j].
        np.copyto(
            cols[:K].reshape(C, kh, kw, N, Ho, Wo),
            _windows(xp, kh, kw, sh, sw).transpose(1, 4, 5, 0, 2, 3),
        )
        return cols.reshape(K + 1, N * Ho * Wo), (N, C, H, Wd, Ho, Wo, pt, pl, xp.shape)

    def _forward(self, x: np.ndarray, reuse: bool) -> tuple[np.ndarray, np.ndarray, tuple]:
        W, b = self.params["W"], self.params["b"]
        F = W.shape[0]
        cols, geom = self._im2col(x, reuse)
        Wb = np.empty((F, cols.shape[0]), dtype=W.dtype)
        Wb[:, :-1] = W.reshape(F, -1)
        Wb[:, -1] = b
        out = Wb @ cols  # (F, N * Ho * Wo)
        N, Ho, Wo = geom[0], geom[4], geom[5]
        out = np.ascontiguousarray(out.reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3))
        return out, cols, geom

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if not training:
            self.cache = None
            return self._forward(x, reuse=False)[0]
        out, cols, geom = self._forward(x, reuse=True)
        self.cache = (cols, geom)
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x, reuse=False)[0]

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        cols, (N, C, H, Wd, Ho, Wo, pt, pl, xp_shape) = self.cache
        W = self.params["W"]
        F, _, kh, kw = W.shape
        K = C * kh * kw
        # (N, F, Ho, Wo) -> (F, N * Ho * Wo), the orientation of cols.
        d2 = np.ascontiguousarray(dout.transpose(1, 0, 2, 3)).reshape(F, N * Ho * Wo)
        dWb = d2 @ cols.T  # (F, K + 1) = [dW | db]
        self.grads["W"][...] = dWb[:, :K].reshape(W.shape)
        self.grads["b"][...] = dWb[:, K]
        if not self.need_dx:
            return None
        dcols = (W.reshape(F, K).T @ d2).reshape(C, kh, kw, N, Ho, Wo)
        dxp = np.zeros((C, N, *xp_shape[2:]), dtype=W.dtype)
        sh, sw = self.strides
        for i, j, rows, cols_ in _offset_slices(kh, kw, sh, sw, Ho, Wo):
            dxp[:, :, rows, cols_] += dcols[:, i, j]
        return dxp[:, :, pt : pt + H, pl : pl + Wd].transpose(1, 0, 2, 3)


def make_conv2d(
    in_channels: int,
    filters: int,
    kernel_size: int | tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: str = "valid",
    init: str = "glorot_uniform",
    rng: np.random.Generator,
    dtype: np.dtype | str = "float32",
    need_dx: bool = True,
) -> Conv2D:
    """A freshly initialised Conv2D: ``W`` drawn by ``engine.initializers.init_weights`` with
    ``fan_in = C * kh * kw`` and ``fan_out = F`` (as a ``(K, F)`` matrix, transposed to
    ``(F, C, kh, kw)``), ``b = 0``."""
    kh, kw = _pair(kernel_size, "kernel_size")
    C, F = int(in_channels), int(filters)
    W = init_weights(init, C * kh * kw, F, rng=rng, dtype=dtype)
    W = np.ascontiguousarray(W.T).reshape(F, C, kh, kw)
    b = np.zeros(F, dtype=W.dtype)
    return Conv2D(W, b, strides=strides, padding=padding, need_dx=need_dx)


class _Pool2D(Layer):
    """Shared geometry of the pooling layers (``valid`` windows, PyTorch's floor mode)."""

    def __init__(
        self, pool_size: int | tuple[int, int] = 2, strides: int | tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.pool_size = _pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else _pair(strides, "strides")

    def output_shape(self, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(C, Ho, Wo)`` for one image ``(C, H, W)``: ``Ho = (H - ph) // sh + 1``."""
        C, H, Wd = input_shape
        (ph, pw), (sh, sw) = self.pool_size, self.strides
        return C, output_size(H, ph, sh, "valid")[0], output_size(Wd, pw, sw, "valid")[0]

    def _geometry(self, shape: tuple[int, ...]) -> tuple[int, int, int, int, int, int]:
        (ph, pw), (sh, sw) = self.pool_size, self.strides
        Ho = output_size(shape[2], ph, sh, "valid")[0]
        Wo = output_size(shape[3], pw, sw, "valid")[0]
        return ph, pw, sh, sw, Ho, Wo

    @property
    def _overlapping(self) -> bool:
        return self.strides[0] < self.pool_size[0] or self.strides[1] < self.pool_size[1]

    def _tiles(self, shape: tuple[int, ...]) -> bool:
        """Whether the windows tile the input exactly (each pixel in exactly one window)."""
        ph, pw, sh, sw, Ho, Wo = self._geometry(shape)
        return (sh, sw) == (ph, pw) and tuple(shape[2:]) == (sh * Ho, sw * Wo)


class MaxPool2D(_Pool2D):
    """Max over each ``ph x pw`` window: ``out[n, c, y, x] = max_{i,j} x[n, c, y*sh+i, x*sw+j]``.

    ``x (N, C, H, W) -> out (N, C, Ho, Wo)``, ``Ho = (H - ph) // sh + 1`` (rows that fit no
    window are dropped, like Keras ``valid`` and PyTorch's default). Backward routes each
    ``dout[n, c, y, x]`` to the window's arg-max; on ties to the FIRST maximum in row-major order
    of the window (as PyTorch), and with overlapping windows (``strides < pool_size``) a pixel
    collects the gradients of every window it is the arg-max of.
    """

    def _pool(self, x: np.ndarray, keep_arg: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        """``out`` and, if ``keep_arg``, the masks ``gt[o - 1] = window_o > max(windows < o)``.

        The arg-max of a window is the LAST offset whose mask is set (a strict ``>`` keeps the
        earlier offset on a tie), which ``backward`` recovers from the end.
        """
        ph, pw, sh, sw, Ho, Wo = self._geometry(x.shape)
        slices = list(_offset_slices(ph, pw, sh, sw, Ho, Wo))
        _, _, r0, c0 = slices[0]
        out = x[:, :, r0, c0].copy()
        gts = []
        for _, _, rows, cols in slices[1:]:
            window = x[:, :, rows, cols]
            if keep_arg:
                gts.append(np.greater(window, out))
            np.maximum(out, window, out=out)
        return out, gts

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if not training:
            self.cache = None
            return self._pool(x, keep_arg=False)[0]
        out, gts = self._pool(x, keep_arg=True)
        self.cache = (x.shape, x.dtype, gts)
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._pool(x, keep_arg=False)[0]

    def backward(self, dout: np.ndarray) -> np.ndarray:
        shape, dtype, gts = self.cache
        ph, pw, sh, sw, Ho, Wo = self._geometry(shape)
        tiles = self._tiles(shape)
        dx = (np.empty if tiles else np.zeros)(shape, dtype=dtype)
        slices = list(_offset_slices(ph, pw, sh, sw, Ho, Wo))
        later = None  # windows whose arg-max is an offset after o
        for o in range(len(slices) - 1, -1, -1):
            _, _, rows, cols = slices[o]
            if o == 0:
                win = ~later if later is not None else np.ones(dout.shape, dtype=bool)
            elif later is None:
                win = gts[o - 1]
                later = win.copy()
            else:
                win = gts[o - 1] & ~later
                later |= gts[o - 1]
            if tiles:
                np.multiply(dout, win, out=dx[:, :, rows, cols])
            else:
                dx[:, :, rows, cols] += dout * win
        return dx


class AvgPool2D(_Pool2D):
    """Mean over each ``ph x pw`` window: ``out = sum_{i,j} x[n, c, y*sh+i, x*sw+j] / (ph pw)``.

    ``x (N, C, H, W) -> out (N, C, Ho, Wo)`` (``valid`` windows). Backward: every pixel of a
    window gets ``dout / (ph pw)``, summed over the windows that contain it.
    """

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        ph, pw, sh, sw, Ho, Wo = self._geometry(x.shape)
        out = None
        for _, _, rows, cols in _offset_slices(ph, pw, sh, sw, Ho, Wo):
            if out is None:
                out = x[:, :, rows, cols].copy()
            else:
                out += x[:, :, rows, cols]
        out *= 1.0 / (ph * pw)
        self.cache = (x.shape, x.dtype) if training else None
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        shape, dtype = self.cache
        ph, pw, sh, sw, Ho, Wo = self._geometry(shape)
        part = dout * (1.0 / (ph * pw))
        dx = np.zeros(shape, dtype=dtype)
        for _, _, rows, cols in _offset_slices(ph, pw, sh, sw, Ho, Wo):
            dx[:, :, rows, cols] += part
        return dx


class Flatten(Layer):
    """``(N, C, H, W) -> (N, C * H * W)`` in C order (channel-major, as PyTorch's ``Flatten``);
    backward reshapes ``dout (N, C * H * W)`` back."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self.cache = x.shape
        return x.reshape(x.shape[0], -1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], -1)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout.reshape(self.cache)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int]:
        return (math.prod(input_shape),)


class BatchNorm(Layer):
    """Batch normalization (Ioffe & Szegedy 2015) per feature of ``(N, D)`` or channel of
    ``(N, C, H, W)``.

    Training: with ``mu``, ``var`` the mean and (biased) variance of the batch over every axis but
    the feature axis (``M = N`` or ``N * H * W`` values each),
    ``xhat = (x - mu) / sqrt(var + eps)``, ``out = gamma * xhat + beta``; the running statistics
    move as ``running = momentum * running + (1 - momentum) * batch`` (Keras' convention: PyTorch's
    ``momentum`` is ``1 - momentum``), the running variance with the unbiased ``var * M / (M - 1)``
    as in PyTorch. Predict: ``out = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``.

    Parameters ``gamma (C,)`` (starts at 1) and ``beta (C,)`` (starts at 0) are learned and never
    penalised; ``buffers["running_mean"] (C,)`` and ``buffers["running_var"] (C,)`` are the
    statistics a saved model must keep.

    Backward (training mode): ``dbeta = sum dout``, ``dgamma = sum dout * xhat`` and
    ``dx = gamma / sqrt(var + eps) / M * (M * dout - dbeta - xhat * dgamma)`` (sums over the same
    axes as the statistics).
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.99,
        eps: float = 1e-3,
        dtype: np.dtype | str = "float32",
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"BatchNorm momentum must be in [0, 1), got {momentum}")
        if not eps > 0.0:
            raise ValueError(f"BatchNorm eps must be > 0, got {eps}")
        C = int(num_features)
        self.params = {"gamma": np.ones(C, dtype=dtype), "beta": np.zeros(C, dtype=dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {
            "running_mean": np.zeros(C, dtype=dtype),
            "running_var": np.ones(C, dtype=dtype),
        }
        self.momentum = float(momentum)
        self.eps = float(eps)

    @staticmethod
    def _axes(x: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Reduction axes and the broadcast shape of a per-feature vector."""
        if x.ndim == 2:
            return (0,), (1, x.shape[1])
        if x.ndim == 4:
            return (0, 2, 3), (1, x.shape[1], 1, 1)
        raise ValueError(f"BatchNorm expects (N, D) or (N, C, H, W) input, got shape {x.shape}")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if not training:
            self.cache = None
            return self.predict(x)
        axes, bshape = self._axes(x)
        M = x.size // x.shape[1]
        mu = x.mean(axis=axes)
        xc = x - mu.reshape(bshape)
        var = np.einsum("ij,ij->j", xc, xc) / M if x.ndim == 2 else (xc * xc).mean(axis=axes)
        var = var.astype(x.dtype, copy=False)
        inv_std = 1.0 / np.sqrt(var + self.eps)
        xhat = xc
        xhat *= inv_std.reshape(bshape)
        out = xhat * self.params["gamma"].reshape(bshape)
        out += self.params["beta"].reshape(bshape)
        m = self.momentum
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        rm *= m
        rm += (1.0 - m) * mu
        rv *= m
        rv += (1.0 - m) * var * (M / max(M - 1, 1))
        self.cache = (xhat, inv_std, bshape, axes)
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        _, bshape = self._axes(x)
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        scale = self.params["gamma"] / np.sqrt(rv + self.eps)
        shift = self.params["beta"] - rm * scale
        out = x * scale.reshape(bshape)
        out += shift.reshape(bshape)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        xhat, inv_std, bshape, axes = self.cache
        M = xhat.size // xhat.shape[1]
        dbeta = dout.sum(axis=axes)
        dgamma = (dout * xhat).sum(axis=axes)
        self.grads["beta"][...] = dbeta
        self.grads["gamma"][...] = dgamma
        scale = (self.params["gamma"] * inv_std) * (1.0 / M)
        dx = dout * float(M)
        dx -= dbeta.reshape(bshape)
        dx -= xhat * dgamma.reshape(bshape)
        dx *= scale.reshape(bshape)
        return dx
