"""Weight penalties, their gradients and their proximal operators: the one implementation.

The penalty is added ONCE to the MEAN data loss and applies to weight matrices only (never biases,
never PReLU slopes). With Dense weights ``W_1 (D, M_1), ..., W_L`` (``W_1`` the input layer)::

    R(W) = l1 * sum_l sum|W_l| + l2 * sum_l sum(W_l^2) + group_l1 * sum_j ||W_1[j, :]||_2

(Keras convention: no 1/2 in front of the L2 term, so its gradient is ``2 * l2 * W``).

Kernels of any rank are penalised alike: Dense ``W (D, M)`` and Conv2D ``W (F, C, kh, kw)`` (the
L1 and L2 terms sum over every entry). ``group_l1`` is the group lasso on the FIRST kernel only,
one group per row of its matrix view ``W_1.reshape(W_1.shape[0], -1)``:

- a Dense first layer ``(D, M)``: one group per input feature (row ``j``); a zero row switches
  feature ``j`` off entirely;
- a Conv2D first layer ``(F, C, kh, kw)`` viewed as ``(F, C * kh * kw)``: one group per FILTER
  (all its weights on every input channel); a zero group switches that filter off entirely (its
  output channel is the bias alone).

Below, ``W_1[j]`` is row ``j`` of that view.

:class:`Regularizer` is what both training loops call: ``add_gradient`` adds the gradient of the
terms treated as smooth (``2 l2 W``; with ``l1_method == "subgradient"`` also ``l1 sign(W)`` and
``group_l1 W_1[j] / ||W_1[j]||``, what Keras/PyTorch do), and ``prox`` applies the proximal
operator of the L1 and group terms after a step (``l1_method == "proximal"``), which produces EXACT
zeros. The step may be a scalar (SGD, FISTA) or per coordinate (adaptive optimizers): the prox is
then taken in the optimizer's metric ``diag(1 / s)``::

    prox(V) = argmin_W  sum_ij (W_ij - V_ij)^2 / (2 s_ij) + l1 |W|_1 + group_l1 sum_j ||W_1[j]||_2

which separates into the element-wise :func:`soft_threshold` with ``t = s * l1`` followed, for the
first layer, by :func:`group_prox` (the exact row-wise minimiser, a one-dimensional root per row).
With it "step, then prox" has the penalised objective's KKT points as its fixed points.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "Regularizer",
    "block_soft_threshold",
    "group_prox",
    "penalty",
    "penalty_value",
    "rows",
    "soft_threshold",
]


def rows(W: np.ndarray) -> np.ndarray:
    """The matrix view ``(W.shape[0], -1)`` whose rows are the groups of ``group_l1`` (a view of
    ``W``, which must be C-contiguous, so in-place updates reach ``W``)."""
    return W if W.ndim == 2 else W.reshape(W.shape[0], -1)


def penalty_value(
    weights: Sequence[np.ndarray], l1: float = 0.0, l2: float = 0.0, group_l1: float = 0.0
) -> float:
    """``R(W)``, accumulated in float64."""
    value = 0.0
    for i, W in enumerate(weights):
        W = rows(W)
        if l1:
            value += l1 * float(np.abs(W).sum(dtype=np.float64))
        if l2:
            value += l2 * float(np.einsum("ij,ij->", W, W, dtype=np.float64))
        if group_l1 and i == 0:
            value += group_l1 * float(np.sqrt(np.einsum("ij,ij->i", W, W, dtype=np.float64)).sum())
    return value


def soft_threshold(
    W: np.ndarray,
    thresh: float | np.ndarray,
    out: np.ndarray | None = None,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """Proximal operator of ``t * |w|`` (element-wise soft-thresholding).

    ``prox(W)_ij = sign(W_ij) * max(|W_ij| - t_ij, 0)``, computed as ``W - clip(W, -t, t)`` so that
    every ``|W_ij| <= t_ij`` becomes EXACTLY 0.

    Parameters
    ----------
    W : ndarray (D, M)
    thresh : float or ndarray (D, M)
        ``t = step * l1``: a scalar for plain SGD, per-coordinate steps times ``l1`` for adaptive
        optimizers.
    out : ndarray, optional
        Where to write (``out=W`` updates in place).
    scratch : ndarray (D, M), optional
        Work buffer like ``W``, distinct from ``W`` and ``out``; with it no array is allocated.
    """
    clipped = np.empty_like(W) if scratch is None else scratch
    if not isinstance(thresh, np.ndarray):
        t = W.dtype.type(thresh)
        np.minimum(W, t, out=clipped)
        np.maximum(clipped, -t, out=clipped)
    else:
        np.negative(thresh, out=clipped)
        np.maximum(W, clipped, out=clipped)
        np.minimum(clipped, thresh, out=clipped)
    return np.subtract(W, clipped, out=out)


def block_soft_threshold(
    W1: np.ndarray, thresh: float | np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Proximal operator of ``t * sum_j ||W1[j, :]||_2`` (row-wise block soft-thresholding).

    ``prox(W1)[j] = W1[j] * max(0, 1 - t_j / ||W1[j]||_2)``: a row whose norm is at most ``t_j``
    becomes EXACTLY 0 (feature ``j`` switched off). This is :func:`group_prox` with one step for
    the whole matrix.

    Parameters
    ----------
    W1 : ndarray (D, M)
        First-layer weights, one row per input feature.
    thresh : float or ndarray (D,)
        ``t = step * group_l1`` per row.
    out : ndarray, optional
        Where to write (``out=W1`` updates in place).
    """
    norms = np.sqrt(np.einsum("ij,ij->i", W1, W1))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 1.0 - thresh / norms
    scale = np.where(norms > thresh, scale, 0.0).astype(W1.dtype, copy=False)
    return np.multiply(W1, scale[:, None], out=out)


# Newton on psi(r) = 1 stops once every row's relative change is below this (float64 work).
_ROOT_RTOL = 1e-12
_ROOT_MAXITER = 50


def group_prox(
    V: np.ndarray, group_l1: float, step: float | np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Proximal operator of ``group_l1 * sum_j ||W[j, :]||_2`` in the metric ``diag(1 / step)``.

    Row ``j`` of the result minimises ``sum_i (w_i - v_i)^2 / (2 s_i) + lam ||w||_2`` (``v =
    V[j]``, ``s = step[j]``, ``lam = group_l1``). Its optimality condition gives ``w_i = v_i r /
    (r + lam s_i)`` with ``r = ||w||_2`` the root of::

        psi(r) = (sum_i v_i^2 / (r + lam s_i)^2) ** -1/2 = 1

    and ``w = 0`` exactly when ``psi(0) >= 1``, i.e. ``||v / (lam s)||_2 <= 1``. ``psi`` is
    increasing and concave in ``r`` (a power mean of order -2 of affine functions), so Newton's
    method from any start gives iterates at or below the root that then increase monotonically
    and converge quadratically; for a scalar step ``psi`` is linear and the answer is
    :func:`block_soft_threshold` in closed form (which is what is computed then).

    Parameters
    ----------
    V : ndarray (D, M)
        The weights after the optimizer's step.
    group_l1 : float
        ``lam``.
    step : float or ndarray (D, M)
        The optimizer's effective step, per coordinate for adaptive methods.
    out : ndarray, optional
        Where to write (``out=V`` updates in place).
    """
    if not isinstance(step, np.ndarray):
        return block_soft_threshold(V, float(step) * group_l1, out=out)
    v = np.asarray(V, dtype=np.float64)
    c = np.multiply(step, group_l1, dtype=np.float64)  # (D, M), > 0: steps are positive
    a = v * v
    active = np.add.reduce(a / (c * c), axis=1) > 1.0  # psi(0) < 1: the row survives
    r = np.zeros(V.shape[0])
    if active.any():
        every = bool(active.all())
        aa, cc = (a, c) if every else (a[active], c[active])
        # Start from the scalar-step answer with the row's mean step: exact if the steps agree.
        ra = np.maximum(np.sqrt(np.add.reduce(aa, axis=1)) - cc.mean(axis=1), 0.0)
        for _ in range(_ROOT_MAXITER):
            q = ra[:, None] + cc
            inv = aa / (q * q)
            S = np.add.reduce(inv, axis=1)
            inv /= q
            T = np.add.reduce(inv, axis=1)
            psi = 1.0 / np.sqrt(S)
            new = np.maximum(ra - (psi - 1.0) / (psi * psi * psi * T), 0.0)
            done = np.abs(new - ra) <= _ROOT_RTOL * new
            ra = new
            if done.all():
                break
        if every:
            r = ra
        else:
            r[active] = ra
    # w = v r / (r + lam s): exactly 0 on the rows with r = 0
    scale = r[:, None] / (r[:, None] + c)
    return np.multiply(V, scale.astype(V.dtype, copy=False), out=out)


class Regularizer:
    """The penalty ``R(W)`` as both training loops apply it (see the module docstring).

    Parameters
    ----------
    l1, l2, group_l1 : float
        Strengths as in the module formula.
    l1_method : {"proximal", "subgradient"}
        ``proximal``: the L1 and group terms act through :meth:`prox` (exact zeros);
        ``subgradient``: through :meth:`add_gradient` (``l1 sign(W)``, ``group_l1 W_1[j] /
        ||W_1[j]||``, 0 for a zero row) and :meth:`prox` does nothing.

    Scratch buffers (one per weight matrix, allocated at first use) keep every call free of
    allocations except the group prox under per-coordinate steps.
    """

    def __init__(
        self, l1: float = 0.0, l2: float = 0.0, group_l1: float = 0.0, l1_method: str = "proximal"
    ) -> None:
        self.l1 = float(l1)
        self.l2 = float(l2)
        self.group_l1 = float(group_l1)
        self.proximal = l1_method == "proximal"
        self._scratch: dict[int, np.ndarray] = {}
        self._steps: dict[int, np.ndarray] = {}

    @property
    def has_prox(self) -> bool:
        """Whether :meth:`prox` changes anything."""
        return self.proximal and bool(self.l1 or self.group_l1)

    @property
    def has_gradient(self) -> bool:
        """Whether :meth:`add_gradient` changes anything."""
        return bool(self.l2) or (not self.proximal and bool(self.l1 or self.group_l1))

    def _buffer(self, store: dict[int, np.ndarray], k: int, W: np.ndarray) -> np.ndarray:
        buf = store.get(k)
        if buf is None or buf.shape != W.shape or buf.dtype != W.dtype:
            buf = store[k] = np.empty_like(W)
        return buf

    def step_buffer(self, k: int, W: np.ndarray) -> np.ndarray:
        """A buffer shaped like weight ``k`` for the optimizer to write its steps into."""
        return self._buffer(self._steps, k, W)

    def value(self, weights: Sequence[np.ndarray]) -> float:
        """``R(W)`` (float64 accumulation)."""
        return penalty_value(weights, self.l1, self.l2, self.group_l1)

    def smooth_value(self, weights: Sequence[np.ndarray]) -> float:
        """The part of ``R(W)`` that :meth:`add_gradient` differentiates (the L2 term for
        ``proximal``, everything for ``subgradient``)."""
        if not self.proximal:
            return self.value(weights)
        return penalty_value(weights, 0.0, self.l2, 0.0)

    def prox_value(self, weights: Sequence[np.ndarray]) -> float:
        """The part of ``R(W)`` that :meth:`prox` handles (0 for ``subgradient``)."""
        if not self.proximal:
            return 0.0
        return penalty_value(weights, self.l1, 0.0, self.group_l1)

    def add_gradient(self, weights: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """``grads[k] += d R_smooth / d weights[k]`` in place (``weights[0]`` = the input layer).

        ``2 l2 W``, plus for ``subgradient`` ``l1 sign(W)`` and, on the rows of ``W_1``,
        ``group_l1 W_1[j] / ||W_1[j]||_2`` (0 for an all-zero row).
        """
        if not self.has_gradient:
            return
        sub = not self.proximal
        for k, (W, dW) in enumerate(zip(weights, grads, strict=True)):
            W, dW = rows(W), rows(dW)
            tmp = self._buffer(self._scratch, k, W)
            if self.l2:
                np.multiply(W, 2.0 * self.l2, out=tmp)
                dW += tmp
            if sub and self.l1:
                np.sign(W, out=tmp)
                tmp *= self.l1
                dW += tmp
            if sub and self.group_l1 and k == 0:
                norms = np.sqrt(np.einsum("ij,ij->i", W, W))
                inv = np.divide(self.group_l1, norms, out=np.zeros_like(norms), where=norms > 0)
                np.multiply(W, inv[:, None], out=tmp)
                dW += tmp

    def prox(self, k: int, W: np.ndarray, step: float | np.ndarray) -> None:
        """Apply the proximal operator of the L1 (and, for ``k == 0``, group) term in place.

        ``step`` is the optimizer's effective step of the update just taken: a scalar or an
        array like ``W`` (it may be a :meth:`step_buffer`, which is overwritten).
        """
        if not self.proximal:
            return
        # Element-wise and row-wise terms both act on the matrix view (a view: W is updated).
        W = rows(W)
        if isinstance(step, np.ndarray):
            step = rows(step)
        if self.l1:
            scratch = self._buffer(self._scratch, k, W)
            if not isinstance(step, np.ndarray):
                soft_threshold(W, float(step) * self.l1, out=W, scratch=scratch)
            else:
                t = np.multiply(step, self.l1, out=self._buffer(self._steps, -1 - k, W))
                soft_threshold(W, t, out=W, scratch=scratch)
        if self.group_l1 and k == 0:
            group_prox(W, self.group_l1, step, out=W)


def penalty(
    weights: Sequence[np.ndarray], l1: float = 0.0, l2: float = 0.0, group_l1: float = 0.0
) -> tuple[float, list[np.ndarray]]:
    """Penalty value and its (sub)gradient, from :class:`Regularizer` (what training runs).

    Parameters
    ----------
    weights : sequence of ndarray
        The Dense weight matrices ``W_l (D_l, M_l)`` in network order (first = input layer).
    l1, l2, group_l1 : float
        Strengths as in the module formula.

    Returns
    -------
    value : float
        ``R(W)``.
    grads : list of ndarray
        ``dW_l = l1 * sign(W_l) + 2 * l2 * W_l`` (+ ``group_l1 * W_1[j] / ||W_1[j]||`` on the rows
        of the first layer, 0 for an all-zero row), each with the shape and dtype of ``W_l``.
    """
    reg = Regularizer(l1, l2, group_l1, l1_method="subgradient")
    grads = [np.zeros_like(W) for W in weights]
    reg.add_gradient(weights, grads)
    return reg.value(weights), grads
