"""engine.prune: dropped inputs and dead hidden units removed, predictions unchanged."""

import numpy as np
import pytest

import engine
from engine.prune import prune, required_features


def _data(n=400, d=30, informative=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
    logits = X[:, :informative] @ rng.normal(size=informative)
    return X, (logits > np.median(logits)).astype(int)


def _fit(X, y, **spec):
    base = {
        "model": {"hidden_layers": [16, 8]},
        "regularization": {"l1": 0.01},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "epochs": 30,
        "dtype": "float64",
    }
    for key, value in spec.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return engine.fit(base, X, y)


def _columns(X, names, model):
    return {name: X[:, names.index(name)] for name in model.feature_names}


def _set(model, **weights):
    values = model.network.get_weights()
    values.update(weights)
    model.network.set_weights(values)


def _sparsify(model, dropped):
    """What L1 leaves behind, set by hand so that every variant has it: the rows of the features
    ``dropped`` are zero, unit 3 of layer 0 sees no input (constant), unit 5 is read by nobody."""
    w = model.network.get_weights()
    W0, W1 = w["dense0.W"].copy(), w["dense1.W"].copy()
    W0[dropped] = 0.0
    W0[:, 3] = 0.0
    W1[5] = 0.0
    _set(model, **{"dense0.W": W0, "dense1.W": W1})


@pytest.mark.parametrize(
    ("activation", "mode", "loss"),
    [
        ("relu", "inverted", "softmax_cross_entropy"),
        ("prelu", "standard", "binary_cross_entropy"),
        ("leaky_relu", "standard", "softmax_cross_entropy"),
        ("tanh", "dropconnect", "binary_cross_entropy"),
        ("sigmoid", "inverted", "multiclass_hinge"),
        ("linear", "standard", "squared_hinge"),
    ],
)
def test_pruned_model_predicts_the_same_without_the_dropped_columns(activation, mode, loss):
    X, y = _data()
    names = [f"x{j}" for j in range(X.shape[1])]
    model = _fit(
        X,
        y,
        model={"activation": activation},
        loss=loss,
        dropout={"hidden": 0.2, "input": 0.1, "mode": mode},
        regularization={"l1": 0.0},
        epochs=5,
    )
    _sparsify(model, dropped=list(range(10, 30)))
    pruned = prune(model)
    assert pruned.feature_names == names[:10]
    assert engine.sparsity(model)["dropped_features"] == names[10:]
    assert pruned.spec["model"]["hidden_layers"] == [14, 8]

    # The pruned model reads only its features: the others may be absent...
    cols = _columns(X, names, pruned)
    scores = model.decision_function(X)
    np.testing.assert_allclose(pruned.decision_function(cols), scores, atol=1e-9)
    np.testing.assert_array_equal(pruned.predict(cols), model.predict(X))
    # ... or anything at all: the original, given garbage in those columns, agrees.
    garbage = X.copy()
    garbage[:, 10:] = np.random.default_rng(1).normal(size=(len(X), 20)) * 1e3
    np.testing.assert_allclose(model.decision_function(garbage), scores, atol=1e-9)


def test_group_l1_training_drops_features_that_prune_removes():
    # A convex problem (linear softmax, FISTA), so which features group L1 keeps is a property of
    # the optimum, not of the optimizer's path.
    X, y = _data()
    names = [f"x{j}" for j in range(X.shape[1])]
    model = _fit(
        X,
        y,
        model={"hidden_layers": []},
        regularization={"l1": 0.0, "group_l1": 0.02},
        optimizer={"name": "fista"},
        epochs=300,
    )
    dropped = engine.sparsity(model)["dropped_features"]
    assert 0 < len(dropped) < X.shape[1]
    pruned = prune(model)
    assert pruned.feature_names == [name for name in names if name not in dropped]
    assert {"x0", "x1", "x2", "x3"} <= set(pruned.feature_names)
    cols = _columns(X, names, pruned)
    np.testing.assert_allclose(pruned.predict_proba(cols), model.predict_proba(X), atol=1e-9)


def test_float32_model_agrees_within_1e_6():
    X, y = _data(seed=3)
    model = _fit(X, y, dtype="float32")
    pruned = prune(model)
    names = [f"x{j}" for j in range(X.shape[1])]
    cols = _columns(X, names, pruned)
    np.testing.assert_allclose(pruned.predict_proba(cols), model.predict_proba(X), atol=1e-6)


def test_constant_units_are_folded_into_the_next_bias():
    X, y = _data(d=6, seed=5)
    model = _fit(
        X,
        y,
        model={"hidden_layers": [5, 4], "activation": "prelu"},
        regularization={"l1": 0.0},
        dropout={"hidden": 0.3, "mode": "standard"},
    )
    w = model.network.get_weights()
    W0, W1 = w["dense0.W"].copy(), w["dense1.W"].copy()
    b0 = w["dense0.b"].copy()
    W0[:, [1, 3]] = 0.0  # units 1 and 3 of layer 0 see no input: constant prelu(b) * keep
    b0[[1, 3]] = [-0.7, 0.4]
    W1[:, 2] = 0.0  # unit 2 of layer 1 is constant
    _set(model, **{"dense0.W": W0, "dense0.b": b0, "dense1.W": W1})

    pruned = prune(model)
    assert pruned.spec["model"]["hidden_layers"] == [3, 3]
    np.testing.assert_allclose(pruned.predict_proba(X), model.predict_proba(X), atol=1e-12)
    alpha = pruned.network.get_weights()["prelu0.alpha"]
    np.testing.assert_array_equal(alpha, w["prelu0.alpha"][[0, 2, 4]])


def test_units_nobody_reads_are_removed_and_their_features_with_them():
    X, y = _data(d=6, seed=6)
    model = _fit(X, y, model={"hidden_layers": [5]}, regularization={"l1": 0.0})
    w = model.network.get_weights()
    W0, W1 = w["dense0.W"].copy(), w["dense1.W"].copy()
    W1[[0, 4]] = 0.0  # units 0 and 4 are invisible
    W0[2] = 0.0  # feature x2 is dropped in the engine's sense
    W0[5, [1, 2, 3]] = 0.0  # x5 only reaches the invisible units
    _set(model, **{"dense0.W": W0, "dense1.W": W1})

    assert engine.sparsity(model)["dropped_features"] == ["x2"]
    assert required_features(model) == ["x0", "x1", "x3", "x4"]
    pruned = prune(model)
    assert pruned.spec["model"]["hidden_layers"] == [3]
    np.testing.assert_allclose(
        pruned.predict_proba(X[:, [0, 1, 3, 4]]), model.predict_proba(X), atol=1e-12
    )


def test_a_model_that_needs_nothing_keeps_one_input_and_predicts_its_constant():
    X, y = _data(d=5, seed=7)
    model = _fit(X, y, model={"hidden_layers": [4]}, regularization={"l1": 0.0})
    _set(model, **{"dense0.W": np.zeros((5, 4))})
    pruned = prune(model)
    assert pruned.feature_names == ["x0"]
    assert pruned.spec["model"]["hidden_layers"] == [1]
    np.testing.assert_allclose(pruned.predict_proba(X[:, :1]), model.predict_proba(X), atol=1e-12)
    assert np.ptp(model.predict_proba(X)[:, 0]) == 0.0


def test_pruned_model_round_trips_through_bytes():
    X, y = _data()
    pruned = prune(_fit(X, y, model={"activation": "prelu"}))
    loaded = engine.load(pruned.to_bytes())
    names = [f"x{j}" for j in range(X.shape[1])]
    cols = _columns(X, names, pruned)
    np.testing.assert_array_equal(loaded.predict_proba(cols), pruned.predict_proba(cols))
    assert loaded.feature_names == pruned.feature_names


def test_regression_and_string_columns_are_pruned():
    rng = np.random.default_rng(8)
    n = 300
    city = rng.choice(["oslo", "rome", "lima"], size=n).astype(object)
    colour = rng.choice(["red", "blue"], size=n).astype(object)
    x = rng.normal(size=(n, 5))
    y = 3.0 * x[:, 0] + np.where(city == "rome", 2.0, 0.0) + rng.normal(scale=0.1, size=n)
    data = {"city": city, "colour": colour, **{f"x{j}": x[:, j] for j in range(5)}}
    model = engine.fit(
        {
            "task": "regression",
            "model": {"hidden_layers": []},
            "regularization": {"l1": 0.05},
            "optimizer": {"name": "fista"},
            "epochs": 300,
            "dtype": "float64",
        },
        data,
        y,
    )
    need = required_features(model)
    assert "city" in need
    assert "x0" in need
    assert "colour" not in need
    pruned = prune(model)
    subset = {name: data[name] for name in need}
    np.testing.assert_allclose(pruned.predict(subset), model.predict(data), rtol=1e-12)


def test_an_image_model_is_refused_with_a_value_error():
    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 6, 6))
    model = engine.fit({"epochs": 1}, x, (x.mean(axis=(1, 2, 3)) > 0.5).astype(int))
    with pytest.raises(ValueError, match="table model"):
        prune(model)


def test_a_model_with_nothing_to_prune_is_returned_itself() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4))
    y = (X[:, 0] > 0).astype(int)
    model = engine.fit({"model": {"hidden_layers": [8]}, "epochs": 2}, X, y)
    assert prune(model) is model
