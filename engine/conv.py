"""The convolution layer (NCHW), Conv2D, and the window geometry the pooling layers share.

Image layers (this one, ``engine.pooling``, ``engine.batchnorm``) follow the protocol of
``engine.layers`` (``forward(x, training)``, ``backward(dout)`` that fills ``grads[name]`` for
every ``params[name]``, ``predict``). Shapes: ``x (N, C, H, W)`` is a
batch of ``N`` images with ``C`` channels of ``H x W`` pixels; a convolution has ``F`` filters of
``kh x kw`` pixels, ``W (F, C, kh, kw)`` (PyTorch's layout) and ``b (F,)``, and returns
``out (N, F, Ho, Wo)``. ``K = C * kh * kw`` is the length of one receptive field.

Output sizes (Keras / TensorFlow padding rules, stride ``s``, window ``k``):

- ``valid``: ``Ho = (H - k) // s + 1``, no padding;
- ``same``: ``Ho = ceil(H / s)``, with ``pad = max((Ho - 1) * s + k - H, 0)`` zeros split as
  ``pad // 2`` before and the rest after (so an odd total pads one more row at the bottom).

Convolution is im2col + a matrix product: the windows are copied into columns
``cols (K + 1, Q)`` per image (``Q`` output positions) whose last row is ones, so the bias is
folded into the product ``[W | b] (F, K + 1) @ cols``; backward gets ``[dW | db].T`` from
``cols @ dout.T (Q, F)`` (the long axis inner in both operands, no transposed copy). With stride 1
the columns use the padded image's row pitch, so each kernel offset is one contiguous run per image
and channel (``Conv2D._windows_view``), and the input gradient needs no col2im: the shifts of
``dout`` by ``j`` columns are flat shifts, one product gives each kernel row's share and ``kh``
shifted additions sum them (``Conv2D._flat_dx``); other strides scatter ``W.T @ dout`` (col2im).
The batch is processed in blocks of images whose columns stay in cache (``Conv2D.block_bytes``);
the copies loop over blocks and over the ``kh * kw`` kernel offsets at most, never over single
images or pixels, the buffers are reused from batch to batch, and backward starts with the last
block, whose columns the forward left in the buffer.

All arrays stay in the dtype of the parameters (float32 by default, float64 for gradient checks).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from engine.initializers import init_weights
from engine.layers import Layer

PADDINGS: tuple[str, ...] = ("valid", "same")


def pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
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


def offset_slices(
    kh: int, kw: int, sh: int, sw: int, Ho: int, Wo: int
) -> Iterator[tuple[int, int, slice, slice]]:
    """For each kernel offset ``(i, j)``: the strided slices of the input it touches."""
    for i in range(kh):
        for j in range(kw):
            yield i, j, slice(i, i + sh * (Ho - 1) + 1, sh), slice(j, j + sw * (Wo - 1) + 1, sw)


class _Scratch:
    """Arrays reused from batch to batch, by name and shape (the last, smaller batch of an epoch
    gets its own set instead of evicting the full-size one)."""

    MAX_ARRAYS = 32

    def __init__(self) -> None:
        self._arrays: dict[tuple, np.ndarray] = {}
        # What a buffer holds, where it matters (Conv2D: the forward pass and block of "cols").
        self.tags: dict[tuple, tuple] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, bool]:
        """``(array, fresh)``; ``fresh``: just allocated, contents undefined."""
        key = (name, shape, np.dtype(dtype).str)
        a = self._arrays.get(key)
        if a is not None:
            return a, False
        if len(self._arrays) >= self.MAX_ARRAYS:
            self._arrays.clear()
            self.tags.clear()
        a = self._arrays[key] = np.empty(shape, dtype=dtype)
        return a, True


class _ConvGeometry(NamedTuple):
    """Sizes of one Conv2D call: input ``(N, C, H, W)``, output ``(Ho, Wo)``, padding before
    (``pt``, ``pl``), padded ``(Hp, Wp)``; ``flat`` layout (stride 1), ``Q`` columns per image,
    ``m`` images per block."""

    N: int
    C: int
    H: int
    W: int
    Ho: int
    Wo: int
    pt: int
    pl: int
    Hp: int
    Wp: int
    flat: bool
    Q: int
    m: int  # images per block


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
    strided_output : bool
        Return ``out`` as a strided view (of a fresh ``(F, N, Ho, Q / Ho)`` array the products
        are written into) instead of a C-contiguous copy: same values, one pass less. For a
        consumer that reads its input through strided slices anyway, a pooling layer
        (``engine.network`` sets it there); elementwise layers run slower on such a view.

    Notes
    -----
    Forward, per block of images: ``out (F, Q) = [W | b] (F, K + 1) @ cols (K + 1, Q)``, returned
    as ``(N, F, Ho, Wo)``. Backward, with ``dout`` in the columns' order ``(F, Q)``:
    ``[dW | db].T = sum_blocks cols @ dout.T`` and ``dx`` the sum, over the windows that contain
    a pixel, of their gradients ``W.T (K, F) @ dout`` (stride 1: ``_flat_dx``, else col2im). The
    forward keeps the (padded) input, not the columns, for backward (and the last block's columns
    stay in the buffer).

    Network wiring: ``params`` ``W`` (penalised like a Dense weight) and ``b`` (never penalised);
    ``output_shape((C, H, W))`` gives the next layer's input shape; ``make_conv2d`` initialises.
    """

    def __init__(
        self,
        W: np.ndarray,
        b: np.ndarray,
        *,
        strides: int | tuple[int, int] = 1,
        padding: str = "valid",
        need_dx: bool = True,
        strided_output: bool = False,
    ) -> None:
        super().__init__()
        if W.ndim != 4 or b.shape != (W.shape[0],):
            raise ValueError(f"Conv2D needs W (F, C, kh, kw) and b (F,), got {W.shape}, {b.shape}")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.params = {"W": W, "b": b}
        self.grads = {"W": np.zeros_like(W), "b": np.zeros_like(b)}
        self.strides = pair(strides, "strides")
        self.padding = padding
        self.need_dx = need_dx
        self.strided_output = strided_output
        self._scratch = _Scratch()

    # Cache blocking: the columns of about ``block_bytes`` worth of images (at least
    # ``block_min_images``) are built, multiplied and scattered back while they are in cache.
    block_bytes = 1 << 20
    block_min_images = 16

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

    def _geometry(self, x: np.ndarray) -> _ConvGeometry:
        _, C, kh, kw = self.params["W"].shape
        sh, sw = self.strides
        N, _, H, Wd = x.shape
        Ho, pt, pb = output_size(H, kh, sh, self.padding)
        Wo, pl, pr = output_size(Wd, kw, sw, self.padding)
        Hp, Wp = H + pt + pb, Wd + pl + pr
        flat = (sh, sw) == (1, 1)
        Q = Ho * Wp if flat else Ho * Wo
        per_image = (C * kh * kw + 1) * Q * x.itemsize
        m = int(min(N, max(self.block_min_images, self.block_bytes // per_image)))
        return _ConvGeometry(N, C, H, Wd, Ho, Wo, pt, pl, Hp, Wp, flat, Q, m)

    def _source(self, x: np.ndarray, g: _ConvGeometry, scratch: _Scratch) -> np.ndarray:
        """The zero-padded input ``xp (N, C, Hp, Wp)``, C-contiguous (``x`` itself if it is)."""
        if (g.Hp, g.Wp) == (g.H, g.W):
            return np.ascontiguousarray(x)
        xp, fresh = scratch.get("xp", (g.N, g.C, g.Hp, g.Wp), x.dtype)
        if fresh:
            xp.fill(0.0)  # the border stays zero from batch to batch
        xp[:, :, g.pt : g.pt + g.H, g.pl : g.pl + g.W] = x
        return xp

    def _windows_view(self, xp: np.ndarray, g: _ConvGeometry) -> np.ndarray:
        """Read-only view of every window, ordered ``(C, kh, kw, N, ...)`` like the columns.

        Stride 1 ("flat" layout): each padded image is a flat array with row pitch ``Wp``, so the
        window of output ``q = y * Wp + x`` at kernel offset ``(i, j)`` starts at
        ``q + i * Wp + j``: the view is ``(C, kh, kw, N, L)`` with ``L = (Ho - 1) * Wp + Wo``
        contiguous values per (offset, image, channel). Outputs are computed on the ``Ho x Wp``
        grid (``Q = Ho * Wp`` columns per image); the columns ``x >= Wo`` are discarded (and get
        zero gradient). Other strides: ``(C, kh, kw, N, Ho, Wo)``, ``Q = Ho * Wo``.
        """
        _, C, kh, kw = self.params["W"].shape
        if not g.flat:
            return _windows(xp, kh, kw, *self.strides).transpose(1, 4, 5, 0, 2, 3)
        s = xp.itemsize
        L = (g.Ho - 1) * g.Wp + g.Wo
        return as_strided(
            xp,
            shape=(C, kh, kw, g.N, L),
            strides=(g.Hp * g.Wp * s, g.Wp * s, s, C * g.Hp * g.Wp * s, s),
            writeable=False,
        )

    def _im2col(
        self,
        windows: np.ndarray,
        g: _ConvGeometry,
        n0: int,
        mm: int,
        scratch: _Scratch,
        tag: object = None,
    ) -> np.ndarray:
        """``cols (K + 1, mm * Q)`` of images ``n0 .. n0 + mm``: one column per output position,
        the last row ones (the bias), one strided copy. ``tag`` names the forward pass whose
        columns the buffer then holds (``_cached_cols``)."""
        _, C, kh, kw = self.params["W"].shape
        K = C * kh * kw
        cols, fresh = scratch.get("cols", (K + 1, mm, g.Q), windows.dtype)
        if fresh:
            cols[:K].fill(0.0)  # flat layout: the tail [L, Q) of every row is never written
            cols[K] = 1.0
        block = windows[:, :, :, n0 : n0 + mm]
        if g.flat:
            np.copyto(cols[:K].reshape(C, kh, kw, mm, g.Q)[..., : block.shape[-1]], block)
        else:
            np.copyto(cols[:K].reshape(C, kh, kw, mm, g.Ho, g.Wo), block)
        scratch.tags[("cols", mm)] = (tag, n0)
        return cols.reshape(K + 1, mm * g.Q)

    def _cached_cols(
        self, g: _ConvGeometry, n0: int, mm: int, scratch: _Scratch, tag: object
    ) -> np.ndarray | None:
        """The columns of images ``n0 .. n0 + mm`` if the buffer still holds the ones the
        forward pass ``tag`` built (its last block), else ``None``."""
        held = scratch.tags.get(("cols", mm))
        if held is None or held[0] is not tag or held[1] != n0:
            return None
        K1 = self.params["W"][0].size + 1
        return scratch.get("cols", (K1, mm, g.Q), self.params["W"].dtype)[0].reshape(K1, -1)

    def _blocks(self, g: _ConvGeometry) -> list[tuple[int, int]]:
        """``(n0, mm)``: the first image and the number of images of each block. A partial block
        (``N % m`` images) comes first, so that the last one, whose columns backward reuses, is
        a full block (batch 100 in blocks of 16: 4 + 6 x 16, not 6 x 16 + 4)."""
        r = g.N % g.m
        head = [(0, r)] if r else []
        return head + [(n0, g.m) for n0 in range(r, g.N, g.m)]

    def _forward(
        self, x: np.ndarray, scratch: _Scratch, tag: object = None
    ) -> tuple[np.ndarray, np.ndarray, _ConvGeometry]:
        W, b = self.params["W"], self.params["b"]
        F = W.shape[0]
        g = self._geometry(x)
        xp = self._source(x, g, scratch)
        windows = self._windows_view(xp, g)
        Wb = np.empty((F, W[0].size + 1), dtype=W.dtype)
        Wb[:, :-1] = W.reshape(F, -1)
        Wb[:, -1] = b
        if self.strided_output:  # every block's product straight into one (F, N * Q) array
            wide = np.empty((F, g.N * g.Q), dtype=W.dtype)
            for n0, mm in self._blocks(g):
                cols = self._im2col(windows, g, n0, mm, scratch, tag)
                np.matmul(Wb, cols, out=wide[:, n0 * g.Q : (n0 + mm) * g.Q])
            grid = wide.reshape(F, g.N, g.Ho, g.Q // g.Ho)  # (F, N, Ho, Wp or Wo)
            return grid.transpose(1, 0, 2, 3)[:, :, :, : g.Wo], xp, g
        out = np.empty((g.N, F, g.Ho, g.Wo), dtype=W.dtype)
        for n0, mm in self._blocks(g):
            cols = self._im2col(windows, g, n0, mm, scratch, tag)
            res, _ = scratch.get("out", (F, mm * g.Q), W.dtype)
            np.matmul(Wb, cols, out=res)
            wide = res.reshape(F, mm, g.Ho, g.Q // g.Ho)  # (F, mm, Ho, Wp or Wo)
            np.copyto(out[n0 : n0 + mm], wide[:, :, :, : g.Wo].transpose(1, 0, 2, 3))
        return out, xp, g

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if not training:
            self.cache = None
            return self.predict(x)
        tag = object()  # identifies this pass's columns in the scratch buffers
        out, xp, g = self._forward(x, self._scratch, tag)
        self.cache = (xp, g, tag)
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x, _Scratch())[0]

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        xp, g, tag = self.cache
        W = self.params["W"]
        F, C, kh, kw = W.shape
        K = C * kh * kw
        scratch = self._scratch
        windows = self._windows_view(xp, g)
        # Last block first: its columns are still in the buffer from the forward pass.
        blocks = self._blocks(g)[::-1]
        dWbT = np.empty((len(blocks), K + 1, F), dtype=W.dtype)  # [dW | db].T per block
        dxp = np.empty((g.N, C, g.Hp, g.Wp), dtype=W.dtype) if self.need_dx else None
        # Stride 1 with dx: dout goes into the unshifted rows of _flat_dx's S (F, kw, mm * Q).
        shifts = kw if g.flat and dxp is not None else 1
        Wrows = W.transpose(2, 1, 0, 3).reshape(kh * C, F * kw)  # W' of _flat_dx
        for k, (n0, mm) in enumerate(blocks):
            cols = self._cached_cols(g, n0, mm, scratch, tag)
            if cols is None:
                cols = self._im2col(windows, g, n0, mm, scratch)
            # dout (mm, F, Ho, Wo) -> (F, mm * Q) in the columns' order, zero on discarded ones.
            S, fresh = scratch.get("dout", (F, shifts, mm * g.Q), W.dtype)
            if fresh:
                S.fill(0.0)
            d2 = S[:, 0]
            wide = d2.reshape(F, mm, g.Ho, g.Q // g.Ho)
            np.copyto(wide[:, :, :, : g.Wo], dout[n0 : n0 + mm].transpose(1, 0, 2, 3))
            # [dW | db].T (K + 1, F) = cols @ d2.T: the long axis is the inner one of both.
            np.matmul(cols, d2.T, out=dWbT[k])
            if dxp is None:
                continue
            if g.flat:
                self._flat_dx(S, Wrows, dxp[n0 : n0 + mm], g, mm, scratch)
            else:
                dcols, _ = scratch.get("dcols", (K, mm * g.Q), W.dtype)
                np.matmul(W.reshape(F, K).T, d2, out=dcols)
                self._col2im(dcols, dxp[n0 : n0 + mm], g, mm)
        dWb = dWbT.sum(axis=0) if len(blocks) > 1 else dWbT[0]
        self.grads["W"][...] = dWb[:K].T.reshape(W.shape)
        self.grads["b"][...] = dWb[K]
        if dxp is None:
            return None
        if (g.Hp, g.Wp) == (g.H, g.W):
            return dxp
        return dxp[:, :, g.pt : g.pt + g.H, g.pl : g.pl + g.W]

    def _flat_dx(
        self,
        S: np.ndarray,
        Wrows: np.ndarray,
        dxp: np.ndarray,
        g: _ConvGeometry,
        mm: int,
        scratch: _Scratch,
    ) -> None:
        """Stride 1: ``dxp (mm, C, Hp, Wp)`` of one block from ``d2 = S[:, 0]`` (``F, mm * Q``).

        ``dxp[n, c, y + i, x] = sum_{f, j} W[f, c, i, j] * d2[f, n, y, x - j]`` summed over
        ``i``. On the flat grid (row pitch ``Wp``, zero on the discarded columns) the ``x - j``
        shift is a shift of the flat index: ``S[f, j, q] = d2[f, q - j]`` (zero for ``q < j``)
        is ``kw - 1`` shifted copies of ``d2``, ``E = Wrows @ S`` (``Wrows[(i, c), (f, j)] =
        W[f, c, i, j]``) one product, and ``dxp`` gets the ``kh`` row shifts of ``E``: ``kh``
        additions instead of the ``kh * kw`` of a col2im, and columns ``C * kh`` rows long
        instead of ``C * kh * kw``.
        """
        W = self.params["W"]
        F, C, kh, kw = W.shape
        n = mm * g.Q
        for j in range(1, kw):
            np.copyto(S[:, j, j:], S[:, 0, : n - j])
        S = S.reshape(F * kw, n)
        E, _ = scratch.get("drows", (kh * C, n), W.dtype)
        np.matmul(Wrows, S, out=E)
        E4 = E.reshape(kh, C, mm, g.Q)
        dxf = dxp.reshape(mm, C, g.Hp * g.Wp).transpose(1, 0, 2)  # (C, mm, Hp * Wp)
        np.copyto(dxf[:, :, : g.Q], E4[0])
        dxf[:, :, g.Q :] = 0.0
        for i in range(1, kh):
            dv = dxf[:, :, i * g.Wp : i * g.Wp + g.Q]
            np.add(dv, E4[i], out=dv)

    def _col2im(self, dcols: np.ndarray, dxp: np.ndarray, g: _ConvGeometry, mm: int) -> None:
        """Strides > 1: add each column's gradient onto the pixels of its window,
        ``dxp (mm, C, Hp, Wp)`` (zero on entry)."""
        _, C, kh, kw = self.params["W"].shape
        dxp[...] = 0.0
        dc = dcols.reshape(C, kh, kw, mm, g.Ho, g.Wo)
        for i, j, rows, cols in offset_slices(kh, kw, *self.strides, g.Ho, g.Wo):
            dv = dxp[:, :, rows, cols]
            dv += dc[:, i, j].transpose(1, 0, 2, 3)


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
    kh, kw = pair(kernel_size, "kernel_size")
    C, F = int(in_channels), int(filters)
    W = init_weights(init, C * kh * kw, F, rng=rng, dtype=dtype)
    W = np.ascontiguousarray(W.T).reshape(F, C, kh, kw)
    b = np.zeros(F, dtype=W.dtype)
    return Conv2D(W, b, strides=strides, padding=padding, need_dx=need_dx)
