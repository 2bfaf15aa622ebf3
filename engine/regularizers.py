"""Weight penalties and their proximal operators.

The penalty is added ONCE to the MEAN data loss and applies to weight matrices only (never biases,
never PReLU slopes). With Dense weights ``W_1 (D, M_1), ..., W_L`` (``W_1`` the input layer)::

    R(W) = l1 * sum_l sum|W_l| + l2 * sum_l sum(W_l^2) + group_l1 * sum_j ||W_1[j, :]||_2

(Keras convention: no 1/2 in front of the L2 term, so its gradient is ``2 * l2 * W``).

``group_l1`` is the group lasso with one group per input feature, i.e. per row of the first layer's
weights: a row set to zero switches that feature off entirely.

The L1 and group terms are not differentiable at 0; to get EXACT zeros the trainer applies their
proximal operators after each optimizer step (``soft_threshold``, ``block_soft_threshold``), whereas
``penalty`` returns the value together with the (sub)gradient of all three terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def penalty(
    weights: Sequence[np.ndarray], l1: float = 0.0, l2: float = 0.0, group_l1: float = 0.0
) -> tuple[float, list[np.ndarray]]:
    """Penalty value and its (sub)gradient.

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
    value = 0.0
    grads = []
    for i, W in enumerate(weights):
        dW = np.zeros_like(W)
        if l1:
            value += l1 * float(np.abs(W).sum())
            dW += l1 * np.sign(W)
        if l2:
            value += l2 * float(np.einsum("ij,ij->", W, W) if W.ndim == 2 else (W * W).sum())
            dW += (2.0 * l2) * W
        if group_l1 and i == 0:
            norms = np.sqrt(np.einsum("ij,ij->i", W, W))
            value += group_l1 * float(norms.sum())
            safe = np.where(norms > 0.0, norms, 1.0)
            dW += (group_l1 * W) / safe[:, None]
        grads.append(dW)
    return value, grads


def penalty_value(
    weights: Sequence[np.ndarray], l1: float = 0.0, l2: float = 0.0, group_l1: float = 0.0
) -> float:
    """``R(W)`` alone (no gradient arrays), accumulated in float64."""
    value = 0.0
    for i, W in enumerate(weights):
        if l1:
            value += l1 * float(np.abs(W).sum(dtype=np.float64))
        if l2:
            value += l2 * float(np.einsum("ij,ij->", W, W, dtype=np.float64))
        if group_l1 and i == 0:
            value += group_l1 * float(np.sqrt(np.einsum("ij,ij->i", W, W, dtype=np.float64)).sum())
    return value


def soft_threshold(
    W: np.ndarray, thresh: float | np.ndarray, out: np.ndarray | None = None
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
    """
    if np.isscalar(thresh):
        t = float(thresh)
        clipped = np.clip(W, -t, t)
    else:
        clipped = np.minimum(np.maximum(W, -thresh), thresh)
    return np.subtract(W, clipped, out=out)


def block_soft_threshold(
    W1: np.ndarray, thresh: float | np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Proximal operator of ``t * sum_j ||W1[j, :]||_2`` (row-wise block soft-thresholding).

    ``prox(W1)[j] = W1[j] * max(0, 1 - t_j / ||W1[j]||_2)``: a row whose norm is at most ``t_j``
    becomes EXACTLY 0 (feature ``j`` switched off).

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
