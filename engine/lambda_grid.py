"""The grid of a regularization path: ``num`` values from ``lambda_max`` down.

Grid (``num`` points, when ``values`` is not given): log-spaced from ``lambda_max`` down to
``lambda_max * min_ratio``. ``lambda_max`` is the smallest ``l1`` (or ``group_l1``) at which every
weight is zero, from the gradient of the mean data loss at ``W = 0`` with the optimal intercept,
on the training rows (encoded ``Z (n, F)``, targets ``Y (n, K)``):

- linear mse: ``lambda_max = 2 * max_j |Xc[:, j]^T yc| / N`` (``Xc``, ``yc`` centred), i.e. twice
  scikit-learn's ``alpha_max = max_j |Xc^T yc| / N``; ``group_l1`` uses the row norms of the
  gradient ``G (D, K)`` (the same value for one output);
- linear binary cross-entropy: ``max |X^T (y - mean y)| / N``; softmax cross-entropy:
  ``X^T (Y - mean Y) / N`` (``Y`` one-hot), max entry (l1) or max row norm (group_l1);
- networks and other losses: the first-layer gradient of a network one epoch away from its
  initialisation, then checked by fits (doubled until every first-layer weight is zero).

For ``l2`` (no value zeroes the weights) the top is glmnet's ridge convention, ``500 * lambda_max``
of ``l1`` (glmnet's ``lambda_max`` at ``alpha = 0.001`` in our scaling); for dropout rates the
grid is ``linspace(0.8, 0, num)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.cv import held_out_targets
from engine.errors import InputError, SpecError
from engine.losses import make_loss
from engine.model import fit
from engine.path_setup import (
    PathData,
    base_spec,
    check_param,
    is_linear,
    prepare_data,
    with_value,
)

__all__ = ["lambda_max", "make_grid"]

_SPARSE_PARAMS = ("regularization.l1", "regularization.group_l1")
_DROPOUT_TOP = 0.8
_RIDGE_FACTOR = 500.0  # glmnet's ridge lambda_max (alpha = 0.001) in our scaling
_MAX_DOUBLINGS = 30


def _targets_matrix(data: PathData, rows: np.ndarray, loss: str) -> np.ndarray:
    """``Y (n, K)`` the linear closed forms use: y (mse), {0, 1} (bce), one-hot (softmax)."""
    if data.task == "regression":
        return data.target[rows].astype(np.float64)[:, None]
    classes, y_idx = data.labels
    idx = y_idx[rows]
    if loss == "binary_cross_entropy":
        return idx.astype(np.float64)[:, None]
    Y = np.zeros((len(rows), len(classes)))
    Y[np.arange(len(rows)), idx] = 1.0
    return Y


def _gradient_max(grad: np.ndarray, param: str) -> float:
    if param == "regularization.group_l1":
        return float(np.sqrt(np.einsum("ij,ij->i", grad, grad)).max(initial=0.0))
    return float(np.abs(grad).max(initial=0.0))


def _closed_form_max(
    spec: dict, data: PathData, param: str, encoded: np.ndarray | None = None
) -> float | None:
    """lambda_max of a linear model with mse / bce / softmax from its gradient at W = 0.

    ``encoded``: the training rows' encoding ``Z`` when the caller has it already.
    """
    loss = spec["loss"]
    if not is_linear(spec) or loss not in ("mse", "binary_cross_entropy", "softmax_cross_entropy"):
        return None
    rows = data.train_rows
    if encoded is None:
        _, Z = data.encode(rows, spec["standardize"])
        Z = Z[rows] if len(rows) < data.n else Z
    else:
        Z = encoded
    Y = _targets_matrix(data, rows, loss)
    # At the optimal intercept the residual has zero mean, so X needs no centring.
    resid = Y - Y.mean(axis=0)
    grad = Z.T @ resid / len(rows)
    if loss == "mse":
        grad *= 2.0
    return _gradient_max(grad, "regularization.group_l1" if "group" in param else param)


def _first_layer_zero(model: Any) -> bool:
    return not np.any(model.network.dense_layers[0].params["W"])


def _network_max(spec: dict, data: PathData, param: str, feature_names: list[str]) -> float:
    """First-layer gradient of a network near initialisation, doubled until a fit zeroes W_1."""
    base = with_value(spec, param, 0.0)
    base["epochs"] = 1
    base["early_stopping"] = None
    model = fit(
        base,
        data.take_x(data.train_rows),
        data.take_y(data.train_rows),
        feature_names=feature_names,
    )
    Z = model.preprocessor.transform(data.take_x(data.train_rows), dtype=model.network.dtype)
    Y = held_out_targets(model, data, data.train_rows)
    scores = model.network.forward(Z, training=True)
    _, dscores = make_loss(spec["loss"], spec["loss_params"])(scores, Y)
    model.network.backward(dscores)
    lam = max(_gradient_max(model.network.dense_layers[0].grads["W"], param), 1e-12)
    every = np.arange(data.n)
    for _ in range(_MAX_DOUBLINGS):
        # the fit of the path's first point on all rows (engine.fit splits off validation itself)
        check = fit(
            with_value(spec, param, lam),
            data.take_x(every),
            data.take_y(every),
            feature_names=feature_names,
        )
        if _first_layer_zero(check):
            return lam
        lam *= 2.0
    return lam


def lambda_max(
    spec: Mapping[str, Any] | None,
    X: Any,
    y: Any,
    *,
    param: str = "regularization.l1",
    feature_names: Sequence[str] | None = None,
) -> float:
    """The smallest ``param`` (l1 or group_l1) at which every (first-layer) weight is zero.

    Computed on the training rows (the spec's validation split excluded); see the module docstring
    for the formulas. For ``regularization.l2`` the top of the ridge grid; for a dropout rate 0.8.
    """
    spec = base_spec(spec)
    check_param(param)
    data = prepare_data(spec, X, y, feature_names)
    return _lambda_max(spec, data, param)


def _lambda_max(spec: dict, data: PathData, param: str, encoded: np.ndarray | None = None) -> float:
    if param.startswith("dropout."):
        return _DROPOUT_TOP
    sparse = param if param in _SPARSE_PARAMS else "regularization.l1"
    lam = _closed_form_max(spec, data, sparse, encoded)
    if lam is None:
        lam = _network_max(spec, data, sparse, data.names)
    if param == "regularization.l2":
        lam *= _RIDGE_FACTOR
    if not lam > 0:
        raise InputError("The target carries no signal: lambda_max is 0.", "constant_target")
    return lam


def make_grid(
    spec: dict,
    data: PathData,
    param: str,
    values: Sequence[float] | None,
    num: int,
    min_ratio: float,
    encoded: np.ndarray | None = None,
) -> np.ndarray:
    if values is not None:
        grid = np.array(sorted({float(v) for v in values}, reverse=True))
        if grid.size == 0 or not np.all(np.isfinite(grid)) or grid[-1] < 0:
            raise SpecError(
                ("search", "values"), "search.values must be finite numbers >= 0.", "out_of_range"
            )
        if param.startswith("dropout.") and grid[0] >= 1.0:
            raise SpecError(("search", "values"), "dropout rates must be < 1.", "out_of_range")
        return grid
    if not 1 <= num <= 1000:
        raise SpecError(
            ("search", "num"), f"search.num must be in [1, 1000], got {num}.", "out_of_range"
        )
    if param.startswith("dropout."):
        return np.linspace(_DROPOUT_TOP, 0.0, num)
    if not 0.0 < min_ratio < 1.0:
        raise SpecError(
            ("search", "min_ratio"),
            f"search.min_ratio must be in (0, 1), got {min_ratio}.",
            "out_of_range",
        )
    top = _lambda_max(spec, data, param, encoded)
    return top * np.logspace(0.0, math.log10(min_ratio), num)
