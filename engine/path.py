"""Regularization paths with cross-validation: choosing the penalty strength.

A path fits one model per value of a spec parameter ``param`` (``regularization.l1``, ``.l2``,
``.group_l1``, ``dropout.hidden``, ``dropout.input``) on a grid ``v_0 > v_1 > ... > v_{P-1}``,
scores each on held-out rows and picks one value.

Objective (``engine.regularizers``; the mean data loss plus the penalty on weights only)::

    J(W, b) = (1/N) sum_n loss(f(x_n), y_n)
              + l1 ||W||_1 + l2 ||W||_2^2 + group_l1 sum_j ||W_1[j]||_2

Scaling against scikit-learn / glmnet. For the Lasso (linear model, mse) ours is
``(1/N) ||y - X w - b||^2 + l1 ||w||_1``, exactly twice scikit-learn's
``(1/(2N)) ||y - X w - b||^2 + alpha ||w||_1``, so the same solution has ``l1 = 2 * alpha``; for the
elastic net ``l1 = 2 * alpha * l1_ratio`` and ``l2 = alpha * (1 - l1_ratio)``. For L1 logistic
regression (mean log-loss + ``l1 ||w||_1``) against ``C * sum log-loss + ||w||_1``:
``C = 1 / (N_train * l1)``.

Grid (``num`` points, when ``values`` is not given): log-spaced from ``lambda_max`` down to
``lambda_max * min_ratio``. ``lambda_max`` is the smallest ``l1`` (or ``group_l1``) at which every
weight is zero, from the gradient of the mean data loss at ``W = 0`` with the optimal intercept:

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

Solvers. A linear mse model (empty ``hidden_layers``, ``loss == "mse"``, no dropout) runs the path
exactly, as glmnet does it fast: per training split the centred Gram matrix ``G = Xc^T Xc / N``
and ``c = Xc^T yc / N`` once, then for each value, warm-started from the previous solution, an
active-set (feature-sign) solver over the sequential strong-rule set
``S = supp(w) U {j : |g_j| >= 2 tau_k - tau_(k-1)}`` (``g = c - G w``,
``tau = (l1 + group_l1) / 2``), and a KKT check ``|g_j| <= tau`` on all features; the inverse
of the active block of ``G`` is kept as a base inverse plus a bordered Schur block as features
enter and leave. Every other model is an ``engine.fit`` per value: a linear one warm-started from
the previous value's model (convex: the same optimum, sooner), a network from its seeded
initialisation, so that each point is what ``engine.fit`` at that value gives (a warm start from
the more penalised previous point traps a ReLU network in that point's dead units).

Cross-validation. ``folds=K`` splits the training rows (the rows ``engine.fit`` trains on: all rows
minus the spec's validation split) into ``K`` folds: contiguous in row order when
``spec["shuffle"]`` is false (scikit-learn's ``KFold(K)``: the first ``n % K`` folds one row
longer), a seeded permutation (``spec["seed"]``) otherwise. Fold ``k`` trains on the other folds
and scores its own rows. Without ``folds`` the spec's validation split scores each point. The CV
loss of a point is the mean data loss on the held-out rows (no penalty; mean squared error for
mse, as ``LassoCV``'s ``mse_path_``), averaged over folds with the standard error
``std(ddof=1) / sqrt(K)``.

Selection. ``min``: the value with the lowest mean CV loss (the largest one on ties); ``1se``: the
largest value whose mean CV loss is within one standard error (of the minimum's) of the minimum
(glmnet's ``lambda.1se``). The final model is ``engine.fit`` at the chosen value on all training
rows; per-point statistics (non-zero weights, selected features, weight norms, linear
coefficients) come from the path on all training rows.

For a distributed run: :func:`path_grid` once, :func:`path_fold` for ``fold_index`` in
``None, 0, ..., K-1`` as independent tasks (pure, picklable inputs and outputs), :func:`combine`,
then ``engine.fit(final_spec(spec, param, result.chosen_value), X, y)``. When the splits can
share their Gram statistics (the exact path on a numeric matrix without standardization or
missing values), :func:`path_gram_block` for ``fold_index`` in ``0, ..., K-1`` first, as
independent tasks too, and every :func:`path_fold` given all ``K`` blocks: each split then sums
blocks instead of computing a Gram over its rows, as :func:`path` does in one process.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from engine.errors import InputError, SpecError, TrainingTimeout
from engine.losses import make_loss
from engine.model import split
from engine.preprocess import (
    Preprocessor,
    Table,
    encode_labels,
    read_table,
    regression_target,
)
from engine.spec import SEARCH_PARAMS, SEARCH_SELECT, normalize_spec

__all__ = [
    "PARAMS",
    "SELECTIONS",
    "FoldPath",
    "GramBlock",
    "PathCancelled",
    "PathResult",
    "combine",
    "final_spec",
    "fold_rows",
    "lambda_max",
    "path",
    "path_fold",
    "path_gram_block",
    "path_grid",
]

PARAMS: tuple[str, ...] = SEARCH_PARAMS
SELECTIONS: tuple[str, ...] = SEARCH_SELECT
_SPARSE_PARAMS = ("regularization.l1", "regularization.group_l1")
_DROPOUT_TOP = 0.8
_RIDGE_FACTOR = 500.0  # glmnet's ridge lambda_max (alpha = 0.001) in our scaling
_MAX_DOUBLINGS = 30

Callback = Callable[[dict[str, Any]], bool | None]


class PathCancelled(RuntimeError):
    """A callback returned True or ``cancel()`` did: the path stopped between two points."""


# --- results --------------------------------------------------------------------------------------


@dataclass
class FoldPath:
    """The path of one training split.

    ``fold`` is the fold index, or ``None`` for the path on all training rows. ``loss`` and
    ``metric`` ``(P,)`` are the held-out scores per grid point (``None`` when the split has no
    held-out rows). Only the all-rows path carries the per-point statistics: ``nonzero``,
    ``selected`` (raw feature names), ``norms[k][j]`` (``||W_1[group of feature_names[j]]||_2``)
    and, for linear models, ``coef[k][i]`` (the weight of encoded column ``coef_names[i]``;
    ``name[o]`` for output ``o`` of a K > 1 output model) and, for the exact path, ``intercept``.
    """

    fold: int | None
    grid: list[float]
    n_train: int
    n_val: int
    loss: list[float] | None = None
    metric: list[float] | None = None
    nonzero: list[int] | None = None
    selected: list[list[str]] | None = None
    feature_names: list[str] | None = None
    norms: list[list[float]] | None = None
    coef_names: list[str] | None = None
    coef: list[list[float]] | None = None
    intercept: list[float] | None = None
    seconds: float = 0.0
    # In-process only (not in to_dict): the fitted models of the all-rows path, when kept.
    models: list[Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "models"}
        return out


@dataclass
class PathResult:
    """A regularization path with its cross-validation scores and the chosen value.

    Attributes
    ----------
    param : str
    grid : list of float
        Descending values of ``param``.
    points : list of dict
        Per value: ``value``, ``cv_loss``, ``cv_loss_se``, ``cv_metric``, ``cv_metric_se``,
        ``nonzero`` (non-zero weights), ``selected_features`` (raw names), ``feature_norms``
        (``||W_1[group]||_2`` per name of ``feature_names``), and for linear models ``coef`` (per
        name of ``coef_names``; the exact path also gives ``intercept``).
    feature_names, coef_names : list of str
        Raw features (``feature_norms`` order); encoded columns (``coef`` order) or None.
    chosen : dict
        ``{"min": value, "1se": value, "used": "min" | "1se"}``.
    chosen_value : float
        ``chosen[chosen["used"]]``.
    folds : int or None
    metric_name : str
        ``"r2"`` | ``"accuracy"``.
    solver : str
        ``"gram"`` (exact linear mse path) or ``"fit"`` (``engine.fit`` per value).
    model : engine.Model or None
        ``engine.fit`` at the chosen value on all training rows.
    seconds : float
    """

    param: str
    grid: list[float]
    points: list[dict[str, Any]]
    chosen: dict[str, Any]
    folds: int | None
    metric_name: str
    solver: str
    feature_names: list[str] = field(default_factory=list)
    coef_names: list[str] | None = None
    fold_paths: list[FoldPath] = field(default_factory=list, repr=False)
    model: Any = field(default=None, repr=False)
    seconds: float = 0.0

    @property
    def chosen_value(self) -> float:
        return float(self.chosen[self.chosen["used"]])

    @property
    def chosen_index(self) -> int:
        return self.grid.index(self.chosen_value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no model): grid, points, chosen, per-fold losses."""
        return {
            "param": self.param,
            "grid": list(self.grid),
            "points": self.points,
            "chosen": dict(self.chosen),
            "folds": self.folds,
            "metric_name": self.metric_name,
            "solver": self.solver,
            "feature_names": list(self.feature_names),
            "coef_names": None if self.coef_names is None else list(self.coef_names),
            "fold_losses": [fp.loss for fp in self.fold_paths if fp.fold is not None],
            "fold_metrics": [fp.metric for fp in self.fold_paths if fp.fold is not None],
            "seconds": self.seconds,
        }


# --- data -----------------------------------------------------------------------------------------


@dataclass
class _Data:
    table: Table  # the raw input, read once by the preprocessor's one adapter
    n: int
    task: str
    y_reg: np.ndarray | None
    classes: list[Any] | None
    y_idx: np.ndarray | None
    train_rows: np.ndarray  # engine.fit's training split
    val_rows: np.ndarray  # engine.fit's validation split

    @property
    def names(self) -> list[str]:
        return self.table.names

    @property
    def target(self) -> np.ndarray:
        """The regression target (N,)."""
        if self.y_reg is None:
            raise TypeError("a classification target has no regression values")
        return self.y_reg

    @property
    def labels(self) -> tuple[list[Any], np.ndarray]:
        """``(classes, y_idx (N,))`` of a classification target."""
        if self.classes is None or self.y_idx is None:
            raise TypeError("a regression target has no classes")
        return self.classes, self.y_idx

    @property
    def R(self) -> np.ndarray | None:
        """All-numeric input as one matrix (N, D), else None."""
        return self.table.matrix

    def take_x(self, rows: np.ndarray) -> Any:
        if self.table.matrix is not None:
            return self.table.matrix[rows]
        columns = self.table.columns or []
        return {name: col[rows] for name, col in zip(self.names, columns, strict=True)}

    def take_y(self, rows: np.ndarray) -> np.ndarray:
        if self.task == "regression":
            assert self.y_reg is not None
            return self.y_reg[rows]
        assert self.y_idx is not None
        return np.asarray(self.classes, dtype=object)[self.y_idx[rows]]

    def encode(self, rows: np.ndarray, standardize: bool) -> tuple[Preprocessor, np.ndarray]:
        """Preprocessing fitted on ``rows``, applied to every row: ``(pre, Z (N, F) float64)``."""
        return Preprocessor.fit_transform(
            self.table, rows=rows, standardize=standardize, dtype=np.float64
        )


def _prepare(spec: dict, X: Any, y: Any, feature_names: Sequence[str] | None) -> _Data:
    table = read_table(X, feature_names)
    n = table.n_rows
    task = spec["task"]
    y_reg = classes = y_idx = None
    if task == "classification":
        classes, y_idx = encode_labels(y)
        n_y = len(y_idx)
    else:
        y_reg = regression_target(y)
        n_y = len(y_reg)
    if n_y != n:
        raise InputError(f"X has {n} rows but y has {n_y}.", "length_mismatch")
    if n < 2:
        raise InputError(f"A path needs at least 2 rows, got {n}.", "too_few_rows")
    # the table read above, not X again (a mapping of columns would be stacked a second time)
    if table.matrix is not None:
        train_rows, val_rows = split(spec, table.matrix, y, feature_names=table.names)
    else:
        train_rows, val_rows = split(spec, X, y, feature_names=feature_names)
    return _Data(table, n, task, y_reg, classes, y_idx, train_rows, val_rows)


def fold_rows(n: int, folds: int, *, shuffle: bool, seed: int) -> list[np.ndarray]:
    """Held-out positions ``0 <= i < n`` of each of ``folds`` folds (sorted within a fold).

    Without ``shuffle`` the folds are contiguous, as scikit-learn's ``KFold(folds)``: sizes
    ``n // folds``, the first ``n % folds`` one longer. With ``shuffle`` the same sizes are cut from
    ``default_rng(seed).permutation(n)``.
    """
    if not 2 <= folds <= n:
        raise SpecError(
            ("search", "folds"),
            f"folds must be in [2, {n}] for {n} rows, got {folds}.",
            "out_of_range",
        )
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.sort(order[bounds[k] : bounds[k + 1]]) for k in range(folds)]


# --- spec helpers ---------------------------------------------------------------------------------


def _normalize(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    raw = dict(spec or {})
    raw.pop("search", None)  # the path's own settings, not engine.fit's
    return normalize_spec(raw)


def _check_param(param: str) -> tuple[str, str]:
    if param not in PARAMS:
        raise SpecError(
            ("search", "param"),
            f"search.param must be one of {', '.join(PARAMS)}; got {param!r}.",
            "unknown_param",
        )
    section, key = param.split(".")
    return section, key


def _with_value(spec: dict, param: str, value: float) -> dict:
    section, key = _check_param(param)
    out = copy.deepcopy(spec)
    out[section][key] = float(value)
    return out


def _is_linear(spec: dict) -> bool:
    model = spec["model"]
    return not model.get("hidden_layers") and not model.get("layers")


def _exact(spec: dict, param: str) -> bool:
    """Whether the exact Gram path applies: linear mse, no dropout, a penalty parameter."""
    return (
        _is_linear(spec)
        and spec["loss"] == "mse"
        and param.startswith("regularization.")
        and not spec["dropout"]["input"]
        and not spec["dropout"]["hidden"]
    )


def final_spec(spec: Mapping[str, Any], param: str, value: float) -> dict[str, Any]:
    """The spec ``engine.fit`` trains the final model with: ``param = value``.

    For the exact linear mse path the optimizer becomes ``fista`` (if it is not already): the
    path computed the convex optimum, and FISTA is the optimizer of ``engine.fit`` that converges
    to it.
    """
    out = _with_value(_normalize(spec), param, value)
    if _exact(out, param) and out["optimizer"]["name"] != "fista":
        out["optimizer"] = {"name": "fista"}
        out = normalize_spec(out)
    return out


# --- lambda_max and the grid ----------------------------------------------------------------------


def _targets_matrix(data: _Data, rows: np.ndarray, loss: str) -> np.ndarray:
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
    spec: dict, data: _Data, param: str, encoded: np.ndarray | None = None
) -> float | None:
    """lambda_max of a linear model with mse / bce / softmax from its gradient at W = 0.

    ``encoded``: the training rows' encoding ``Z`` when the caller has it already.
    """
    loss = spec["loss"]
    if not _is_linear(spec) or loss not in ("mse", "binary_cross_entropy", "softmax_cross_entropy"):
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


def _network_max(spec: dict, data: _Data, param: str, feature_names: list[str]) -> float:
    """First-layer gradient of a network near initialisation, doubled until a fit zeroes W_1."""
    import engine

    base = _with_value(spec, param, 0.0)
    base["epochs"] = 1
    base["early_stopping"] = None
    model = engine.fit(
        base,
        data.take_x(data.train_rows),
        data.take_y(data.train_rows),
        feature_names=feature_names,
    )
    Z = model.preprocessor.transform(data.take_x(data.train_rows), dtype=model.network.dtype)
    Y = _held_out_targets(model, data, data.train_rows)
    scores = model.network.forward(Z, training=True)
    _, dscores = make_loss(spec["loss"], spec["loss_params"])(scores, Y)
    model.network.backward(dscores)
    lam = max(_gradient_max(model.network.dense_layers[0].grads["W"], param), 1e-12)
    every = np.arange(data.n)
    for _ in range(_MAX_DOUBLINGS):
        # the fit of the path's first point on all rows (engine.fit splits off validation itself)
        check = engine.fit(
            _with_value(spec, param, lam),
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
    spec = _normalize(spec)
    _check_param(param)
    data = _prepare(spec, X, y, feature_names)
    return _lambda_max(spec, data, param)


def _lambda_max(spec: dict, data: _Data, param: str, encoded: np.ndarray | None = None) -> float:
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


def _make_grid(
    spec: dict,
    data: _Data,
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


def path_grid(
    spec: Mapping[str, Any] | None,
    X: Any,
    y: Any,
    *,
    param: str = "regularization.l1",
    values: Sequence[float] | None = None,
    num: int = 30,
    min_ratio: float = 1e-3,
    feature_names: Sequence[str] | None = None,
) -> list[float]:
    """The descending grid of ``param``: ``values`` sorted, or ``num`` points from lambda_max."""
    spec = _normalize(spec)
    _check_param(param)
    data = _prepare(spec, X, y, feature_names)
    return [float(v) for v in _make_grid(spec, data, param, values, num, min_ratio)]


# --- the exact linear mse path --------------------------------------------------------------------


class _ActiveSet:
    """The active block ``M = G[A, A] + l2 I`` and its inverse, kept as a base plus a border.

    Positions ``0 <= p < m`` hold features ``idx[p]``. The first ``m0`` (the base) have ``M0`` and
    its explicit inverse ``B = M0^-1`` (contiguous ``(m0, m0)``); the ``r = m - m0`` added since
    (the border) are kept in bordered form: with ``U = M[base, border] (m0, r)``,
    ``C = M[border, border] (r, r)``, ``P = B U`` and the Schur complement ``S = C - U^T P``,

        M^-1 = [[B + P S^-1 P^T, -P S^-1],
                [-S^-1 P^T,       S^-1 ]],

    so adding ``k`` features costs one product ``U_new^T B`` (``O(m0^2 k)``, one read of ``B``)
    and updates of the ``r``-sized parts, not a rewrite of the ``m x m`` inverse. Removing a
    feature only marks its position dead: with the dead positions ``R`` and ``y = M^-1 [b; 0]``,
    the solution on the live block is ``y - M^-1[:, R] M^-1[R, R]^-1 y[R]``, and a feature that
    comes back costs nothing. Border and dead are folded into a new explicit base in one batch
    (``B + P S^-1 P^T``, then ``E - F H^-1 F^T`` for the dead) once they are many.
    """

    def __init__(self, G: np.ndarray, l2: float) -> None:
        F = G.shape[0]
        self.G, self.l2, self.m, self.m0 = G, l2, 0, 0
        self.idx = np.zeros(F, dtype=np.intp)
        self.pos = np.full(F, -1, dtype=np.intp)  # position of each feature, -1 if not in
        self.alive = np.zeros(F, dtype=bool)  # by position
        self.n_dead = 0
        self.M0 = np.zeros((0, 0))
        self.B = np.zeros((0, 0))
        self._new_border(0)
        # (dead positions R, M^-1[:, R], M^-1[R, R]^-1), until the set changes
        self._dead: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.solves = 0

    def _new_border(self, capacity: int) -> None:
        m0 = self.m0
        self.UT = np.empty((capacity, m0))  # U^T: rows M[border, base]
        self.PT = np.empty((capacity, m0))  # P^T = U^T B
        self.QT = np.empty((capacity, m0))  # (P S^-1)^T = S^-1 P^T
        self.C = np.zeros((0, 0))
        self.Si = np.zeros((0, 0))  # S^-1

    @property
    def A(self) -> np.ndarray:
        """Active features (in position order)."""
        m = self.m
        return self.idx[:m][self.alive[:m]] if self.n_dead else self.idx[:m]

    def add(self, new: np.ndarray) -> None:
        if len(new) == 0:
            return
        self._dead = None
        back = self.pos[new] >= 0
        if back.any():
            self.alive[self.pos[new[back]]] = True
            self.n_dead -= int(back.sum())
            new = new[~back]
        k = len(new)
        if k == 0:
            return
        m, m0 = self.m, self.m0
        r = m - m0
        end = m + k
        self.idx[m:end] = new
        self.pos[new] = np.arange(m, end)
        self.alive[m:end] = True
        self.m = end
        rows = self.G[new]  # (k, F): contiguous rows of the symmetric G
        Cnn = rows[:, new]
        Cnn.flat[:: k + 1] += self.l2
        if m0 == 0:  # nothing yet: the first features are the base
            self.m0, self.M0, self.B = end, Cnn, _inv(Cnn)
            self._new_border(_BORDER_MIN)
            return
        if r + k > len(self.UT):
            self._grow(r, max(2 * len(self.UT), r + k))
        Un = rows[:, self.idx[:m0]]  # (k, m0) = M[new, base]
        Pn = Un @ self.B  # (k, m0) = (B U_new)^T
        Snn = Cnn - Un @ Pn.T
        if r:
            # S gains k rows and columns: border its inverse (and Q^T = S^-1 P^T) in turn
            Cnb = rows[:, self.idx[m0:m]]  # (k, r) = M[new, border]
            Snb = Cnb - Un @ self.PT[:r].T
            E = self.Si @ Snb.T  # (r, k)
            Sk = _inv(Snn - Snb @ E)
            ES = E @ Sk
            D = E.T @ self.PT[:r] - Pn  # (k, m0)
            self.QT[:r] += ES @ D
            self.QT[r : end - m0] = -Sk @ D
            Si = np.empty((r + k, r + k))
            Si[:r, :r] = self.Si + ES @ E.T
            Si[:r, r:] = -ES
            Si[r:, :r] = -ES.T
            Si[r:, r:] = Sk
            C = np.empty((r + k, r + k))
            C[:r, :r] = self.C
            C[:r, r:] = Cnb.T
            C[r:, :r] = Cnb
            C[r:, r:] = Cnn
            self.Si, self.C = Si, C
        else:
            self.Si, self.C = _inv(Snn), Cnn
            self.QT[:k] = self.Si @ Pn
        self.UT[r : end - m0] = Un
        self.PT[r : end - m0] = Pn
        if end - m0 > max(_BORDER_MIN, m0 // _BORDER_SHARE):
            self.compact()

    def _grow(self, r: int, capacity: int) -> None:
        """Room for ``capacity`` border rows, keeping the first ``r``."""
        for name in ("UT", "PT", "QT"):
            old = getattr(self, name)
            buf = np.empty((capacity, self.m0))
            buf[:r] = old[:r]
            setattr(self, name, buf)

    def remove(self, drop: np.ndarray) -> None:
        """Mark the features ``drop`` (active) dead; compact when the dead are many."""
        self.alive[self.pos[drop]] = False
        self.n_dead += len(drop)
        self._dead = None
        if self.n_dead > max(16, self.m // 8):
            self.compact()

    def compact(self) -> None:
        """Fold the border into the base and drop the dead positions, in one batch."""
        m, m0 = self.m, self.m0
        r = m - m0
        if r == 0 and self.n_dead == 0:
            return
        Minv, M = self.B, self.M0
        if r:
            PT, QT, UT = self.PT[:r], self.QT[:r], self.UT[:r]
            Minv = np.empty((m, m))
            np.matmul(PT.T, QT, out=Minv[:m0, :m0])
            Minv[:m0, :m0] += self.B
            Minv[:m0, m0:] = -QT.T
            Minv[m0:, :m0] = -QT
            Minv[m0:, m0:] = self.Si
            M = np.empty((m, m))
            M[:m0, :m0] = self.M0
            M[:m0, m0:] = UT.T
            M[m0:, :m0] = UT
            M[m0:, m0:] = self.C
        q = m
        if self.n_dead:
            live = np.flatnonzero(self.alive[:m])
            dead = np.flatnonzero(~self.alive[:m])
            q = len(live)
            Fb = Minv[np.ix_(live, dead)]
            H = Minv[np.ix_(dead, dead)]
            Minv = Minv[np.ix_(live, live)]
            Minv -= Fb @ _inv(H) @ Fb.T
            M = M[np.ix_(live, live)]
            self.pos[self.idx[dead]] = -1
            self.idx[:q] = self.idx[live]
            self.pos[self.idx[:q]] = np.arange(q)
            self.alive[:m] = False
            self.alive[:q] = True
        self.m = self.m0 = q
        self.n_dead = 0
        self.B, self.M0 = Minv, M
        self._new_border(max(_BORDER_MIN, q // _BORDER_SHARE))
        self._dead = None

    def _full(self, v: np.ndarray) -> np.ndarray:
        if not self.n_dead:
            return v
        out = np.zeros(self.m)
        out[self.alive[: self.m]] = v
        return out

    def _matvec_full(self, v: np.ndarray) -> np.ndarray:
        """``M v`` over every position (dead ones included)."""
        m0 = self.m0
        r = self.m - m0
        out = np.empty(self.m)
        out[:m0] = self.M0 @ v[:m0]
        if r:
            UT = self.UT[:r]
            out[:m0] += v[m0:] @ UT
            out[m0:] = UT @ v[:m0] + self.C @ v[m0:]
        return out

    def _apply_inverse(self, b: np.ndarray) -> np.ndarray:
        """``M^-1 b`` over every position (dead ones included)."""
        m0 = self.m0
        r = self.m - m0
        x = np.empty(self.m)
        b0 = b[:m0]
        x[:m0] = self.B @ b0
        if r:
            z = self.PT[:r] @ b0
            b1 = b[m0:]
            x[:m0] += (z - b1) @ self.QT[:r]
            x[m0:] = self.Si @ (b1 - z)
        return x

    def _inverse_columns(self, p: np.ndarray) -> np.ndarray:
        """``M^-1[:, p] (m, len(p))`` for positions ``p``."""
        m0 = self.m0
        r = self.m - m0
        PT, QT = self.PT[:r], self.QT[:r]
        out = np.empty((self.m, len(p)))
        base = p < m0
        pb, pr = p[base], p[~base] - m0
        if len(pb):
            # B is symmetric: its rows pb (contiguous) are its columns pb
            out[:m0, base] = (self.B[pb] + QT[:, pb].T @ PT).T
            out[m0:, base] = -QT[:, pb]
        if len(pr):
            out[:m0, ~base] = -QT[pr].T
            out[m0:, ~base] = self.Si[:, pr]
        return out

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """``M v`` on the live block (``v`` in the order of ``A``)."""
        out = self._matvec_full(self._full(v))
        return out[self.alive[: self.m]] if self.n_dead else out

    def solve(self, rhs: np.ndarray, final: bool = False) -> np.ndarray:
        """``M_live^-1 rhs`` (order of ``A``), checked by its residual when ``final`` and every
        ``_CHECK_EVERY`` solves (the block updates can drift)."""
        b = self._full(rhs)
        x = self._apply_inverse(b)
        dead = None
        if self.n_dead:
            if self._dead is None:
                dead = np.flatnonzero(~self.alive[: self.m])
                cols = self._inverse_columns(dead)
                self._dead = (dead, cols, _inv(cols[dead]))
            dead, cols, Hinv = self._dead
            x -= cols @ (Hinv @ x[dead])
            x[dead] = 0.0
        self.solves += 1
        drift = False
        if final or self.solves % _CHECK_EVERY == 0:
            res = b - self._matvec_full(x)
            if dead is not None:
                res[dead] = 0.0
            scale = float(np.abs(b).max(initial=0.0)) + 1e-300
            drift = float(np.abs(res).max(initial=0.0)) > 1e-10 * scale
        if drift:
            # the block updates drifted (or M is singular): refactor from scratch
            self.compact()
            self.B = _inv(self.M0)
            return np.linalg.lstsq(self.M0, rhs, rcond=None)[0]
        return x[self.alive[: self.m]] if self.n_dead else x


def _inv(M: np.ndarray) -> np.ndarray:
    if M.shape == (1, 1) and M[0, 0] != 0:
        return 1.0 / M
    try:
        return np.linalg.inv(M)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(M)


_CHECK_EVERY = 4
_BORDER_MIN = 32  # the border is folded into the base past max(_BORDER_MIN, m0 / _BORDER_SHARE)
_BORDER_SHARE = 4
_MULTI_DROPS = 2  # sign-conflict rounds per point that drop all conflicting coordinates at once
_LINE_POINTS = 16  # zero crossings tried by a feature-sign line search (plus the full step)


def _solve_point(
    c: np.ndarray,
    w: np.ndarray,
    g: np.ndarray,
    tau: float,
    strong: np.ndarray,
    active: _ActiveSet,
    gram_row: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Exact minimiser of ``f(w) = w^T G w - 2 c^T w + l2 ||w||^2 + 2 tau ||w||_1`` from ``w``.

    ``f`` is our objective ``J`` minus a constant. Feature-sign search (Lee et al. 2007): with the
    active set ``A`` and signs ``theta`` solve ``(G_AA + l2 I) x = c_A - tau theta``; when a sign
    disagrees, move to the best of the first zero crossings and the full step on the segment
    ``w -> x`` (the objective decreases) and drop the zeros. The violators of ``|g_j| <= tau``
    (``g = c - G w``) enter from the strong set, then from all features (the KKT check). ``g`` is
    the gradient at the starting ``w`` (the previous point's, returned by its solve). Returns
    ``(w, g)`` with ``active`` holding ``supp(w)``.
    """
    F = len(c)
    tol = 1e-10 * max(tau, 1e-300)
    # accuracy asked of the active equations (what a solve accepts is 10x tighter, see solve)
    tol_active = 1e-9 * (tau + float(np.abs(c).max(initial=0.0)))
    in_set = strong.copy()
    w = w.copy()
    theta = np.sign(w)  # by feature
    one_at_a_time = False
    drops = 0
    fresh = True  # g is the gradient at w
    for _ in range(10 * F + 100):
        A = active.A
        if not fresh:
            g = c - gram_row(w) if len(A) else c.copy()
        fresh = True
        viol = (w == 0) & (np.abs(g) > tau + tol)
        inside = viol & in_set
        # the active coefficients must satisfy g_j - l2 w_j = tau sign(w_j) at THIS tau
        wa = w[A]
        off = np.abs(g[A] - active.l2 * wa - tau * np.sign(wa)).max(initial=0.0) > tol_active
        if not inside.any() and not off:
            if not viol.any():
                return w, g
            in_set |= viol  # the strong rule missed them
            continue
        new = np.flatnonzero(inside)
        if one_at_a_time and len(new) > 1:
            new = new[[int(np.argmax(np.abs(g[new])))]]
        theta[new] = np.sign(g[new])
        active.add(new)
        one_at_a_time = False
        fresh = False  # the solves below move w
        # nothing enters: the active equations are re-solved, so check that solve's accuracy
        final = len(new) == 0
        for _ in range(4 * F + 10):
            A = active.A
            x = active.solve(c[A] - tau * theta[A], final=final)
            final = False
            wa = w[A]
            if np.all(np.sign(x) == theta[A]):
                w[A] = x
                break
            if drops < _MULTI_DROPS:
                # Drop every coordinate whose sign disagrees, at once, and re-solve: one solve
                # instead of one per zero crossing. Not a guaranteed descent step, so only a few
                # per point; the KKT checks re-admit a feature dropped wrongly.
                drops += 1
                bad = np.sign(x) != theta[A]
                x[bad] = 0.0
                w[A] = x
                theta[A] = np.sign(x)
                active.remove(A[bad])
                if len(active.A) == 0:
                    break
                continue
            d = x - wa
            with np.errstate(divide="ignore", invalid="ignore"):
                t_cross = -wa / d
            cand = np.flatnonzero((wa != 0) & (t_cross > 0) & (t_cross < 1))
            if len(cand) > _LINE_POINTS:
                cand = cand[np.argpartition(t_cross[cand], _LINE_POINTS)[:_LINE_POINTS]]
            ts = np.concatenate([t_cross[cand], [1.0]])
            vals = _objective_change(wa, d, active.matvec(d), c[A], tau, ts)
            best = int(np.argmin(vals))
            if vals[best] >= 0 and len(new) > 1:
                one_at_a_time = True  # several entering features fought: add them singly
            t = ts[best]
            nw = wa + t * d
            if best < len(cand):
                nw[cand[best]] = 0.0
            nw[np.abs(nw) <= 1e-15 * (np.abs(wa) + np.abs(x))] = 0.0
            w[A] = nw
            theta[A] = np.sign(nw)
            zero = A[nw == 0]
            if len(zero):
                active.remove(zero)
            if len(active.A) == 0:
                break
    raise FloatingPointError("the Lasso path solver did not converge")  # pragma: no cover


def _objective_change(
    w: np.ndarray, d: np.ndarray, Md: np.ndarray, c: np.ndarray, tau: float, ts: np.ndarray
) -> np.ndarray:
    """``f(w + t d) - f(w)`` for each ``t`` in ``ts`` on the active block (``Md = M d``)."""
    a = float(d @ Md)
    b = 2.0 * (float(w @ Md) - float(c @ d))
    l1 = np.abs(w[None, :] + ts[:, None] * d[None, :]).sum(axis=1) - np.abs(w).sum()
    return a * ts * ts + b * ts + 2.0 * tau * l1


@dataclass
class _GramStats:
    """Centred ``G = Xc^T Xc / n`` and ``c = Xc^T yc / n`` of a training split."""

    G: np.ndarray  # (F, F)
    c: np.ndarray  # (F,)
    x_mean: np.ndarray  # (F,)
    y_mean: float
    n: int


def _gram(Z: np.ndarray, yv: np.ndarray) -> _GramStats:
    n = Z.shape[0]
    mz = Z.mean(axis=0)
    my = float(yv.mean())
    Zc = Z - mz
    G = Zc.T @ Zc
    G /= n
    c = Zc.T @ (yv - my) / n
    return _GramStats(G, c, mz, my, n)


@dataclass
class GramBlock:
    """One fold's share of the Gram statistics that every split of an exact path is built from.

    Of the fold's rows ``Zp (n, F)`` and targets ``yp``, both centred by the means ``mu``, ``my``
    of all training rows (the same shift in every block, so that sums and differences of blocks
    lose no precision to large column offsets): ``G = Zp^T Zp``, ``sz = Zp.sum(0)``,
    ``cy = Zp^T yp``, ``sy = yp.sum()``. The training rows of fold ``k`` are the other folds, so
    their statistics are the sum of all ``folds`` blocks minus block ``k``. Plain arrays and
    numbers: picklable, the output of one task of a distributed search (:func:`path_gram_block`).
    """

    fold: int
    folds: int
    n: int
    G: np.ndarray  # (F, F)
    sz: np.ndarray  # (F,)
    cy: np.ndarray  # (F,)
    sy: float
    mu: np.ndarray  # (F,)
    my: float


def _shared_encoding(
    spec: dict, data: _Data, param: str, folds: int | None
) -> tuple[Preprocessor, np.ndarray] | None:
    """``(pre, Z)`` when one encoding serves every split of the exact path, else None.

    Without standardization a numeric matrix encodes to itself in every fold, unless a missing
    value is filled with its fold's mean: then the splits can share Gram blocks.
    """
    if not (_exact(spec, param) and folds is not None and not spec["standardize"]):
        return None
    if data.R is None or np.isnan(_take_rows(data.R, data.train_rows)).any():
        return None
    return data.encode(data.train_rows, False)


def _shift(Z: np.ndarray, yv: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float]:
    """The means of ``Z`` and ``yv`` over ``rows``: the centring every block shares."""
    return _take_rows(Z, rows).mean(axis=0), float(_take_rows(yv, rows).mean())


def _block(
    Z: np.ndarray,
    yv: np.ndarray,
    rows: np.ndarray,
    shift: tuple[np.ndarray, float],
    fold: int,
    folds: int,
) -> GramBlock:
    mu, my = shift
    Zp = _take_rows(Z, rows) - mu  # a new array: ``Zp.T @ Zp`` is one symmetric product (syrk)
    yp = _take_rows(yv, rows) - my
    return GramBlock(
        fold, folds, len(rows), Zp.T @ Zp, Zp.sum(axis=0), Zp.T @ yp, float(yp.sum()), mu, my
    )


def _fold_parts(spec: dict, data: _Data, folds: int) -> list[np.ndarray]:
    """Each fold's held-out rows (row numbers of the input)."""
    parts = fold_rows(len(data.train_rows), folds, shuffle=spec["shuffle"], seed=spec["seed"])
    return [data.train_rows[p] for p in parts]


class _GramCache:
    """The Gram statistics of every split from the folds' blocks: ``K`` products of ``N/K`` rows
    instead of one of ``(K-1) N / K`` rows per fold plus one of ``N`` rows for the all-rows path.

    ``Z`` is the encoding of every row, the same in every split (see ``_shared_encoding``).
    """

    def __init__(self, pre: Preprocessor, Z: np.ndarray, blocks: Sequence[GramBlock]) -> None:
        self.pre = pre
        self.Z = Z  # (N, F) every row
        self.blocks = list(blocks)
        self.mu, self.my = self.blocks[0].mu, self.blocks[0].my
        self.n = sum(b.n for b in self.blocks)
        self.S = self.blocks[0].G.copy()
        self.sz = self.blocks[0].sz.copy()
        self.cy = self.blocks[0].cy.copy()
        for b in self.blocks[1:]:
            self.S += b.G
            self.sz += b.sz
            self.cy += b.cy
        self.sy = sum(b.sy for b in self.blocks)

    def without(self, fold: int | None) -> _GramStats:
        """Stats of the training rows minus fold ``fold`` (None: all training rows)."""
        if fold is None:
            n, G = self.n, self.S.copy()
            sz, cy, sy = self.sz, self.cy, self.sy
        else:
            b = self.blocks[fold]
            n, G = self.n - b.n, self.S - b.G
            sz, cy, sy = self.sz - b.sz, self.cy - b.cy, self.sy - b.sy
        m = sz / n
        my = sy / n
        G -= np.multiply.outer(n * m, m)
        G /= n
        c = (cy - n * m * my) / n
        return _GramStats(G, c, m + self.mu, my + self.my, n)


def _check_blocks(blocks: Sequence[GramBlock], parts: list[np.ndarray], F: int) -> None:
    folds = len(parts)
    ok = len(blocks) == folds and all(
        b.fold == k and b.folds == folds and b.n == len(parts[k]) and b.G.shape == (F, F)
        for k, b in enumerate(blocks)
    )
    if not ok:
        raise ValueError(
            f"gram_blocks must be the {folds} blocks of these folds, in fold order "
            "(engine.path_gram_block for fold_index 0..folds-1)"
        )


def _take_rows(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``a[rows]``, as a view when ``rows`` is a contiguous run."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
        return a[int(rows[0]) : int(rows[-1]) + 1]
    return a[rows]


def _gram_path(
    stats: _GramStats, grid: np.ndarray, spec: dict, param: str, tick: Callable[[int], None]
) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients ``W (F, P)`` and intercepts ``b (P,)`` along ``grid`` (warm starts).

    The solves run on one BLAS thread, as scikit-learn's KMeans runs its iterations: they are
    thousands of small products (``O(F^2)`` at most) whose thread synchronisation costs more than
    it saves, and far more when another process holds the other cores (a 100-point path on 4000 x
    1000 took 2.4x as long on two threads of a busy two-core machine as on one). The Gram
    products before it keep every thread.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _gram_path_points(stats, grid, spec, param, tick)


def _gram_path_points(
    stats: _GramStats, grid: np.ndarray, spec: dict, param: str, tick: Callable[[int], None]
) -> tuple[np.ndarray, np.ndarray]:
    G, c = stats.G, stats.c
    F, P = len(c), len(grid)
    reg = spec["regularization"]
    W = np.zeros((F, P))
    w = np.zeros(F)
    g = c.copy()
    active = None
    tau_prev = None

    def gram_row(v: np.ndarray) -> np.ndarray:
        nz = np.flatnonzero(v)
        if len(nz) * 8 < F:
            return v[nz] @ G[nz]
        return G @ v

    for k, value in enumerate(grid):
        point = dict(reg)
        point[param.split(".")[1]] = float(value)
        tau = 0.5 * (point["l1"] + point["group_l1"])
        l2 = point["l2"]
        if tau_prev is None or param == "regularization.l2":
            strong = np.ones(F, dtype=bool)
        else:
            strong = (w != 0) | (np.abs(g) >= 2.0 * tau - tau_prev)
        if tau and (active is None or active.l2 != l2):
            active = _ActiveSet(G, l2)
            active.add(np.flatnonzero(w))
        if tau == 0:
            # no L1 term: ridge (or, with l2 = 0, the minimum-norm least squares) in one solve
            M = G.copy()
            M.flat[:: F + 1] += l2
            w = np.linalg.lstsq(M, c, rcond=None)[0]
            g = c - G @ w
            active = None
        else:
            assert active is not None  # made above for every tau > 0
            w, g = _solve_point(c, w, g, tau, strong, active, gram_row)
        W[:, k] = w
        tau_prev = tau
        tick(k)
    b = stats.y_mean - stats.x_mean @ W
    return W, b


# --- scoring --------------------------------------------------------------------------------------


def _held_out_targets(model: Any, data: _Data, rows: np.ndarray) -> np.ndarray:
    """Targets of ``rows`` as the model's loss reads them (class indices into model.classes)."""
    if data.task == "regression":
        return data.target[rows].astype(model.network.dtype)
    lookup = {label: i for i, label in enumerate(model.classes)}
    classes, y_idx = data.labels
    labels = [classes[i] for i in y_idx[rows]]
    missing = [label for label in labels if label not in lookup]
    if missing:
        raise InputError(
            f"Class {missing[0]!r} of the held-out rows is absent from the training rows of its "
            "fold; set shuffle true so that every fold sees every class.",
            "fold_missing_class",
        )
    idx = np.array([lookup[label] for label in labels], dtype=np.intp)
    if model.spec["loss"] == "binary_cross_entropy":
        return idx.astype(model.network.dtype)
    return idx


def _metric(scores: np.ndarray, target: np.ndarray, loss: str, task: str) -> float:
    """R^2 (regression) or accuracy (classification) of raw scores ``(n, K)``."""
    if task == "regression":
        resid = target - scores[:, 0]
        yc = target - target.mean()
        sst = float(yc @ yc)
        sse = float(resid @ resid)
        return 1.0 - sse / sst if sst > 0 else (1.0 if sse == 0 else 0.0)
    pred = (
        (scores[:, 0] >= 0).astype(np.intp)
        if loss == "binary_cross_entropy"
        else (scores.argmax(axis=1))
    )
    return float(np.mean(pred == target))


# --- one training split ---------------------------------------------------------------------------


class _Clock:
    def __init__(
        self,
        callbacks: Sequence[Callback],
        cancel: Callable[[], bool] | None,
        max_seconds: float | None,
    ) -> None:
        self.callbacks = list(callbacks)
        self.cancel = cancel
        self.deadline = None if max_seconds is None else time.monotonic() + max_seconds

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        if self.cancel is not None and self.cancel():
            raise PathCancelled("the path was cancelled")
        left = self.remaining()
        if left is not None and left <= 0:
            raise TrainingTimeout("the path reached its time limit", 0)

    def report(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            if cb(record):
                raise PathCancelled("the path was cancelled by a callback")


def _split_rows(
    data: _Data, fold_index: int | None, folds: int | None, spec: dict
) -> tuple[np.ndarray, np.ndarray]:
    """(rows trained on, rows scored) of a split: a fold of the training rows, or all of them."""
    if fold_index is None:
        return data.train_rows, (data.val_rows if folds is None else np.empty(0, np.intp))
    if folds is None:
        raise SpecError(("search", "folds"), "fold_index needs folds.", "requires_folds")
    parts = fold_rows(len(data.train_rows), folds, shuffle=spec["shuffle"], seed=spec["seed"])
    if not 0 <= fold_index < folds:
        raise SpecError(
            ("search", "fold_index"),
            f"fold_index must be in [0, {folds}), got {fold_index}.",
            "out_of_range",
        )
    held = np.zeros(len(data.train_rows), dtype=bool)
    held[parts[fold_index]] = True
    return data.train_rows[~held], data.train_rows[held]


def _group_stats(
    sq: np.ndarray, nz: np.ndarray, pre: Preprocessor
) -> tuple[np.ndarray, np.ndarray]:
    """Per raw feature ``j`` and column ``p`` of ``sq``, ``nz`` (encoded columns, ``P``):
    ``sqrt`` of the sum of ``sq`` over the columns of ``j``'s group, and the sum of ``nz``."""
    starts = np.array([start for start, _ in pre.groups], dtype=np.intp)
    wide = np.array([stop > start for start, stop in pre.groups])
    norms = np.zeros((len(starts), sq.shape[1]))
    counts = np.zeros((len(starts), sq.shape[1]), dtype=np.intp)
    if wide.any():
        norms[wide] = np.sqrt(np.add.reduceat(sq, starts[wide], axis=0))
        counts[wide] = np.add.reduceat(nz, starts[wide], axis=0)
    return norms, counts


def _point_stats(
    W1: np.ndarray, pre: Preprocessor, total_nonzero: int
) -> tuple[int, list[str], list[float]]:
    """(non-zero weights, selected raw features, ``||W1[group_j]||_2`` per raw feature)."""
    sq = np.einsum("ij,ij->i", W1, W1)[:, None]
    norms, counts = _group_stats(sq, np.count_nonzero(W1, axis=1)[:, None], pre)
    names = pre.feature_names
    selected = [names[j] for j in np.flatnonzero(counts[:, 0])]
    return total_nonzero, selected, norms[:, 0].tolist()


def _run_split(
    spec: dict,
    data: _Data,
    grid: np.ndarray,
    param: str,
    fold_index: int | None,
    folds: int | None,
    clock: _Clock,
    cache: _GramCache | None = None,
    keep_models: bool = False,
) -> FoldPath:
    started = time.perf_counter()
    fit_rows, held = _split_rows(data, fold_index, folds, spec)
    full = fold_index is None
    result = FoldPath(
        fold=fold_index, grid=[float(v) for v in grid], n_train=len(fit_rows), n_val=len(held)
    )

    def tick(k: int, **extra: Any) -> None:
        clock.report(
            {"fold": fold_index, "index": k, "value": float(grid[k]), "points": len(grid), **extra}
        )
        clock.check()

    if _exact(spec, param):
        yv = data.target.astype(np.float64)
        if cache is not None:
            pre, Z = cache.pre, cache.Z
            stats = cache.without(fold_index)
        else:
            pre, Z = data.encode(fit_rows, spec["standardize"])
            stats = _gram(Z[fit_rows], yv[fit_rows])
        clock.check()
        W, b = _gram_path(stats, grid, spec, param, tick)
        if len(held):
            pred = _take_rows(Z, held) @ W + b  # (n_val, P)
            resid = yv[held][:, None] - pred
            result.loss = [float(v) for v in np.mean(resid * resid, axis=0)]
            result.metric = [
                _metric(pred[:, [k]], yv[held], "mse", "regression") for k in range(len(grid))
            ]
        if full:
            result.feature_names = list(pre.feature_names)
            result.coef_names = list(pre.encoded_names)
            # _point_stats of every point at once: W1 of point k is the column W[:, k]
            is_nz = W != 0
            norms, counts = _group_stats(W * W, is_nz.astype(np.intp), pre)
            names = pre.feature_names
            result.nonzero = np.count_nonzero(is_nz, axis=0).tolist()
            result.selected = [
                [names[j] for j in np.flatnonzero(counts[:, k])] for k in range(len(grid))
            ]
            result.norms = norms.T.tolist()
            result.coef = W.T.tolist()
            result.intercept = b.tolist()
        result.seconds = time.perf_counter() - started
        return result

    import engine

    X_fit, y_fit = data.take_x(fit_rows), data.take_y(fit_rows)
    point_spec = spec
    if not full:
        point_spec = copy.deepcopy(spec)
        point_spec["validation_split"] = 0.0
        if (point_spec["early_stopping"] or {}).get("monitor") == "val_loss":
            point_spec["early_stopping"]["monitor"] = "loss"
    X_all, y_all = (
        (data.take_x(np.arange(data.n)), data.take_y(np.arange(data.n))) if full else (X_fit, y_fit)
    )
    losses: list[float] = []
    metrics: list[float] = []
    models: list[Any] = []
    nonzero: list[int] = []
    selected: list[list[str]] = []
    norms_list: list[list[float]] = []
    coef: list[list[float]] = []
    coef_names: list[str] = []
    linear = _is_linear(spec)
    # Warm starts (glmnet's) for linear models only. Their problem is convex: started from the
    # previous point's weights a fit reaches the same optimum, sooner. A network's is not: started
    # from the previous, more penalised point it keeps that point's dead ReLU units and shrunken
    # first layer (a group_l1 MLP path warm-started so plateaued, on every fold, at 2-3x the
    # held-out mse of fits from the seeded initialisation), so each of its points is the fit a
    # user gets from engine.fit at that value.
    warm = linear
    previous: Any = None
    for k, value in enumerate(grid):
        clock.check()
        left = clock.remaining()
        # the all-rows path is engine.fit itself (it splits off the validation rows)
        model = engine.fit(
            _with_value(point_spec, param, value),
            X_all,
            y_all,
            feature_names=data.names,
            max_seconds=left,
            warm_start=previous,
        )
        previous = model if warm else None
        extra: dict[str, Any] = {}
        if len(held):
            Z = model.preprocessor.transform(
                data.take_x(held), dtype=model.network.dtype, unknown="ignore"
            )
            target = _held_out_targets(model, data, held)
            scores = np.asarray(model.network.forward(Z, training=False), dtype=np.float64)
            value_loss, _ = make_loss(spec["loss"], spec["loss_params"])(
                scores, target.astype(np.float64) if target.dtype.kind == "f" else target
            )
            losses.append(float(value_loss))
            metrics.append(_metric(scores, target, spec["loss"], data.task))
            extra["loss"] = losses[-1]
            extra["metric"] = metrics[-1]
        if full:
            weights = model.network.weights
            total = sum(int(np.count_nonzero(Wl)) for Wl in weights)
            fitted = model.preprocessor
            assert isinstance(fitted, Preprocessor)  # a path reads tables, never images
            nz, sel, nrm = _point_stats(weights[0], fitted, total)
            nonzero.append(nz)
            selected.append(sel)
            norms_list.append(nrm)
            if linear:
                # (F, K) -> F * K values, output-major: every column's weights for output 0 first
                W1 = np.asarray(weights[0], dtype=np.float64)
                coef.append(W1.T.ravel().tolist())
                if not coef_names:
                    names = fitted.encoded_names
                    coef_names.extend(
                        names
                        if W1.shape[1] == 1
                        else [f"{n}[{o}]" for o in range(W1.shape[1]) for n in names]
                    )
                    result.feature_names = list(fitted.feature_names)
            if keep_models:
                models.append(model)
            extra["nonzero"] = nz
        tick(k, **extra)
    if len(held):
        result.loss, result.metric = losses, metrics
    if full:
        result.nonzero, result.selected, result.norms = nonzero, selected, norms_list
        result.coef = coef if linear else None
        result.coef_names = coef_names if linear else None
        if result.feature_names is None:
            result.feature_names = list(data.names)
        result.models = models if keep_models else None
    result.seconds = time.perf_counter() - started
    return result


def path_fold(
    spec: Mapping[str, Any] | None,
    X: Any,
    y: Any,
    fold_index: int | None,
    *,
    grid: Sequence[float],
    param: str = "regularization.l1",
    folds: int | None = None,
    feature_names: Sequence[str] | None = None,
    callbacks: Iterable[Callback] = (),
    cancel: Callable[[], bool] | None = None,
    max_seconds: float | None = None,
    gram_blocks: Sequence[GramBlock] | None = None,
) -> FoldPath:
    """The path of one training split, for one task of a distributed search.

    Parameters
    ----------
    spec, X, y, feature_names
        As for ``engine.fit``.
    fold_index : int or None
        ``k`` in ``[0, folds)``: train on the other folds of the training rows, score fold ``k``.
        ``None``: the path on all training rows (its per-point statistics; scored on the spec's
        validation split when ``folds`` is None).
    grid : sequence of float
        From :func:`path_grid` (shared by every fold, as glmnet and LassoCV do).
    param, folds
        As for :func:`path`.
    callbacks : iterable of callables
        ``cb(record)`` after each point, ``record = {"fold", "index", "value", "points", "loss"?,
        "metric"?, "nonzero"?}`` (held-out loss and metric when the split scores its points as it
        goes, ``engine.fit`` per value); a True return raises :class:`PathCancelled`.
    cancel : callable, optional
        Checked before each point; True raises :class:`PathCancelled`.
    max_seconds : float, optional
        Wall-time limit; raises ``engine.TrainingTimeout``.
    gram_blocks : sequence of GramBlock, optional
        The ``folds`` blocks of :func:`path_gram_block` (fold order), when it gave them: the
        split's Gram statistics are then their sum less its own fold's block, instead of a
        product over its training rows. The result is the same up to rounding.

    Returns
    -------
    FoldPath
        Plain lists and numbers (picklable, ``to_dict()`` JSON-able).

    Raises
    ------
    ValueError
        ``gram_blocks`` that are not this search's blocks.
    """
    spec = _normalize(spec)
    _check_param(param)
    data = _prepare(spec, X, y, feature_names)
    clock = _Clock(tuple(callbacks), cancel, max_seconds)
    cache = None
    if gram_blocks is not None:
        shared = _shared_encoding(spec, data, param, folds)
        if shared is None or folds is None:
            raise ValueError("gram_blocks given for a search whose splits share no Gram")
        _check_blocks(gram_blocks, _fold_parts(spec, data, folds), shared[1].shape[1])
        cache = _GramCache(*shared, gram_blocks)
    return _run_split(
        spec, data, np.asarray(grid, dtype=np.float64), param, fold_index, folds, clock, cache
    )


def path_gram_block(
    spec: Mapping[str, Any] | None,
    X: Any,
    y: Any,
    fold_index: int,
    *,
    folds: int,
    param: str = "regularization.l1",
    feature_names: Sequence[str] | None = None,
) -> GramBlock | None:
    """Fold ``fold_index``'s :class:`GramBlock`, or None when the splits share no Gram.

    They share one when the search runs the exact path (linear mse, a penalty ``param``) with
    ``folds`` on a numeric matrix without standardization or missing values: every split then
    encodes the rows the same way. With the blocks of folds ``0..folds-1`` (independent tasks)
    each :func:`path_fold` sums ``folds`` blocks of ``N / folds`` rows instead of computing a
    Gram over its own ``(folds - 1) N / folds`` rows, as :func:`path` does in one process.
    """
    spec = _normalize(spec)
    _check_param(param)
    data = _prepare(spec, X, y, feature_names)
    shared = _shared_encoding(spec, data, param, folds)
    if shared is None:
        return None
    parts = _fold_parts(spec, data, folds)
    if not 0 <= fold_index < folds:
        raise SpecError(
            ("search", "fold_index"),
            f"fold_index must be in [0, {folds}), got {fold_index}.",
            "out_of_range",
        )
    Z = shared[1]
    yv = data.target.astype(np.float64)
    return _block(Z, yv, parts[fold_index], _shift(Z, yv, data.train_rows), fold_index, folds)


# --- combining ------------------------------------------------------------------------------------


def _choose(grid: np.ndarray, mean: np.ndarray, se: np.ndarray) -> tuple[int, int]:
    """(index of min, index of 1se) on a descending grid."""
    finite = np.where(np.isfinite(mean), mean, np.inf)
    i_min = int(np.argmin(finite))  # first = largest value on ties
    bound = finite[i_min] + (se[i_min] if np.isfinite(se[i_min]) else 0.0)
    within = np.flatnonzero(finite <= bound)
    return i_min, int(within[0])


def _check_select(select: str) -> None:
    if select not in SELECTIONS:
        raise SpecError(
            ("search", "select"),
            f"search.select must be one of {', '.join(SELECTIONS)}; got {select!r}.",
            "unknown_select",
        )


def combine(
    fold_paths: Sequence[FoldPath],
    *,
    param: str = "regularization.l1",
    select: str = "1se",
    metric_name: str = "r2",
    solver: str = "fit",
) -> PathResult:
    """Merge the paths of one search into a :class:`PathResult` (without the model).

    ``fold_paths`` holds the all-rows path (``fold is None``) and, with cross-validation, one path
    per fold. Without folds the all-rows path's own held-out scores are used (standard error 0).
    """
    _check_select(select)
    full = [fp for fp in fold_paths if fp.fold is None]
    if len(full) != 1:
        raise ValueError("combine needs exactly one all-rows path (fold None)")
    full_path = full[0]
    folded = sorted(
        (fp for fp in fold_paths if fp.fold is not None),
        key=lambda fp: -1 if fp.fold is None else fp.fold,
    )
    grid = np.asarray(full_path.grid)
    scored = folded or [full_path]
    if any(fp.loss is None for fp in scored):
        raise ValueError("a path to score has no held-out rows")
    L = np.array([fp.loss for fp in scored])  # (K, P)
    Mt = np.array([fp.metric for fp in scored])
    K = L.shape[0]

    def se(a: np.ndarray) -> np.ndarray:
        return a.std(axis=0, ddof=1) / math.sqrt(K) if K > 1 else np.zeros(a.shape[1])

    mean, loss_se = L.mean(axis=0), se(L)
    i_min, i_1se = _choose(grid, mean, loss_se)
    points = []
    for k, value in enumerate(grid):
        point = {
            "value": float(value),
            "cv_loss": float(mean[k]),
            "cv_loss_se": float(loss_se[k]),
            "cv_metric": float(Mt[:, k].mean()),
            "cv_metric_se": float(se(Mt)[k]),
            "nonzero": None if full_path.nonzero is None else full_path.nonzero[k],
            "selected_features": None if full_path.selected is None else full_path.selected[k],
            "feature_norms": None if full_path.norms is None else full_path.norms[k],
        }
        if full_path.coef:
            point["coef"] = full_path.coef[k]
        if full_path.intercept:
            point["intercept"] = full_path.intercept[k]
        points.append(point)
    chosen = {"min": float(grid[i_min]), "1se": float(grid[i_1se]), "used": select}
    return PathResult(
        param=param,
        grid=[float(v) for v in grid],
        points=points,
        chosen=chosen,
        feature_names=full_path.feature_names or [],
        coef_names=full_path.coef_names,
        folds=len(folded) or None,
        metric_name=metric_name,
        solver=solver,
        fold_paths=list(fold_paths),
        seconds=sum(fp.seconds for fp in fold_paths),
    )


# --- the front door -------------------------------------------------------------------------------


def path(
    spec: Mapping[str, Any] | None,
    X: Any,
    y: Any,
    *,
    param: str = "regularization.l1",
    values: Sequence[float] | None = None,
    num: int = 30,
    min_ratio: float = 1e-3,
    folds: int | None = None,
    select: str = "1se",
    feature_names: Sequence[str] | None = None,
    callbacks: Iterable[Callback] = (),
    cancel: Callable[[], bool] | None = None,
    max_seconds: float | None = None,
    fit_final: bool = True,
) -> PathResult:
    """Regularization path of ``param`` with cross-validation, and the model at the chosen value.

    Parameters
    ----------
    spec, X, y, feature_names
        As for ``engine.fit`` (a ``search`` key in ``spec`` is ignored: the arguments below are
        the search). ``spec["shuffle"]`` and ``spec["seed"]`` also decide the folds.
    param : str
        One of :data:`PARAMS`.
    values : sequence of float, optional
        The grid (sorted descending); default ``num`` points from ``lambda_max`` down to
        ``lambda_max * min_ratio`` (see the module docstring).
    folds : int, optional
        K-fold cross-validation over the training rows; default: score on the validation split.
    select : {"1se", "min"}
    callbacks, cancel, max_seconds
        As for :func:`path_fold` (``max_seconds`` bounds the whole search with the final fit).
    fit_final : bool
        Train the final model (``result.model``).

    Returns
    -------
    PathResult

    Raises
    ------
    SpecError
        Bad search settings, or neither ``folds`` nor a validation split (``requires_validation``).
    InputError, TrainingTimeout, PathCancelled
    """
    started = time.perf_counter()
    spec = _normalize(spec)
    _check_param(param)
    _check_select(select)
    data = _prepare(spec, X, y, feature_names)
    if folds is None and len(data.val_rows) == 0:
        raise SpecError(
            ("search", "folds"),
            "A path needs held-out rows: set search.folds or validation_split > 0.",
            "requires_validation",
        )
    if folds is not None:
        fold_rows(len(data.train_rows), folds, shuffle=False, seed=0)  # validates folds
    clock = _Clock(tuple(callbacks), cancel, max_seconds)
    exact = _exact(spec, param)
    cache = None
    shared = _shared_encoding(spec, data, param, folds)
    if shared is not None and folds is not None:
        pre, Z = shared
        yv = data.target.astype(np.float64)
        shift = _shift(Z, yv, data.train_rows)
        parts = _fold_parts(spec, data, folds)
        cache = _GramCache(pre, Z, [_block(Z, yv, p, shift, k, folds) for k, p in enumerate(parts)])
    grid = _make_grid(
        spec,
        data,
        param,
        values,
        num,
        min_ratio,
        None if cache is None else _take_rows(cache.Z, data.train_rows),
    )
    paths = []
    for k in range(folds or 0):
        paths.append(_run_split(spec, data, grid, param, k, folds, clock, cache))
    keep = fit_final and not exact
    paths.append(_run_split(spec, data, grid, param, None, folds, clock, cache, keep_models=keep))
    metric_name = "r2" if data.task == "regression" else "accuracy"
    result = combine(
        paths,
        param=param,
        select=select,
        metric_name=metric_name,
        solver="gram" if exact else "fit",
    )
    if fit_final:
        full_path = paths[-1]
        if full_path.models:
            result.model = full_path.models[result.chosen_index]
            full_path.models = None
        else:
            import engine

            clock.check()
            result.model = engine.fit(
                final_spec(spec, param, result.chosen_value),
                X,
                y,
                feature_names=feature_names,
                max_seconds=clock.remaining(),
            )
    result.seconds = time.perf_counter() - started
    return result
