"""Cross-validation of a regularization path: folds, held-out scores, the ``min`` / ``1se`` choice.

Folds. ``folds = K`` splits the ``n`` training rows (``PathData.train_rows``: the rows
``engine.fit`` trains on) into ``K`` folds of ``n // K`` rows, the first ``n % K`` one row longer:
contiguous in row order when ``spec["shuffle"]`` is false (scikit-learn's ``KFold(K)``), cut from
``default_rng(spec["seed"]).permutation(n)`` otherwise. Fold ``k`` trains on the other folds and
scores its own rows; without ``folds`` the spec's validation split scores each point.

Scores. ``L (K, P)``: ``L[k, p]`` is the mean data loss of grid point ``p`` on the held-out rows of
split ``k`` (no penalty; the mean squared error for mse, as ``LassoCV``'s ``mse_path_``); the
metric is R^2 (regression) or accuracy (classification). Per point, the CV loss is
``mean_p = (1/K) sum_k L[k, p]`` with the standard error ``se_p = std_k(L[k, p], ddof=1) / sqrt(K)``
(0 for a single split).

Selection on the descending grid ``v_0 > ... > v_{P-1}``. ``min``: the value with the lowest
``mean_p`` (the largest on ties); ``1se``: the largest value with ``mean_p <= mean_m + se_m``, ``m``
the minimum's index (glmnet's ``lambda.1se``).

Results. :class:`FoldPath` is the path of one split (plain lists and numbers: picklable);
:func:`combine` merges the splits of one search into a :class:`PathResult`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import InputError, SpecError
from engine.path_setup import PathData
from engine.preprocess import Preprocessor
from engine.spec_search import DEFAULT_PARAM, DEFAULT_SELECT, SEARCH_SELECT

__all__ = [
    "SELECTIONS",
    "FoldPath",
    "PathResult",
    "check_select",
    "combine",
    "fold_parts",
    "fold_rows",
    "group_stats",
    "held_out_metric",
    "held_out_targets",
    "split_rows",
]

SELECTIONS: tuple[str, ...] = SEARCH_SELECT


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
    # In-process only (not in to_dict): the fitted models of the all-rows path, when kept, and
    # the exact all-rows path's fitted encoder (what its coefficients apply to).
    models: list[Any] | None = field(default=None, repr=False)
    preprocessor: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in self.__dataclass_fields__
            if k not in ("models", "preprocessor")
        }


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


# --- folds ----------------------------------------------------------------------------------------


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


def fold_parts(spec: dict, data: PathData, folds: int) -> list[np.ndarray]:
    """Each fold's held-out rows (row numbers of the input)."""
    parts = fold_rows(len(data.train_rows), folds, shuffle=spec["shuffle"], seed=spec["seed"])
    return [data.train_rows[p] for p in parts]


def split_rows(
    data: PathData, fold_index: int | None, folds: int | None, spec: dict
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


# --- scoring --------------------------------------------------------------------------------------


def held_out_targets(model: Any, data: PathData, rows: np.ndarray) -> np.ndarray:
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


def held_out_metric(scores: np.ndarray, target: np.ndarray, loss: str, task: str) -> float:
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


# --- per-point statistics -------------------------------------------------------------------------


def group_stats(sq: np.ndarray, nz: np.ndarray, pre: Preprocessor) -> tuple[np.ndarray, np.ndarray]:
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


# --- combining ------------------------------------------------------------------------------------


def _choose(grid: np.ndarray, mean: np.ndarray, se: np.ndarray) -> tuple[int, int]:
    """(index of min, index of 1se) on a descending grid."""
    finite = np.where(np.isfinite(mean), mean, np.inf)
    i_min = int(np.argmin(finite))  # first = largest value on ties
    bound = finite[i_min] + (se[i_min] if np.isfinite(se[i_min]) else 0.0)
    within = np.flatnonzero(finite <= bound)
    return i_min, int(within[0])


def check_select(select: str) -> None:
    """``SpecError`` ``unknown_select`` unless ``select`` is one of :data:`SELECTIONS`."""
    if select not in SELECTIONS:
        raise SpecError(
            ("search", "select"),
            f"search.select must be one of {', '.join(SELECTIONS)}; got {select!r}.",
            "unknown_select",
        )


def combine(
    fold_paths: Sequence[FoldPath],
    *,
    param: str = DEFAULT_PARAM,
    select: str = DEFAULT_SELECT,
    metric_name: str = "r2",
    solver: str = "fit",
) -> PathResult:
    """Merge the paths of one search into a :class:`PathResult` (without the model).

    ``fold_paths`` holds the all-rows path (``fold is None``) and, with cross-validation, one path
    per fold. Without folds the all-rows path's own held-out scores are used (standard error 0).
    """
    check_select(select)
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
