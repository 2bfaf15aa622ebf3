"""A minimal hand-written NumPy MLP: the floor of NumPy overhead for the training benchmark.

Same network and update as the engine run in ``bench/training.py``: Dense-ReLU-Dropout stacks,
softmax cross-entropy on the MEAN over the batch, ``l2 * sum(W^2)`` on weights (not biases),
inverted dropout with DROP probability ``p`` on hidden activations, SGD with momentum in PyTorch's
form (``v = mu * v + g``, ``W -= lr * v``; for a constant learning rate the same trajectory as ``v
= mu * v - lr * g``, ``W += v``).

Shapes: ``x (N, D)``, ``W_k (M_{k-1}, M_k)``, ``b_k (M_k,)``, logits ``(N, C)``. Everything stays
in the parameters' dtype (float32) and works in place where NumPy allows, which is what a careful
NumPy user would write; anything the engine does on top of this is overhead to explain.
"""

from __future__ import annotations

import itertools

import numpy as np


class NumpyMLP:
    """Dense(ReLU, dropout) x L + Dense(softmax) trained with momentum SGD, all in NumPy."""

    def __init__(
        self,
        sizes: tuple[int, ...],
        *,
        dropout: float = 0.5,
        l2: float = 1e-4,
        l1: float = 0.0,
        learning_rate: float = 0.01,
        momentum: float = 0.9,
        seed: int = 0,
        dtype: type = np.float32,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.W = [
            (rng.standard_normal((m, n)) * np.sqrt(2.0 / m)).astype(self.dtype)
            for m, n in itertools.pairwise(sizes)
        ]
        self.b = [np.zeros(n, dtype=self.dtype) for n in sizes[1:]]
        self.vW = [np.zeros_like(w) for w in self.W]
        self.vb = [np.zeros_like(b) for b in self.b]
        self.p = dropout
        self.l2 = l2
        self.l1 = l1
        self.lr = learning_rate
        self.mu = momentum
        self.rng = rng

    def step(self, x: np.ndarray, y: np.ndarray) -> None:
        """One SGD step on the batch ``x (N, D)``, integer labels ``y (N,)``."""
        N = x.shape[0]
        dt = self.dtype
        L = len(self.W)
        keep = 1.0 - self.p
        scale = dt.type(1.0 / keep)
        acts = [x]
        masks = []
        h = x
        for k in range(L - 1):
            h = h @ self.W[k]
            h += self.b[k]
            np.maximum(h, 0, out=h)
            if self.p > 0:
                # mask holds 0 or 1/keep, so one multiply applies drop and rescale (inverted
                # dropout).
                m = self.rng.random(h.shape, dtype=dt) < keep
                m = m.astype(dt)
                m *= scale
                h *= m
                masks.append(m)
            acts.append(h)
        z = h @ self.W[-1]
        z += self.b[-1]
        # Fused softmax + cross-entropy: dz = (softmax(z) - onehot(y)) / N.
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        z[np.arange(N), y] -= 1.0
        z *= dt.type(1.0 / N)
        d = z
        for k in range(L - 1, -1, -1):
            a = acts[k]
            dW = a.T @ d
            db = d.sum(axis=0)
            if k > 0:
                d = d @ self.W[k].T
                # ReLU and dropout gradients in one go: the kept, positive units of the forward
                # pass.
                d *= acts[k] > 0 if self.p == 0 else masks[k - 1] * (acts[k] > 0)
            if self.l2:
                dW += dt.type(2.0 * self.l2) * self.W[k]
            self._update(self.W[k], self.vW[k], dW, proximal=True)
            self._update(self.b[k], self.vb[k], db, proximal=False)

    def _update(self, w: np.ndarray, v: np.ndarray, g: np.ndarray, *, proximal: bool) -> None:
        v *= self.mu
        v += g
        w -= self.dtype.type(self.lr) * v
        if proximal and self.l1:
            # Soft-thresholding: the proximal step of lr * l1 * |w|.
            t = self.dtype.type(self.lr * self.l1)
            np.copysign(np.maximum(np.abs(w) - t, 0, dtype=self.dtype), w, out=w)

    def train_epoch(self, X: np.ndarray, y: np.ndarray, batch_size: int) -> None:
        """One epoch over ``X (N, D)`` in a fresh random order."""
        order = self.rng.permutation(X.shape[0])
        for i in range(0, X.shape[0], batch_size):
            idx = order[i : i + batch_size]
            self.step(X[idx], y[idx])

    def predict(self, X: np.ndarray) -> np.ndarray:
        h = X
        for k in range(len(self.W) - 1):
            h = np.maximum(h @ self.W[k] + self.b[k], 0)
        return np.argmax(h @ self.W[-1] + self.b[-1], axis=1)
