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

The steps, one module each:

1. the grid: ``num`` values log-spaced from ``lambda_max`` (``engine.lambda_grid``);
2. the training splits: ``K`` folds of the training rows, or the spec's validation split
   (``engine.cv``), and the path on all training rows for the per-point statistics;
3. per split, one model per value: the exact path of a linear mse model, from the split's Gram
   statistics (``engine.gram``) by an active-set solver (``engine.lasso_path``), or an
   ``engine.fit`` per value for every other model (``engine.fit_path``); which one applies, and
   the spec of each point: ``engine.path_setup``;
4. the held-out losses averaged over folds with their standard errors, the ``min`` or ``1se``
   choice (``engine.cv``), and the final model, ``engine.fit`` at the chosen value on all
   training rows (:func:`final_model`); after an exact path it starts from the all-rows path's
   solution at that value, so FISTA only confirms the optimum.

This module runs them. For a distributed run: :func:`path_grid` once, :func:`path_fold` for
``fold_index`` in ``None, 0, ..., K-1`` as independent tasks (pure, picklable inputs and outputs),
``engine.combine``, then :func:`final_model` at ``result.chosen_value`` given the all-rows split.
When the splits can share their Gram statistics (the exact path on a numeric matrix without
standardization or missing values), :func:`path_gram_block` for ``fold_index`` in
``0, ..., K-1`` first, as independent tasks too, and every :func:`path_fold` given all ``K``
blocks: each split then sums blocks instead of computing a Gram over its rows, as :func:`path`
does in one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from engine.cv import (
    FoldPath,
    PathResult,
    check_select,
    combine,
    fold_parts,
    fold_rows,
    split_rows,
)
from engine.errors import SpecError
from engine.fit_path import fit_split
from engine.gram import (
    GramBlock,
    GramCache,
    block_shift,
    check_blocks,
    exact_split,
    make_block,
    shared_encoding,
    take_rows,
)
from engine.lambda_grid import make_grid
from engine.model import Model, fit
from engine.network import Network
from engine.path_setup import (
    Callback,
    Clock,
    PathData,
    base_spec,
    check_param,
    final_spec,
    is_exact,
    prepare_data,
)
from engine.spec_parse import parse
from engine.spec_search import (
    DEFAULT_MIN_RATIO,
    DEFAULT_NUM,
    DEFAULT_PARAM,
    DEFAULT_SELECT,
    check_held_out,
)

__all__ = ["final_model", "path", "path_fold", "path_gram_block", "path_grid"]


# --- one split ------------------------------------------------------------------------------------


def _run_split(
    spec: dict,
    data: PathData,
    grid: np.ndarray,
    param: str,
    fold_index: int | None,
    folds: int | None,
    clock: Clock,
    cache: GramCache | None = None,
    keep_models: bool = False,
) -> FoldPath:
    """The path of one split: fold ``fold_index`` held out, or (None) all training rows."""
    started = time.perf_counter()
    fit_rows, held = split_rows(data, fold_index, folds, spec)
    result = FoldPath(
        fold=fold_index, grid=[float(v) for v in grid], n_train=len(fit_rows), n_val=len(held)
    )

    def tick(k: int, **extra: Any) -> None:
        clock.report(
            {"fold": fold_index, "index": k, "value": float(grid[k]), "points": len(grid), **extra}
        )
        clock.check()

    if is_exact(spec, param):
        exact_split(result, spec, data, grid, param, fit_rows, held, clock, tick, cache)
    else:
        fit_split(result, spec, data, grid, param, fit_rows, held, clock, tick, keep_models)
    result.seconds = time.perf_counter() - started
    return result


def final_model(
    spec: Mapping[str, Any] | None,
    X: Any,
    y: Any,
    *,
    param: str,
    value: float,
    full: FoldPath | None = None,
    feature_names: Sequence[str] | None = None,
    callbacks: Iterable[Callable[[dict[str, Any]], bool | None]] = (),
    max_seconds: float | None = None,
) -> Model:
    """A path's final model: ``engine.fit(final_spec(spec, param, value), X, y)``.

    ``full`` is the path's all-rows split (``path_fold`` with ``fold_index`` None). After an exact
    path it holds the optimum at every grid value, and the fit starts from the one at ``value``:
    FISTA stops at its first duality-gap check instead of solving the problem again from
    ``W = 0``, so the model is that solution.
    """
    final = final_spec(spec, param, value)
    return fit(
        final,
        X,
        y,
        feature_names=feature_names,
        callbacks=callbacks,
        max_seconds=max_seconds,
        warm_start=_exact_start(final, param, value, full, X, y, feature_names),
    )


def _exact_start(
    final: dict,
    param: str,
    value: float,
    full: FoldPath | None,
    X: Any,
    y: Any,
    feature_names: Sequence[str] | None,
) -> Model | None:
    """The exact all-rows path's solution at ``value`` as a model of the final spec; None unless
    ``full`` is an exact path that holds that value."""
    if full is None or full.coef is None or full.intercept is None or value not in full.grid:
        return None
    if not is_exact(final, param):
        return None
    index = full.grid.index(value)
    pre = full.preprocessor
    if pre is None:  # a split computed elsewhere (a task of a distributed search): refit it
        data = prepare_data(final, X, y, feature_names)
        pre, _ = data.encode(data.train_rows, final["standardize"])
    typed = parse(final)
    network = Network.build(
        typed,
        pre.n_features_out,
        1,
        rng=np.random.default_rng(typed.seed),
        output_bias=full.intercept[index],
    )
    network.dense_layers[0].params["W"][:, 0] = full.coef[index]
    return Model(
        spec=typed,
        network=network,
        preprocessor=pre,
        classes=None,
        history=[],
        metrics={},
        stopped="completed",
        n_inputs=pre.n_features_out,
        n_outputs=1,
    )


# --- the tasks of a distributed search ------------------------------------------------------------


def path_grid(
    spec: Mapping[str, Any] | None,
    X: Any,
    y: Any,
    *,
    param: str = DEFAULT_PARAM,
    values: Sequence[float] | None = None,
    num: int = DEFAULT_NUM,
    min_ratio: float = DEFAULT_MIN_RATIO,
    feature_names: Sequence[str] | None = None,
) -> list[float]:
    """The descending grid of ``param``: ``values`` sorted, or ``num`` points from lambda_max."""
    spec = base_spec(spec)
    check_param(param)
    data = prepare_data(spec, X, y, feature_names)
    return [float(v) for v in make_grid(spec, data, param, values, num, min_ratio)]


def path_gram_block(
    spec: Mapping[str, Any] | None,
    X: Any,
    y: Any,
    fold_index: int,
    *,
    folds: int,
    param: str = DEFAULT_PARAM,
    feature_names: Sequence[str] | None = None,
) -> GramBlock | None:
    """Fold ``fold_index``'s ``engine.gram.GramBlock``, or None when the splits share no Gram.

    They share one when the search runs the exact path (linear mse, a penalty ``param``) with
    ``folds`` on a numeric matrix without standardization or missing values: every split then
    encodes the rows the same way. With the blocks of folds ``0..folds-1`` (independent tasks)
    each :func:`path_fold` sums ``folds`` blocks of ``N / folds`` rows instead of computing a
    Gram over its own ``(folds - 1) N / folds`` rows, as :func:`path` does in one process.
    """
    spec = base_spec(spec)
    check_param(param)
    data = prepare_data(spec, X, y, feature_names)
    shared = shared_encoding(spec, data, param, folds)
    if shared is None:
        return None
    parts = fold_parts(spec, data, folds)
    if not 0 <= fold_index < folds:
        raise SpecError(
            ("search", "fold_index"),
            f"fold_index must be in [0, {folds}), got {fold_index}.",
            "out_of_range",
        )
    Z = shared[1]
    yv = data.target.astype(np.float64)
    return make_block(
        Z, yv, parts[fold_index], block_shift(Z, yv, data.train_rows), fold_index, folds
    )


def path_fold(
    spec: Mapping[str, Any] | None,
    X: Any,
    y: Any,
    fold_index: int | None,
    *,
    grid: Sequence[float],
    param: str = DEFAULT_PARAM,
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
        goes, ``engine.fit`` per value); a True return raises ``engine.PathCancelled``.
    cancel : callable, optional
        Checked before each point; True raises ``engine.PathCancelled``.
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
    spec = base_spec(spec)
    check_param(param)
    data = prepare_data(spec, X, y, feature_names)
    clock = Clock(tuple(callbacks), cancel, max_seconds)
    cache = None
    if gram_blocks is not None:
        shared = shared_encoding(spec, data, param, folds)
        if shared is None or folds is None:
            raise ValueError("gram_blocks given for a search whose splits share no Gram")
        check_blocks(gram_blocks, fold_parts(spec, data, folds), shared[1].shape[1])
        cache = GramCache(*shared, gram_blocks)
    return _run_split(
        spec, data, np.asarray(grid, dtype=np.float64), param, fold_index, folds, clock, cache
    )


# --- the front door -------------------------------------------------------------------------------


def path(
    spec: Mapping[str, Any] | None,
    X: Any,
    y: Any,
    *,
    param: str = DEFAULT_PARAM,
    values: Sequence[float] | None = None,
    num: int = DEFAULT_NUM,
    min_ratio: float = DEFAULT_MIN_RATIO,
    folds: int | None = None,
    select: str = DEFAULT_SELECT,
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
        One of ``engine.path_setup.PARAMS``.
    values : sequence of float, optional
        The grid (sorted descending); default ``num`` points from ``lambda_max`` down to
        ``lambda_max * min_ratio`` (see ``engine.lambda_grid``).
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
    spec = base_spec(spec)
    check_param(param)
    check_select(select)
    check_held_out(folds, spec["validation_split"])
    data = prepare_data(spec, X, y, feature_names)
    if folds is not None:
        fold_rows(len(data.train_rows), folds, shuffle=False, seed=0)  # validates folds
    clock = Clock(tuple(callbacks), cancel, max_seconds)
    exact = is_exact(spec, param)
    cache = None
    shared = shared_encoding(spec, data, param, folds)
    if shared is not None and folds is not None:
        pre, Z = shared
        yv = data.target.astype(np.float64)
        shift = block_shift(Z, yv, data.train_rows)
        parts = fold_parts(spec, data, folds)
        cache = GramCache(
            pre, Z, [make_block(Z, yv, p, shift, k, folds) for k, p in enumerate(parts)]
        )
    grid = make_grid(
        spec,
        data,
        param,
        values,
        num,
        min_ratio,
        None if cache is None else take_rows(cache.Z, data.train_rows),
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
            clock.check()
            result.model = final_model(
                spec,
                X,
                y,
                param=param,
                value=result.chosen_value,
                full=full_path,
                feature_names=feature_names,
                max_seconds=clock.remaining(),
            )
    result.seconds = time.perf_counter() - started
    return result
