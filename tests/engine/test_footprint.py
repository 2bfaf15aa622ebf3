"""The footprint is an honest bound: what a fit really allocates stays under the estimate.

Measured with tracemalloc (NumPy reports its buffers to it), the caller's columns excluded: they
exist before the fit, as the worker's loaded table does (the estimate's ``data`` term).
"""

import tracemalloc

import numpy as np
import pytest

import engine
from engine.footprint import footprint

N, D = 20_000, 60

SPECS = {
    "linear adam, validation": {
        "model": {"hidden_layers": []},
        "optimizer": {"name": "adam"},
        "validation_split": 0.2,
    },
    "mlp momentum": {
        "model": {"hidden_layers": [64, 32]},
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "validation_split": 0.1,
    },
    "float64, no validation": {"model": {"hidden_layers": [16]}, "dtype": "float64"},
    "categorical column": {"model": {"hidden_layers": [8]}, "validation_split": 0.2},
}


@pytest.mark.parametrize("name", list(SPECS))
def test_a_fit_allocates_no_more_than_its_footprint(name: str) -> None:
    rng = np.random.default_rng(0)
    X: dict[str, np.ndarray] = {f"f{j}": rng.standard_normal(N) for j in range(D)}
    n_inputs = D
    if name == "categorical column":
        X["color"] = rng.choice(np.array(["red", "green", "blue"], dtype=object), N)
        n_inputs += 3
    y = (X["f0"] > 0).astype(np.int64)
    spec = {**SPECS[name], "epochs": 2, "batch_size": 128, "seed": 0}
    estimate = footprint(
        engine.normalize_spec(spec),
        n_rows=N,
        n_columns=len(X),
        n_inputs=n_inputs,
        n_outputs=2,
    )
    tracemalloc.start()
    try:
        engine.fit(spec, X, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    bound = estimate.total - estimate.data
    assert peak <= bound, (peak / 2**20, bound / 2**20)
    # and not a bound so loose it refuses what would fit (in float64 the stacked columns may
    # be the encoding itself, which the estimate does not count on: it stays on the safe side)
    if spec.get("dtype") != "float64":
        assert peak >= 0.6 * bound, (peak / 2**20, bound / 2**20)
