"""Layers: Dense (affine, optional DropConnect), activations and Dropout.

Every layer follows one protocol (cs231n style):

- ``forward(x, training) -> out`` computes the output and keeps in ``self.cache`` only what
  ``backward`` reads;
- ``backward(dout) -> dx`` returns the gradient with respect to the input and *fills*
  ``self.grads[name]`` (same shape as ``self.params[name]``) for every parameter.

Shapes: ``x (N, D)`` is a batch of ``N`` rows with ``D`` features, a Dense layer has ``W (D, M)``
and ``b (M,)`` and returns ``out (N, M)``. ``d<var>`` always has the shape of ``<var>``.

All arrays stay in the dtype of the parameters (float32 by default): scalars are python floats,
which NumPy >= 2 never lets upcast an array.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ACTIVATIONS: tuple[str, ...] = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "linear")
DROPOUT_MODES: tuple[str, ...] = ("inverted", "standard", "dropconnect")

PRELU_INIT = 0.25  # He et al. 2015's initial slope for PReLU

# Activations whose backward does not read their output's values, so a following Dropout may
# overwrite that output in place.
SIGN_ONLY_ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "prelu", "linear")


class Layer:
    """Base class: named parameters, their gradients, and the forward cache."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.cache: Any = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        """``dx``, or ``None`` when the input gradient is not needed (a first Dense layer)."""
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predict-time output (``forward(x, training=False)``); may skip the cache."""
        return self.forward(x, False)

    @property
    def identity_at_predict(self) -> bool:
        """Whether ``predict(x)`` is ``x`` itself, so a predict pass may skip the layer."""
        return False


def _keep_mask(
    rng: np.random.Generator | None,
    shape: tuple[int, ...],
    rate: float,
    dtype: np.dtype,
    scale: bool,
) -> np.ndarray:
    """Bernoulli keep-mask in ``dtype``: 1 (or ``1/keep`` if ``scale``) with probability keep.

    Drawing the randomness dominates the cost, so it takes as few random bits as the exact
    probability allows: one bit per unit for ``keep == 1/2``, one byte (``r < 256 * keep``) when
    ``256 * keep`` is an integer (rates 0.25, 0.75, ...), else a float per unit (``u < keep``).
    """
    if rng is None:
        raise RuntimeError("a stochastic layer needs its rng (Network.set_rng) before training")
    keep = 1.0 - rate
    n = math.prod(shape)
    if keep == 0.5:
        bits = np.unpackbits(np.frombuffer(rng.bytes((n + 7) // 8), dtype=np.uint8), count=n)
        kept = bits.reshape(shape)
    elif (256.0 * keep).is_integer():
        r = np.frombuffer(rng.bytes(n), dtype=np.uint8).reshape(shape)
        kept = np.less(r, int(256.0 * keep))
    else:
        kept = np.less(rng.random(shape, dtype=dtype), keep)
    mask = kept.astype(dtype)
    if scale:
        mask *= 1.0 / keep
    return mask


class Dense(Layer):
    """Affine layer ``out = x @ W + b``.

    Parameters
    ----------
    W : ndarray (D, M)
    b : ndarray (M,)
    dropconnect : float
        DropConnect drop probability ``p`` (Wan et al. 2013). At train time one Bernoulli mask
        ``Mk (D, M)`` with keep probability ``1 - p`` is drawn *per mini-batch* (shared by the rows
        of the batch, the usual cheap variant) and the layer uses the *inverted* scaling
        ``W_eff = W * Mk / (1 - p)``, so predict time uses ``W`` unchanged.
    need_dx : bool
        ``False`` for the first layer of a network: its input gradient is never used, which saves
        one matrix product per batch.

    Notes
    -----
    Forward ``out (N, M) = x (N, D) @ W_eff (D, M) + b``. Backward
    ``dW = (x.T @ dout) * Mk / (1 - p)``, ``db = sum_n dout[n]``, ``dx = dout @ W_eff.T``.
    """

    def __init__(
        self, W: np.ndarray, b: np.ndarray, *, dropconnect: float = 0.0, need_dx: bool = True
    ) -> None:
        super().__init__()
        self.params = {"W": W, "b": b}
        self.grads = {"W": np.zeros_like(W), "b": np.zeros_like(b)}
        self.dropconnect = float(dropconnect)
        self.need_dx = need_dx
        self.rng: np.random.Generator | None = None  # set by the network for DropConnect

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        W = self.params["W"]
        mask = None
        if training and self.dropconnect > 0.0:
            mask = _keep_mask(self.rng, W.shape, self.dropconnect, W.dtype, scale=True)
            W = W * mask
        out = x @ W
        out += self.params["b"]
        self.cache = (x, W, mask)
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``x @ W + b`` (inverted DropConnect leaves ``W`` as it is at predict time)."""
        # np.dot: the same BLAS product as ``@`` with less call overhead on one-row inputs.
        out = np.dot(x, self.params["W"])
        out += self.params["b"]
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        x, W_eff, mask = self.cache
        gW = self.grads["W"]
        np.matmul(x.T, dout, out=gW)
        if mask is not None:
            gW *= mask
        np.sum(dout, axis=0, out=self.grads["b"])
        if not self.need_dx:
            return None
        return dout @ W_eff.T


class Sigmoid(Layer):
    """``out = 1 / (1 + exp(-x))``; ``dx = dout * out * (1 - out)``. Shapes ``(N, M)``."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        out = sigmoid(x)
        self.cache = out
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        out = self.cache
        return dout * out * (1.0 - out)


class Tanh(Layer):
    """``out = tanh(x)``; ``dx = dout * (1 - out^2)``.

    ``inplace=True`` writes ``out`` over ``x`` (the network sets it when ``x`` is a fresh
    Dense / Conv2D output nobody else keeps). Backward allocates nothing: ``dx`` is computed into
    ``dout`` as ``dout - dout * out * out`` with one scratch array reused from batch to batch.
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace
        self._tmp: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        out = np.tanh(x, out=x if self.inplace else None)
        self.cache = out
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x, out=x if self.inplace else None)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        out = self.cache
        tmp = self._tmp
        if tmp is None or tmp.shape != out.shape or tmp.dtype != out.dtype:
            tmp = self._tmp = np.empty_like(out)
        np.multiply(out, out, out=tmp)
        tmp *= dout
        # dout is the next layer's gradient, read by no one after this: overwrite it.
        if dout.flags.writeable and dout.dtype == out.dtype:
            np.subtract(dout, tmp, out=dout)
            return dout
        return dout - tmp


class ReLU(Layer):
    """``out = max(x, 0)``; ``dx = dout * [out > 0]`` (subgradient 0 at 0).

    ``inplace=True`` overwrites ``x`` with ``out`` and ``dout`` with ``dx`` (no allocations); the
    network sets it when ``x`` is a Dense output nobody else keeps. Only the sign of ``out`` is
    read in backward, so a following in-place Dropout may rescale or zero it.
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        out = np.maximum(x, 0.0, out=x if self.inplace else None)
        self.cache = out
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0.0, out=x if self.inplace else None)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self.inplace:
            dout *= self.cache > 0.0
            return dout
        return dout * (self.cache > 0.0)


class LeakyReLU(Layer):
    """``out = x if x > 0 else slope * x``; ``dx = dout * (1 if x > 0 else slope)``."""

    def __init__(self, slope: float = 0.01) -> None:
        super().__init__()
        self.slope = float(slope)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        pos = x > 0.0
        out = np.where(pos, x, x * self.slope)
        self.cache = pos
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        pos = self.cache
        return np.where(pos, dout, dout * self.slope)


class PReLU(Layer):
    """Parametric ReLU with one learned slope per unit (He et al. 2015).

    ``out[n, m] = x[n, m] if x[n, m] > 0 else alpha[m] * x[n, m]`` with ``alpha (M,)``.
    Backward: ``dx = dout * (1 if x > 0 else alpha)``,
    ``dalpha[m] = sum_n dout[n, m] * x[n, m] * [x[n, m] <= 0]``.
    Penalties never apply to ``alpha``.
    """

    def __init__(self, alpha: np.ndarray) -> None:
        super().__init__()
        self.params = {"alpha": alpha}
        self.grads = {"alpha": np.zeros_like(alpha)}

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        pos = x > 0.0
        out = np.where(pos, x, x * self.params["alpha"])
        self.cache = (x, pos)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x, pos = self.cache
        neg_x = np.where(pos, 0.0, x).astype(x.dtype, copy=False)
        np.sum(dout * neg_x, axis=0, out=self.grads["alpha"])
        return np.where(pos, dout, dout * self.params["alpha"])


class Linear(Layer):
    """Identity activation: ``out = x``, ``dx = dout``."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return x

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout

    @property
    def identity_at_predict(self) -> bool:
        return True


class Dropout(Layer):
    """Dropout of activations with drop probability ``rate`` (Keras/PyTorch convention).

    Modes (``keep = 1 - rate``; ``Mk`` a Bernoulli(keep) mask of the shape of ``x (N, M)``, drawn
    from ``self.rng``, the trainer's seeded generator):

    - ``inverted`` (default): train ``out = x * Mk / keep``; predict ``out = x``.
    - ``standard`` (Srivastava et al. 2014): train ``out = x * Mk``; predict ``out = x * keep``.

    Both give the same expected activation at train and predict time. Backward applies the cached
    (scaled) mask: ``dx = dout * Mk / keep`` or ``dout * Mk``. (DropConnect is a Dense option.)

    ``inplace=True`` multiplies ``x`` and ``dout`` in place; the network sets it for hidden dropout
    after activations whose backward does not read their output's values (ReLU's reads its sign).
    """

    def __init__(self, rate: float, mode: str = "inverted", *, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        if mode not in ("inverted", "standard"):
            raise ValueError(f"Dropout layer mode must be 'inverted' or 'standard', got {mode!r}")
        self.rate = float(rate)
        self.mode = mode
        self.inplace = inplace
        self.rng: np.random.Generator | None = None  # set by the network / trainer

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self.cache = None
        if self.rate == 0.0 or (not training and self.mode == "inverted"):
            return x
        out = x if self.inplace else None
        if not training:
            return np.multiply(x, 1.0 - self.rate, out=out)
        mask = _keep_mask(self.rng, x.shape, self.rate, x.dtype, scale=self.mode == "inverted")
        self.cache = mask
        return np.multiply(x, mask, out=out)

    @property
    def identity_at_predict(self) -> bool:
        return self.rate == 0.0 or self.mode == "inverted"

    def backward(self, dout: np.ndarray) -> np.ndarray:
        mask = self.cache
        if mask is None:
            return dout
        return np.multiply(dout, mask, out=dout if self.inplace else None)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings: ``1 / (1 + exp(-x))``, same dtype as ``x``."""
    with np.errstate(over="ignore"):
        out = np.exp(-x)
    out += 1.0
    np.reciprocal(out, out=out)
    return out


def make_activation(
    name: str, M: int, *, dtype: np.dtype, leaky_slope: float = 0.01, inplace: bool = False
) -> Layer:
    """Build the activation layer ``name`` for ``M`` units (PReLU slopes start at 0.25).

    ``inplace`` is honoured by the layers that support it (ReLU, Tanh).
    """
    if name == "sigmoid":
        return Sigmoid()
    if name == "tanh":
        return Tanh(inplace=inplace)
    if name == "relu":
        return ReLU(inplace=inplace)
    if name == "leaky_relu":
        return LeakyReLU(leaky_slope)
    if name == "prelu":
        return PReLU(np.full(M, PRELU_INIT, dtype=dtype))
    if name == "linear":
        return Linear()
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
