"""Sparsity statistics on hand-built weights with known zeros."""

from types import SimpleNamespace

import numpy as np
import pytest

import engine
from engine.sparsity import HISTOGRAM_BINS, weight_stats

# Input layer: 4 encoded columns -> 3 hidden units. Raw features: "a" (col 0), "city" (one-hot
# cols 1-2), "b" (col 3). "a" is all zero; "city" has one non-zero weight; hidden unit 2 has no
# incoming weights.
W1 = np.array(
    [
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [0.0, 0.5, 0.0],
        [1.0, -2.0, 0.0],
    ]
)
# Hidden (3) -> output (2): unit 0 has no outgoing weights; output unit 1 has no incoming weights.
W2 = np.array(
    [
        [0.0, 0.0],
        [3.0, 0.0],
        [1e-4, 0.0],
    ]
)
GROUPS = [(0, 1), (1, 3), (3, 4)]
NAMES = ["a", "city", "b"]


def _stats(tolerance=0.0):
    return weight_stats([W1, W2], groups=GROUPS, feature_names=NAMES, tolerance=tolerance)


def test_exact_zero_counts():
    stats = _stats()
    assert stats["total_weights"] == 12 + 6
    assert stats["zero_weights"] == 9 + 4
    assert stats["zero_fraction"] == pytest.approx(13 / 18)
    first, second = stats["layers"]
    assert (first["shape"], first["zeros"], first["near_zero"]) == ([4, 3], 9, 9)
    assert first["zero_fraction"] == pytest.approx(9 / 12)
    assert (second["shape"], second["zeros"]) == ([3, 2], 4)


def test_norms_and_max_abs():
    first = _stats()["layers"][0]
    assert first["l1_norm"] == pytest.approx(3.5)
    assert first["l2_norm"] == pytest.approx(np.sqrt(0.25 + 1.0 + 4.0))
    assert first["max_abs"] == 2.0


def test_dropped_and_selected_features():
    stats = _stats()
    assert stats["dropped_features"] == ["a"]
    assert stats["selected_features"] == ["city", "b"]
    assert stats["feature_importance"] == pytest.approx({"a": 0.0, "city": 0.5, "b": np.sqrt(5.0)})


def test_dead_units():
    first, second = _stats()["layers"]
    # Hidden unit 0: outgoing all zero; unit 2: incoming all zero; unit 1 is alive.
    assert first["dead_units"] == 2
    assert first["dead_unit_indices"] == [0, 2]
    # Output unit 1 has no incoming weights.
    assert second["dead_units"] == 1
    assert second["dead_unit_indices"] == [1]


def test_tolerance_counts_near_zero_and_drops_small_features():
    stats = _stats(tolerance=0.6)
    # Exact-zero counts do not move with the tolerance ...
    assert stats["zero_weights"] == 13
    first, second = stats["layers"]
    assert first["near_zero"] == 10
    assert second["near_zero"] == 5
    # ... but feature selection and dead units do: "city"'s only weight is 0.5.
    assert stats["dropped_features"] == ["a", "city"]
    # Hidden unit 2's only outgoing weight 1e-4 is now zero too (it had no incoming weights anyway).
    assert second["dead_unit_indices"] == [1]
    assert stats["tolerance"] == 0.6


def test_histograms_cover_every_weight():
    for layer in _stats()["layers"]:
        hist = layer["histogram"]
        assert len(hist["counts"]) == HISTOGRAM_BINS
        assert len(hist["edges"]) == HISTOGRAM_BINS + 1
        assert sum(hist["counts"]) == layer["shape"][0] * layer["shape"][1]
        assert hist["edges"][0] == -layer["max_abs"] and hist["edges"][-1] == layer["max_abs"]


def test_all_zero_matrix_has_a_valid_histogram():
    stats = weight_stats([np.zeros((2, 1))], groups=[(0, 1), (1, 2)], feature_names=["p", "q"])
    layer = stats["layers"][0]
    assert sum(layer["histogram"]["counts"]) == 2
    assert stats["dropped_features"] == ["p", "q"] and stats["selected_features"] == []
    assert layer["dead_units"] == 1


def test_negative_tolerance_rejected():
    with pytest.raises(ValueError):
        _stats(tolerance=-1.0)


def test_sparsity_of_a_model_uses_its_network_and_features():
    dense = [SimpleNamespace(params={"W": W1, "b": np.zeros(3)}), SimpleNamespace(params={"W": W2})]
    model = SimpleNamespace(
        network=SimpleNamespace(dense_layers=dense),
        preprocessor=SimpleNamespace(groups=GROUPS),
        feature_names=NAMES,
    )
    stats = engine.sparsity(model)
    assert [layer["name"] for layer in stats["layers"]] == ["dense0", "dense1"]
    assert stats["dropped_features"] == ["a"]
    assert set(stats) == {
        "tolerance",
        "total_weights",
        "zero_weights",
        "zero_fraction",
        "selected_features",
        "dropped_features",
        "feature_importance",
        "layers",
    }
