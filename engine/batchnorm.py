"""Batch normalization over the features of ``(N, D)`` or the channels of ``(N, C, H, W)``."""

from __future__ import annotations

import numpy as np

from engine.layers import Layer

__all__ = ["BatchNorm"]


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
