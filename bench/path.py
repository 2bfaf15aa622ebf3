"""Regularization path with 5-fold CV: ``engine.path`` against scikit-learn's ``LassoCV``.

Problem (``bench.lasso.make_problem``): ``X (5000, 1000)`` standard normal, 20 true non-zero
coefficients, noise sd 1, an intercept. Both sides fit a 100-point Lasso path from ``alpha_max``
down to ``alpha_max * 1e-3`` on each of 5 contiguous folds (``KFold(5)``), pick the value with the
lowest mean held-out mse, and refit on all rows at it. Timed in the same run, interleaved:

- scikit-learn ``LassoCV(alphas=100, cv=KFold(5))`` (coordinate descent on the Gram matrix,
  default ``tol=1e-4``, float64);
- ``engine.path(spec, X, y, num=100, min_ratio=1e-3, folds=5, select="min")`` with a linear mse
  spec (``standardize`` false, float64): the exact Gram active-set path per fold plus the path on
  all rows (per-point statistics) plus ``engine.fit`` (FISTA) at the chosen value, started from
  the all-rows path's solution there.

Scaling: our ``l1 = 2 * alpha`` (``(1/N)||r||^2`` against scikit-learn's ``(1/(2N))||r||^2``), so
both grids are the same values up to that factor and the choices are compared by grid index.
scikit-learn's coordinate descent stops at a duality gap of ``tol``; our path is exact, so its
choice is also compared with ``LassoCV(tol=1e-8)`` (untimed).

Run: ``python -m bench.path [--quick] [--threads N] [--repeats N] [--clock cpu]``; prints the
ratio (goal: ``engine.path`` time <= 1.0x ``LassoCV``'s, same chosen alpha).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from bench.common import SectionResult, best_of, now, set_clock
from bench.lasso import make_problem

GOAL = 1.0
NUM = 100
FOLDS = 5
MIN_RATIO = 1e-3


def engine_spec() -> dict[str, Any]:
    return {
        "task": "regression",
        "model": {"hidden_layers": []},
        "loss": "mse",
        "optimizer": {"name": "fista"},
        "standardize": False,
        "dtype": "float64",
        "shuffle": False,
    }


def lasso_cv(tol: float = 1e-4) -> Any:
    from sklearn.linear_model import LassoCV
    from sklearn.model_selection import KFold

    try:
        return LassoCV(alphas=NUM, eps=MIN_RATIO, cv=KFold(FOLDS), tol=tol)
    except TypeError:  # scikit-learn < 1.7 counts alphas with n_alphas
        return LassoCV(n_alphas=NUM, eps=MIN_RATIO, cv=KFold(FOLDS), tol=tol)


def run(res: SectionResult, *, quick: bool, threads: int, repeats: int) -> None:
    from threadpoolctl import threadpool_limits

    import engine

    n, d, k = (500, 100, 10) if quick else (5_000, 1_000, 20)
    X, y, _ = make_problem(n, d, k)
    res.note(
        f"X ({n}, {d}) float64, {k} true non-zeros; {NUM}-point path, {FOLDS}-fold CV, "
        f"min_ratio {MIN_RATIO:g}; LassoCV(alphas={NUM}, cv=KFold({FOLDS})) vs engine.path "
        f"(folds={FOLDS}, select='min', incl. the all-rows path and the final engine.fit)"
    )
    sk_times, ours_times = [], []
    sk = result = None
    with threadpool_limits(limits=threads):
        for _ in range(repeats):
            t0 = now()
            sk = lasso_cv().fit(X, y)
            sk_times.append(now() - t0)
            t0 = now()
            result = engine.path(
                engine_spec(), X, y, num=NUM, min_ratio=MIN_RATIO, folds=FOLDS, select="min"
            )
            ours_times.append(now() - t0)
        exact = lasso_cv(tol=1e-8).fit(X, y)

    grid = np.array(result.grid)
    sk_alphas = np.asarray(sk.alphas_)
    res.info(
        "grid agreement (max |our l1 / (2 alpha) - 1|)",
        float(np.abs(grid / (2 * sk_alphas) - 1).max()),
        "",
    )
    ours_index = result.chosen_index
    sk_index = int(np.argmin(np.abs(sk_alphas - sk.alpha_)))
    exact_index = int(np.argmin(np.abs(np.asarray(exact.alphas_) - exact.alpha_)))
    same = ours_index == sk_index
    res.info(
        "chosen alpha (ours = l1 / 2)",
        result.chosen["min"] / 2,
        "",
        note=f"grid index ours {ours_index}, LassoCV {sk_index} (alpha {sk.alpha_:.6g}), "
        f"LassoCV tol=1e-8 {exact_index}; 1se choice {result.chosen['1se'] / 2:.6g}; "
        f"non-zeros at the choice {result.points[ours_index]['nonzero']}",
    )
    res.info("engine.path seconds per run (best)", best_of(ours_times), "s")
    res.info("LassoCV seconds per run (best)", best_of(sk_times), "s")
    res.check(
        "100-point 5-fold Lasso path with the final fit",
        best_of(ours_times),
        "sklearn LassoCV",
        best_of(sk_times),
        "s",
        "<=",
        GOAL,
        note=("same chosen alpha" if same else "chosen alpha differs from LassoCV's")
        + (
            ""
            if exact_index == ours_index
            else f"; differs from LassoCV tol=1e-8 too (index {exact_index})"
        ),
    )


def main(argv: list[str] | None = None) -> int:
    import os

    p = argparse.ArgumentParser(prog="python -m bench.path", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = p.parse_args(argv)
    set_clock(args.clock)
    res = SectionResult("path", "Regularization path with cross-validation")
    run(res, quick=args.quick, threads=args.threads, repeats=args.repeats)
    check = res.checks[-1]
    print(f"ratio engine.path / LassoCV = {check.ratio:.2f}x (goal <= {GOAL:g}x) {check.verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
