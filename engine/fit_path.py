"""The path of any model by one ``engine.fit`` per grid value (networks, other losses, dropout).

For each value ``v_p`` of the descending grid the split's model is ``engine.fit`` of the spec with
``param = v_p``: on all ``N`` rows for the all-rows split (``engine.fit`` splits off the
validation rows itself, so the point is exactly a user's fit at that value), on the fold's
training rows for a fold (``validation_split`` 0, early stopping on the training loss). A linear
model starts from the previous value's model (convex: the same optimum, sooner, glmnet's warm
starts); a network from its seeded initialisation, since one started from the more penalised
previous point keeps that point's dead ReLU units and shrunken first layer.

Each point is scored on the split's held-out rows ``x (n_val, D)``: the mean data loss
``(1/n_val) sum_n loss(f(x_n), y_n)`` without the penalty, and R^2 or accuracy. The all-rows split
also records per point the non-zero weights of all layers, the raw features whose group of
``W_1 (F, M)`` is non-zero with ``||W_1[group_j]||_2``, and for a linear model the coefficients
``W_1 (F, K)``, output-major.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.cv import FoldPath, group_stats, held_out_metric, held_out_targets
from engine.losses import make_loss
from engine.model import fit
from engine.path_setup import Clock, PathData, is_linear, with_value
from engine.preprocess import Preprocessor

__all__ = ["fit_split"]


def _point_stats(
    W1: np.ndarray, pre: Preprocessor, total_nonzero: int
) -> tuple[int, list[str], list[float]]:
    """(non-zero weights, selected raw features, ``||W1[group_j]||_2`` per raw feature)."""
    sq = np.einsum("ij,ij->i", W1, W1)[:, None]
    norms, counts = group_stats(sq, np.count_nonzero(W1, axis=1)[:, None], pre)
    names = pre.feature_names
    selected = [names[j] for j in np.flatnonzero(counts[:, 0])]
    return total_nonzero, selected, norms[:, 0].tolist()


def fit_split(
    result: FoldPath,
    spec: dict,
    data: PathData,
    grid: np.ndarray,
    param: str,
    fit_rows: np.ndarray,
    held: np.ndarray,
    clock: Clock,
    tick: Callable[..., None],
    keep_models: bool = False,
) -> None:
    """Fill ``result`` with the path of its split by ``engine.fit`` per value: trained on
    ``fit_rows``, scored on ``held``; ``tick(k, **scores)`` after point ``k``. ``keep_models``:
    keep the all-rows split's models (``result.models``)."""
    full = result.fold is None
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
    linear = is_linear(spec)
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
        model = fit(
            with_value(point_spec, param, value),
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
            target = held_out_targets(model, data, held)
            scores = np.asarray(model.network.forward(Z, training=False), dtype=np.float64)
            value_loss, _ = make_loss(spec["loss"], spec["loss_params"])(
                scores, target.astype(np.float64) if target.dtype.kind == "f" else target
            )
            losses.append(float(value_loss))
            metrics.append(held_out_metric(scores, target, spec["loss"], data.task))
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
