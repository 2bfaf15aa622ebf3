"""Losses on the raw scores of the last Dense layer.

Every loss has the signature ``loss(scores, y, **params) -> (value, dscores)`` where

- ``scores (N, K)`` are the raw outputs of the last Dense layer (``K = 1`` for regression and binary
  cross-entropy, ``K = C`` classes otherwise);
- ``y`` is ``(N,)``: float targets (regression), {0, 1} (binary cross-entropy) or integer class
  indices in ``[0, C)`` (softmax / hinge losses);
- ``value`` is the MEAN of the per-sample losses over the batch (a python float);
- ``dscores (N, K)`` is ``d value / d scores`` (so it carries the ``1/N``), in the dtype of
  ``scores``.

Output non-linearities are fused into the loss (sigmoid for binary cross-entropy, softmax for
softmax cross-entropy), which gives the simple, stable gradients ``(p - y) / N`` and
``(probs - onehot) / N``; both values are computed from the logits (softplus, log-sum-exp), never
from clipped probabilities.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.layers import sigmoid

LossFn = Callable[..., tuple[float, np.ndarray]]


def mse(scores: np.ndarray, y: np.ndarray, **_: object) -> tuple[float, np.ndarray]:
    """Mean squared error ``L = (1/N) sum_n (s_n - y_n)^2`` (no 1/2 factor).

    ``scores (N, 1)``, ``y (N,)``; ``dscores = 2 (s - y) / N``.
    """
    N = scores.shape[0]
    diff = scores[:, 0] - y
    value = float(np.dot(diff, diff)) / N
    dscores = diff * (2.0 / N)
    return value, dscores.reshape(N, 1)


def mae(scores: np.ndarray, y: np.ndarray, **_: object) -> tuple[float, np.ndarray]:
    """Mean absolute error ``L = (1/N) sum_n |s_n - y_n|``; ``dscores = sign(s - y) / N``."""
    N = scores.shape[0]
    diff = scores[:, 0] - y
    value = float(np.abs(diff).sum()) / N
    dscores = np.sign(diff) * (1.0 / N)
    return value, dscores.reshape(N, 1)


def huber(
    scores: np.ndarray, y: np.ndarray, *, huber_delta: float = 1.0, **_: object
) -> tuple[float, np.ndarray]:
    """Huber loss with threshold ``delta = huber_delta``, mean over the batch.

    ``l(r) = r^2 / 2`` if ``|r| <= delta`` else ``delta (|r| - delta / 2)`` with ``r = s - y``;
    ``dscores = clip(r, -delta, delta) / N``. A ``delta`` beyond the scores' dtype (1e308 in
    float32) is that dtype's largest value: no residual exceeds either, and ``inf * 0`` is NaN.
    """
    delta = min(float(huber_delta), float(np.finfo(scores.dtype).max))
    N = scores.shape[0]
    r = scores[:, 0] - y
    a = np.abs(r)
    quad = np.minimum(a, delta)
    # l = quad^2/2 + delta*(a - quad) covers both branches in one expression.
    value = float((0.5 * quad * quad + delta * (a - quad)).sum()) / N
    dscores = np.clip(r, -delta, delta) * (1.0 / N)
    return value, dscores.reshape(N, 1)


def binary_cross_entropy(
    scores: np.ndarray, y: np.ndarray, **_: object
) -> tuple[float, np.ndarray]:
    """Binary cross-entropy fused with a sigmoid on the logits ``scores (N, 1)``, ``y (N,)`` in
    {0, 1}.

    ``L = -(1/N) sum_n [y_n log p_n + (1 - y_n) log(1 - p_n)]`` with ``p = sigmoid(s)``, computed
    from the logits as ``(1/N) sum_n [softplus(s_n) - y_n s_n]`` with the stable ``softplus(s) =
    max(s, 0) + log1p(exp(-|s|))``: exact and finite for any finite logit (a logit of -30 with
    ``y = 1`` costs 30, not a clipped ``-log(eps)``), in any dtype. ``dscores = (p - y) / N``.
    No probability clipping (``loss_params.eps`` is not used).
    """
    N = scores.shape[0]
    s = scores[:, 0]
    value = float((np.maximum(s, 0.0) + np.log1p(np.exp(-np.abs(s))) - y * s).sum()) / N
    dscores = (sigmoid(s) - y) * (1.0 / N)
    return value, dscores.reshape(N, 1)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax with the row max subtracted: ``probs (N, C)``, rows sum to 1."""
    # The ufunc reductions directly: ndarray.max / .sum add a Python layer that costs as much as
    # the arithmetic on the one-row inputs of a predict request.
    shifted = scores - np.maximum.reduce(scores, axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= np.add.reduce(shifted, axis=1, keepdims=True)
    return shifted


def softmax_cross_entropy(
    scores: np.ndarray, y: np.ndarray, **_: object
) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy on the logits ``scores (N, C)`` and class indices ``y (N,)``.

    ``L = -(1/N) sum_n log softmax(s_n)[y_n]``, computed as ``logsumexp(s_n - m_n) - (s_n[y_n] -
    m_n)`` with ``m_n = max_c s_nc``, so it is finite for any finite scores. ``dscores = (probs -
    onehot) / N``.
    """
    N = scores.shape[0]
    rows = np.arange(N)
    shifted = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    z = e.sum(axis=1)
    value = float((np.log(z) - shifted[rows, y]).sum()) / N
    e /= z[:, None]
    e[rows, y] -= 1.0
    e *= 1.0 / N
    return value, e


def _hinge_margins(
    scores: np.ndarray, y: np.ndarray, delta: float
) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(scores.shape[0])
    margins = scores - scores[rows, y][:, None]
    margins += delta
    np.maximum(margins, 0.0, out=margins)
    margins[rows, y] = 0.0  # the correct class is excluded from the sum
    return margins, rows


def multiclass_hinge(
    scores: np.ndarray, y: np.ndarray, *, hinge_margin: float = 1.0, **_: object
) -> tuple[float, np.ndarray]:
    """Weston-Watkins multiclass hinge loss with margin ``delta = hinge_margin``, batch mean.

    ``L = (1/N) sum_n sum_{j != y_n} max(0, s_nj - s_n,y_n + delta)``.
    ``dscores[n, j] = [margin_nj > 0] / N`` for ``j != y_n`` and ``-(number of such j) / N`` at
    ``y_n``.
    """
    N = scores.shape[0]
    margins, rows = _hinge_margins(scores, y, float(hinge_margin))
    value = float(margins.sum()) / N
    d = (margins > 0.0).astype(scores.dtype)
    d[rows, y] = -d.sum(axis=1)
    d *= 1.0 / N
    return value, d


def squared_hinge(
    scores: np.ndarray, y: np.ndarray, *, hinge_margin: float = 1.0, **_: object
) -> tuple[float, np.ndarray]:
    """Squared Weston-Watkins hinge with margin ``delta = hinge_margin``, batch mean.

    ``L = (1/N) sum_n sum_{j != y_n} max(0, s_nj - s_n,y_n + delta)^2``.

    ``dscores[n, j] = 2 margin_nj / N`` for ``j != y_n`` and ``-sum_j 2 margin_nj / N`` at ``y_n``.
    """
    N = scores.shape[0]
    margins, rows = _hinge_margins(scores, y, float(hinge_margin))
    value = float(np.einsum("ij,ij->", margins, margins)) / N
    d = margins * (2.0 / N)
    d[rows, y] = -d.sum(axis=1)
    return value, d


LOSSES: dict[str, LossFn] = {
    "mse": mse,
    "mae": mae,
    "huber": huber,
    "binary_cross_entropy": binary_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
    "multiclass_hinge": multiclass_hinge,
    "squared_hinge": squared_hinge,
}

LOSS_TASKS: dict[str, str] = {
    "mse": "regression",
    "mae": "regression",
    "huber": "regression",
    "binary_cross_entropy": "classification",
    "softmax_cross_entropy": "classification",
    "multiclass_hinge": "classification",
    "squared_hinge": "classification",
}


# Losses with a Lipschitz-continuous gradient: the ones FISTA's step 1/L accepts.
FISTA_LOSSES: tuple[str, ...] = (
    "mse",
    "huber",
    "binary_cross_entropy",
    "softmax_cross_entropy",
    "squared_hinge",
)


def curvature(name: str, n_outputs: int) -> float:
    """Bound ``c`` on the per-sample Hessian of the loss in the scores: ``||H_n||_2 <= c / N``.

    With ``A = [X, 1] (N, D + 1)`` the gradient of the mean loss in ``(W, b)`` is then Lipschitz
    with constant ``c * lambda_max(A.T A) / N``, FISTA's starting ``L``. Per sample:

    - ``mse``: ``(s - y)^2`` has second derivative 2; ``huber``: 1 (quadratic zone);
    - ``binary_cross_entropy``: ``p (1 - p) <= 1/4``;
    - ``softmax_cross_entropy``: ``diag(p) - p p.T``, eigenvalues ``<= 1/2``;
    - ``squared_hinge`` with ``K = n_outputs`` classes: ``sum_j (s_j - s_y + delta)^2`` over the
      active margins has Hessian ``2 sum_j (e_j - e_y)(e_j - e_y).T``, twice the Laplacian of a
      star with up to ``K - 1`` leaves, whose largest eigenvalue is ``K``: ``c = 2K``.
    """
    if name == "squared_hinge":
        return 2.0 * n_outputs
    bounds = {"mse": 2.0, "huber": 1.0, "binary_cross_entropy": 0.25, "softmax_cross_entropy": 0.5}
    if name not in bounds:
        raise ValueError(f"loss {name!r} has no Lipschitz gradient; use one of {FISTA_LOSSES}")
    return bounds[name]


def make_loss(
    name: str, loss_params: dict | None = None
) -> Callable[..., tuple[float, np.ndarray]]:
    """Return ``f(scores, y) -> (value, dscores)`` for loss ``name`` with ``loss_params`` bound.

    ``loss_params`` uses the spec's names (``huber_delta``, ``hinge_margin``, ``eps``); entries a
    loss does not use are ignored, ``None`` entries fall back to the loss's default.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {tuple(LOSSES)}")
    fn = LOSSES[name]
    kwargs = {k: float(v) for k, v in (loss_params or {}).items() if v is not None}
    if not kwargs:
        return fn

    def bound(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        return fn(scores, y, **kwargs)

    return bound
