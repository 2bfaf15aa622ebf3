"""Predict speed of a pruned model (engine.prune) against the model it came from.

    python -m bench.prune [--rows 10000] [--repeats 7]

Model: 500 raw numeric features, hidden layers 64-32 relu, softmax cross-entropy, float32, trained
for 2 epochs; then the first-layer rows of 480 features are set to exactly zero (what group L1
leaves behind; how the zeros arose does not change the cost of a prediction), and 16 of the 64
first-layer units get all-zero incoming weights. ``prune`` keeps 20 inputs and 48 + 32 units.

Timed (best of ``--repeats``, interleaved): ``predict_proba`` of a ``(rows, 500)`` matrix vs the
pruned model on the ``(rows, 20)`` matrix of its features; a single row given as a ``{name: value}``
mapping (the service's request shape) with all 500 vs 20 keys; and, when onnxruntime is installed,
the exported graphs (``to_onnx(pruned=False)`` with 500 inputs vs the default pruned export with
20). Printed as times and ratios; the pruned predictions are checked equal to 1e-6.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

import engine
from engine.prune import prune

D, KEPT, HIDDEN = 500, 20, [64, 32]


def _best(fns: dict[str, Callable[[], object]], repeats: int, inner: int) -> dict[str, float]:
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / inner)
    return best


def build(seed: int = 0) -> tuple[engine.Model, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((2000, D))
    y = (X[:, :KEPT] @ rng.standard_normal(KEPT) > 0).astype(int)
    spec = {
        "model": {"hidden_layers": HIDDEN},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "epochs": 2,
    }
    model = engine.fit(spec, X, y)
    weights = model.network.get_weights()
    W0 = weights["dense0.W"].copy()
    W0[KEPT:] = 0.0
    W0[:, :16] = 0.0
    weights["dense0.W"] = W0
    model.network.set_weights(weights)
    return model, X


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    model, _ = build()
    start = time.perf_counter()
    pruned = prune(model)
    prune_seconds = time.perf_counter() - start
    print(
        f"prune: {len(model.feature_names)} -> {len(pruned.feature_names)} features, "
        f"hidden {HIDDEN} -> {pruned.spec['model']['hidden_layers']}, {prune_seconds * 1e3:.1f} ms"
    )
    X = np.random.default_rng(1).standard_normal((args.rows, D))
    cols = [int(name[1:]) for name in pruned.feature_names]
    Xp = np.ascontiguousarray(X[:, cols])
    diff = np.abs(pruned.predict_proba(Xp) - model.predict_proba(X)).max()
    print(f"max |proba difference| = {diff:.2e}")
    assert diff <= 1e-6

    row = {f"x{j}": float(X[0, j]) for j in range(D)}
    row_p = {name: row[name] for name in pruned.feature_names}
    cases = {
        f"batch {args.rows} rows": (
            lambda: model.predict_proba(X),
            lambda: pruned.predict_proba(Xp),
            3,
        ),
        "single row (mapping)": (
            lambda: model.predict_proba(row),
            lambda: pruned.predict_proba(row_p),
            2000,
        ),
    }
    try:
        import onnxruntime as ort

        from engine.onnx_export import to_onnx

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        full = ort.InferenceSession(
            to_onnx(model, pruned=False), opts, providers=["CPUExecutionProvider"]
        )
        small = ort.InferenceSession(to_onnx(model), opts, providers=["CPUExecutionProvider"])
        X32 = X.astype(np.float32)
        feed_full = {f"x{j}": X32[:, j : j + 1] for j in range(D)}
        feed_small = {name: feed_full[name] for name in pruned.feature_names}
        cases[f"onnxruntime batch {args.rows} rows"] = (
            lambda: full.run(["probabilities"], feed_full),
            lambda: small.run(["probabilities"], feed_small),
            3,
        )
    except ImportError:
        print("onnxruntime not installed: ONNX case skipped")

    print(f"{'case':<34}{'full':>12}{'pruned':>12}{'speed-up':>10}")
    for name, (full_fn, pruned_fn, inner) in cases.items():
        t = _best({"full": full_fn, "pruned": pruned_fn}, args.repeats, inner)
        print(
            f"{name:<34}{t['full'] * 1e3:>10.3f}ms{t['pruned'] * 1e3:>10.3f}ms"
            f"{t['full'] / t['pruned']:>9.1f}x"
        )


if __name__ == "__main__":
    main()
