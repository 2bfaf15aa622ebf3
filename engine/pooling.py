"""Pooling layers (NCHW): MaxPool2D and AvgPool2D over ``valid`` windows, and Flatten.

They follow the protocol of ``engine.layers``; window sizes and strides as in ``engine.conv``
(``Ho = (H - ph) // sh + 1``: rows that fit no window are dropped, PyTorch's floor mode).
"""

from __future__ import annotations

import math

import numpy as np

from engine.conv import offset_slices, output_size, pair
from engine.layers import Layer

__all__ = ["AvgPool2D", "Flatten", "MaxPool2D"]


class _Pool2D(Layer):
    """Shared geometry of the pooling layers (``valid`` windows, PyTorch's floor mode)."""

    def __init__(
        self, pool_size: int | tuple[int, int] = 2, strides: int | tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.pool_size = pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else pair(strides, "strides")

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
        slices = list(offset_slices(ph, pw, sh, sw, Ho, Wo))
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
        slices = list(offset_slices(ph, pw, sh, sw, Ho, Wo))
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
            if self._overlapping:
                dx[:, :, rows, cols] += dout * win
            else:  # each pixel in one window at most
                np.multiply(dout, win, out=dx[:, :, rows, cols])
        return dx


class AvgPool2D(_Pool2D):
    """Mean over each ``ph x pw`` window: ``out = sum_{i,j} x[n, c, y*sh+i, x*sw+j] / (ph pw)``.

    ``x (N, C, H, W) -> out (N, C, Ho, Wo)`` (``valid`` windows). Backward: every pixel of a
    window gets ``dout / (ph pw)``, summed over the windows that contain it.
    """

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        ph, pw, sh, sw, Ho, Wo = self._geometry(x.shape)
        slices = list(offset_slices(ph, pw, sh, sw, Ho, Wo))
        _, _, r0, c0 = slices[0]
        out = x[:, :, r0, c0].copy()
        for _, _, rows, cols in slices[1:]:
            out += x[:, :, rows, cols]
        out *= 1.0 / (ph * pw)
        self.cache = (x.shape, x.dtype) if training else None
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        shape, dtype = self.cache
        ph, pw, sh, sw, Ho, Wo = self._geometry(shape)
        part = dout * (1.0 / (ph * pw))
        dx = np.zeros(shape, dtype=dtype)
        for _, _, rows, cols in offset_slices(ph, pw, sh, sw, Ho, Wo):
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
