"""The Gram statistics of an exact path's splits, and the exact path of one split, scored.

A split of an exact path (``engine.lasso_path``) trains on rows ``Z (n, F)``, ``y (n,)`` through
their centred ``G = Zc^T Zc / n (F, F)`` and ``c = Zc^T yc / n (F,)``. With ``K`` folds the
training rows of fold ``k`` are the other folds, so its statistics are sums of per-fold blocks
(:class:`GramBlock`). Each block shifts its fold's rows by the means ``mu``, ``my`` of all
training rows, ``Zp = Z[fold] - mu`` and ``yp = y[fold] - my``, and holds ``G_k = Zp^T Zp``,
``sz_k = Zp.sum(0)``, ``cy_k = Zp^T yp`` and ``sy_k = yp.sum()``. For a split made of blocks ``S``
(``n`` rows, ``m = sum sz_k / n``, ``m_y = sum sy_k / n``)::

    G = (sum_S G_k - n m m^T) / n,    c = (sum_S cy_k - n m m_y) / n

and the means are ``mu + m`` and ``my + m_y`` (:class:`GramCache`): ``K`` products of ``N / K``
rows instead of one of ``(K - 1) N / K`` rows per fold plus one of ``N`` rows for the all-rows
path. The splits share blocks when every split encodes the rows the same way
(:func:`shared_encoding`: a numeric matrix, no standardization, no missing value).

:func:`exact_split` runs the path of one split and scores it: the held-out mean squared error and
R^2 per point, and on the all-rows split the per-point statistics (non-zero weights, selected
features, group norms, coefficients and intercepts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.cv import FoldPath, group_stats, held_out_metric
from engine.lasso_path import GramStats, gram_path
from engine.path_setup import Clock, PathData, is_exact
from engine.preprocess import Preprocessor

__all__ = [
    "GramBlock",
    "GramCache",
    "block_shift",
    "check_blocks",
    "exact_split",
    "gram_stats",
    "make_block",
    "shared_encoding",
    "take_rows",
]


def gram_stats(Z: np.ndarray, yv: np.ndarray) -> GramStats:
    n = Z.shape[0]
    mz = Z.mean(axis=0)
    my = float(yv.mean())
    Zc = Z - mz
    G = Zc.T @ Zc
    G /= n
    c = Zc.T @ (yv - my) / n
    return GramStats(G, c, mz, my, n)


@dataclass
class GramBlock:
    """One fold's share of the Gram statistics that every split of an exact path is built from.

    Of the fold's rows ``Zp (n, F)`` and targets ``yp``, both centred by the means ``mu``, ``my``
    of all training rows (the same shift in every block, so that sums and differences of blocks
    lose no precision to large column offsets): ``G = Zp^T Zp``, ``sz = Zp.sum(0)``,
    ``cy = Zp^T yp``, ``sy = yp.sum()``. The training rows of fold ``k`` are the other folds, so
    their statistics are the sum of all ``folds`` blocks minus block ``k``. Plain arrays and
    numbers: picklable, the output of one task of a distributed search (``engine.path_gram_block``).
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


def shared_encoding(
    spec: dict, data: PathData, param: str, folds: int | None
) -> tuple[Preprocessor, np.ndarray] | None:
    """``(pre, Z)`` when one encoding serves every split of the exact path, else None.

    Without standardization a numeric matrix encodes to itself in every fold, unless a missing
    value is filled with its fold's mean: then the splits can share Gram blocks.
    """
    if not (is_exact(spec, param) and folds is not None and not spec["standardize"]):
        return None
    if data.R is None or np.isnan(take_rows(data.R, data.train_rows)).any():
        return None
    return data.encode(data.train_rows, False)


def block_shift(Z: np.ndarray, yv: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float]:
    """The means of ``Z`` and ``yv`` over ``rows``: the centring every block shares."""
    return take_rows(Z, rows).mean(axis=0), float(take_rows(yv, rows).mean())


def make_block(
    Z: np.ndarray,
    yv: np.ndarray,
    rows: np.ndarray,
    shift: tuple[np.ndarray, float],
    fold: int,
    folds: int,
) -> GramBlock:
    mu, my = shift
    Zp = take_rows(Z, rows) - mu  # a new array: ``Zp.T @ Zp`` is one symmetric product (syrk)
    yp = take_rows(yv, rows) - my
    return GramBlock(
        fold, folds, len(rows), Zp.T @ Zp, Zp.sum(axis=0), Zp.T @ yp, float(yp.sum()), mu, my
    )


class GramCache:
    """The Gram statistics of every split from the folds' blocks: ``K`` products of ``N/K`` rows
    instead of one of ``(K-1) N / K`` rows per fold plus one of ``N`` rows for the all-rows path.

    ``Z`` is the encoding of every row, the same in every split (see ``shared_encoding``).
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

    def without(self, fold: int | None) -> GramStats:
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
        return GramStats(G, c, m + self.mu, my + self.my, n)


def check_blocks(blocks: Sequence[GramBlock], parts: list[np.ndarray], F: int) -> None:
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


def take_rows(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``a[rows]``, as a view when ``rows`` is a contiguous run."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
        return a[int(rows[0]) : int(rows[-1]) + 1]
    return a[rows]


def exact_split(
    result: FoldPath,
    spec: dict,
    data: PathData,
    grid: np.ndarray,
    param: str,
    fit_rows: np.ndarray,
    held: np.ndarray,
    clock: Clock,
    tick: Callable[[int], None],
    cache: GramCache | None,
) -> None:
    """Fill ``result`` with the exact path of its split: trained on ``fit_rows``, scored on
    ``held``; ``tick(k)`` after point ``k``. ``cache``: the statistics from the folds' blocks."""
    fold_index = result.fold
    full = fold_index is None
    yv = data.target.astype(np.float64)
    if cache is not None:
        pre, Z = cache.pre, cache.Z
        stats = cache.without(fold_index)
    else:
        pre, Z = data.encode(fit_rows, spec["standardize"])
        stats = gram_stats(Z[fit_rows], yv[fit_rows])
    clock.check()
    W, b = gram_path(stats, grid, spec, param, tick)
    if len(held):
        pred = take_rows(Z, held) @ W + b  # (n_val, P)
        resid = yv[held][:, None] - pred
        result.loss = [float(v) for v in np.mean(resid * resid, axis=0)]
        result.metric = [
            held_out_metric(pred[:, [k]], yv[held], "mse", "regression") for k in range(len(grid))
        ]
    if full:
        result.preprocessor = pre
        result.feature_names = list(pre.feature_names)
        result.coef_names = list(pre.encoded_names)
        # engine.fit_path's per-point statistics for every point at once: W1 of point k is the
        # column W[:, k]
        is_nz = W != 0
        norms, counts = group_stats(W * W, is_nz.astype(np.intp), pre)
        names = pre.feature_names
        result.nonzero = np.count_nonzero(is_nz, axis=0).tolist()
        result.selected = [
            [names[j] for j in np.flatnonzero(counts[:, k])] for k in range(len(grid))
        ]
        result.norms = norms.T.tolist()
        result.coef = W.T.tolist()
        result.intercept = b.tolist()
