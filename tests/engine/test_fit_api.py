"""engine.fit and Model: mapping input, original labels, determinism, callbacks, history, errors."""

import json

import numpy as np
import pytest

import engine
from engine import InputError, SpecError

FAST = {"model": {"hidden_layers": [8]}, "optimizer": {"name": "adam", "learning_rate": 0.05}}


def _obj(values):
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _table(n=120, seed=0):
    """A mapping with a numeric, a categorical (with a missing value) and a noise column.

    The label is "yes" iff x + (city == "Oslo") > 0.5.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    city = rng.choice(["Oslo", "Bergen", "Tromso"], size=n).astype(object)
    city[3] = None
    noise = rng.normal(size=n)
    x[5] = np.nan
    label = np.where(np.nan_to_num(x) + (city == "Oslo") > 0.5, "yes", "no").astype(object)
    return {"x": x, "city": city, "noise": noise}, label


def _spec(**over):
    return {**FAST, "epochs": 15, **over}


def test_mapping_with_categorical_column_predicts_string_labels():
    X, y = _table()
    model = engine.fit(_spec(), X, y)
    pred = model.predict(X)
    assert pred.shape == (120,)
    assert model.classes == ["no", "yes"]
    assert all(type(p) is str for p in pred.tolist())
    assert set(pred.tolist()) <= {"no", "yes"}
    assert np.mean(pred == y) > 0.85
    assert model.feature_names == ["x", "city", "noise"]
    assert model.task == "classification"


def test_integer_labels_stay_ints():
    X, y = _table()
    y01 = (y == "yes").astype(np.int64)
    model = engine.fit(_spec(loss="binary_cross_entropy"), X, y01)
    assert model.classes == [0, 1]
    assert all(type(c) is int for c in model.classes)
    pred = model.predict(X).tolist()
    assert all(type(p) is int for p in pred)
    # predict is "p >= 0.5 -> classes[1]" on the sigmoid output.
    proba = model.predict_proba(X)
    np.testing.assert_array_equal(model.predict(X), np.where(proba[:, 1] >= 0.5, 1, 0))


def test_predict_proba_columns_follow_classes_and_sum_to_one():
    X, y = _table()
    model = engine.fit(_spec(), X, y)
    proba = model.predict_proba(X)
    assert proba.shape == (120, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(
        model.predict(X), np.array(model.classes, dtype=object)[proba.argmax(axis=1)]
    )


def test_predict_with_proba_matches_the_two_calls():
    X, y = _table()
    model = engine.fit(_spec(epochs=2), X, y)
    labels, proba = model.predict_with_proba(X)
    np.testing.assert_array_equal(labels, model.predict(X))
    np.testing.assert_array_equal(proba, model.predict_proba(X))
    hinge = engine.fit(_spec(epochs=2, loss="multiclass_hinge"), X, y)
    labels, proba = hinge.predict_with_proba(X)
    assert proba is None
    np.testing.assert_array_equal(labels, hinge.predict(X))


def test_hinge_model_has_no_probabilities():
    X, y = _table()
    model = engine.fit(_spec(loss="multiclass_hinge"), X, y)
    assert not model.has_proba
    assert set(model.predict(X).tolist()) <= {"no", "yes"}
    with pytest.raises(InputError) as info:
        model.predict_proba(X)
    assert info.value.code == "no_probabilities"


def test_regression_predicts_floats_in_target_units():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    y = 1000.0 + 50.0 * X[:, 0] - 20.0 * X[:, 2]
    model = engine.fit(
        {
            "loss": "mse",
            "model": {"hidden_layers": []},
            "optimizer": {"name": "adam", "learning_rate": 0.5},
            "epochs": 60,
        },
        X,
        y,
    )
    assert model.classes is None and model.task == "regression"
    assert not model.has_proba
    pred = model.predict(X)
    assert pred.dtype == np.float64 and pred.shape == (200,)
    assert np.abs(pred - y).max() < 5.0
    assert model.metrics["metric_name"] == "r2" and model.metrics["metric"] > 0.99


def test_same_seed_is_bit_identical_and_other_seed_differs():
    X, y = _table()
    spec = _spec(validation_split=0.25, dropout={"hidden": 0.2}, seed=7)
    a = engine.fit(spec, X, y)
    b = engine.fit(spec, X, y)
    for name, W in a.network.get_weights().items():
        np.testing.assert_array_equal(W, b.network.get_weights()[name])
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    c = engine.fit({**spec, "seed": 8}, X, y)
    assert not np.array_equal(
        a.network.get_weights()["dense0.W"], c.network.get_weights()["dense0.W"]
    )


def test_history_has_one_json_record_per_epoch():
    X, y = _table()
    model = engine.fit(_spec(epochs=4, validation_split=0.2), X, y)
    assert [r["epoch"] for r in model.history] == [1, 2, 3, 4]
    keys = {
        "epoch",
        "loss",
        "data_loss",
        "penalty",
        "val_loss",
        "metric",
        "val_metric",
        "zero_fraction",
        "learning_rate",
        "seconds",
    }
    for record in model.history:
        assert keys <= set(record)
        assert record["val_loss"] is not None
    json.dumps(model.history)
    json.dumps(model.metrics)
    json.dumps(model.spec)
    assert model.metrics["epochs"] == 4 and model.stopped == "completed"
    assert model.metrics["n_train"] + model.metrics["n_val"] == 120


def test_callbacks_receive_each_record_and_can_cancel():
    X, y = _table()
    seen = []

    def cb(record):
        seen.append(record)
        return record["epoch"] == 3

    model = engine.fit(_spec(epochs=10), X, y, callbacks=[cb])
    assert [r["epoch"] for r in seen] == [1, 2, 3]
    assert model.stopped == "cancelled" == model.metrics["stopped"]
    assert len(model.history) == 3
    # Still a complete model: predicts and serializes.
    assert model.predict(X).shape == (120,)
    assert engine.load(model.to_bytes()).stopped == "cancelled"


def test_validation_split_is_stratified_and_seeded():
    from engine.model import _split

    labels = np.array([0] * 90 + [1] * 10)
    train, val = _split(100, 0.2, np.random.default_rng(0), labels)
    assert np.bincount(labels[val]).tolist() == [18, 2]
    assert sorted([*train, *val]) == list(range(100))
    again, _ = _split(100, 0.2, np.random.default_rng(0), labels)
    np.testing.assert_array_equal(train, again)


def test_validation_split_keeps_a_training_row_per_class():
    from engine.model import _split

    labels = np.array([0, 0, 0, 0, 1])
    train, _ = _split(5, 0.5, np.random.default_rng(0), labels)
    assert 4 in train


def test_tiny_classes_fall_back_to_a_random_split():
    from engine.model import _split

    labels = np.repeat(np.arange(5), 2)
    train, val = _split(10, 0.2, np.random.default_rng(0), labels)
    assert (len(train), len(val)) == (8, 2)


def test_preprocessing_statistics_come_from_the_training_split():
    from engine.model import _split

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 2)) * [1.0, 100.0]
    y = (X[:, 0] > 0).astype(int)
    model = engine.fit(_spec(epochs=1, validation_split=0.3, seed=5), X, y)
    # fit draws the split first from default_rng(seed), so it can be replayed here.
    train, val = _split(50, 0.3, np.random.default_rng(5), y)
    assert model.metrics["n_val"] == len(val)
    np.testing.assert_allclose(model.preprocessor.center, X[train].mean(axis=0))
    np.testing.assert_allclose(model.preprocessor.scale, X[train].std(axis=0))
    assert not np.allclose(model.preprocessor.center, X.mean(axis=0))


def test_array_input_with_feature_names():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(80, 2))
    y = (X[:, 0] > 0).astype(int)
    model = engine.fit(_spec(), X, y, feature_names=["age", "income"])
    assert model.feature_names == ["age", "income"]
    np.testing.assert_array_equal(
        model.predict(X), model.predict({"income": X[:, 1], "age": X[:, 0], "extra": X[:, 0]})
    )


def test_predict_single_row_mapping_of_scalars():
    X, y = _table()
    model = engine.fit(_spec(epochs=2), X, y)
    row = model.predict({"x": 2.0, "city": "Oslo", "noise": 0.0})
    assert row.tolist() == ["yes"]


def test_predict_unknown_category_and_missing_column():
    X, y = _table()
    model = engine.fit(_spec(epochs=1), X, y)
    with pytest.raises(InputError) as info:
        model.predict({"x": [0.0, 1.0], "city": ["Oslo", "Paris"], "noise": [0.0, 0.0]})
    assert (info.value.code, info.value.column, info.value.row) == ("unknown_category", "city", 1)
    with pytest.raises(InputError) as info:
        model.predict({"x": [0.0], "noise": [0.0]})
    assert (info.value.code, info.value.column) == ("missing_column", "city")


@pytest.mark.parametrize(
    ("spec", "y", "code"),
    [
        ({}, ["a"] * 10, "one_class"),
        ({"loss": "mse"}, [3.0] * 10, "constant_target"),
        ({}, ["a", None] * 5, "missing_target"),
        ({"loss": "mse"}, [1.0, np.nan] * 5, "missing_target"),
        ({"loss": "mse"}, [1.0, np.inf] * 5, "non_finite"),
    ],
)
def test_bad_targets(spec, y, code):
    X = np.arange(10.0).reshape(-1, 1)
    with pytest.raises(InputError) as info:
        engine.fit({**_spec(epochs=1), **spec}, X, _obj(y))
    assert info.value.code == code


def test_continuous_target_for_a_classifier_is_too_many_classes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 1))
    with pytest.raises(InputError) as info:
        engine.fit(_spec(epochs=1), X, X[:, 0] * 3.0)
    assert info.value.code == "too_many_classes"
    assert "regression" in info.value.msg


def test_infinite_feature_is_non_finite_with_column_and_row():
    X = {"a": np.array([1.0, 2.0, np.inf, 4.0])}
    with pytest.raises(InputError) as info:
        engine.fit(_spec(epochs=1), X, [0, 1, 0, 1])
    assert (info.value.code, info.value.column, info.value.row) == ("non_finite", "a", 2)


def test_nan_features_are_imputed_not_rejected():
    X = {"a": np.array([1.0, np.nan, 3.0, 4.0] * 5)}
    model = engine.fit(_spec(epochs=1), X, [0, 1] * 10)
    assert model.predict({"a": [np.nan]}).shape == (1,)


def test_binary_cross_entropy_needs_two_classes():
    X = np.arange(9.0).reshape(-1, 1)
    with pytest.raises(SpecError) as info:
        engine.fit(_spec(loss="binary_cross_entropy", epochs=1), X, [0, 1, 2] * 3)
    assert (info.value.loc, info.value.code) == (("loss",), "not_binary")


def test_length_mismatch():
    with pytest.raises(InputError) as info:
        engine.fit(_spec(epochs=1), np.ones((5, 1)), [0, 1, 0, 1])
    assert info.value.code == "length_mismatch"


def test_invalid_spec_raises_before_touching_data():
    with pytest.raises(SpecError) as info:
        engine.fit({"loss": "nope"}, None, None)
    assert info.value.loc == ("loss",)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_is_a_spec_error_on_learning_rate():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 2)) * 1e3
    y = X[:, 0] * 1e6
    spec = {
        "loss": "mse",
        "model": {"hidden_layers": []},
        "standardize": False,
        "optimizer": {"name": "sgd", "learning_rate": 1.0},
        "epochs": 5,
    }
    with pytest.raises(SpecError) as info:
        engine.fit(spec, X, y)
    assert (info.value.loc, info.value.code) == (("optimizer", "learning_rate"), "diverged")


def test_early_stopping_restores_best_epoch_in_metrics():
    X, y = _table()
    model = engine.fit(
        _spec(
            epochs=200,
            validation_split=0.3,
            early_stopping={"patience": 2},
            optimizer={"name": "adam", "learning_rate": 0.2},
        ),
        X,
        y,
    )
    assert model.stopped == "early_stopping"
    best = model.metrics["best_epoch"]
    assert best < len(model.history)
    assert model.metrics["val_loss"] == model.history[best - 1]["val_loss"]
    assert model.metrics["val_loss"] == min(r["val_loss"] for r in model.history)


@pytest.mark.parametrize("container", ["dict_of_arrays", "dict_of_lists", "objects", "pandas"])
@pytest.mark.parametrize("validation_split", [0.0, 0.25])
def test_every_container_of_the_same_values_gives_bit_identical_weights(
    container, validation_split
):
    rng = np.random.default_rng(3)
    X = rng.normal(2.0, 3.0, size=(80, 3))
    X[::9, 1] = np.nan
    y = X[:, 0] - np.nan_to_num(X[:, 1]) + rng.normal(scale=0.1, size=80)
    names = [f"x{j}" for j in range(3)]
    if container == "pandas":
        pd = pytest.importorskip("pandas")
        other = pd.DataFrame(X, columns=names)
    elif container == "dict_of_arrays":
        other = {name: X[:, j] for j, name in enumerate(names)}
    elif container == "dict_of_lists":
        other = {name: X[:, j].tolist() for j, name in enumerate(names)}
    else:  # object columns: the column-by-column conversion
        other = {name: _obj(X[:, j].tolist()) for j, name in enumerate(names)}
    spec = {"loss": "mse", "model": {"hidden_layers": [4]}, "dtype": "float64", "epochs": 3}
    spec["validation_split"] = validation_split
    ref = engine.fit(spec, X, y)
    got = engine.fit(spec, other, y)
    np.testing.assert_array_equal(got.preprocessor.center, ref.preprocessor.center)
    np.testing.assert_array_equal(got.preprocessor.scale, ref.preprocessor.scale)
    for name, value in ref.network.get_weights().items():
        np.testing.assert_array_equal(got.network.get_weights()[name], value)
    np.testing.assert_array_equal(got.predict(other), ref.predict(X))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_without_standardization_never_writes_to_the_callers_array(dtype):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(60, 4)).astype(dtype)
    before = X.copy()
    spec = {"loss": "mse", "model": {"hidden_layers": []}, "dtype": dtype, "standardize": False}
    for optimizer, shuffle in (("sgd", True), ("sgd", False), ("fista", False)):
        run = {**spec, "optimizer": {"name": optimizer}, "shuffle": shuffle}
        model = engine.fit(run, X, X[:, 0] * 2.0 + 1.0)
        np.testing.assert_array_equal(X, before)
        assert model.preprocessor.center.tolist() == [0.0] * 4


def _weights(model):
    return {k: v.copy() for k, v in model.network.get_weights().items()}


def test_keep_best_restores_the_lowest_val_loss_epoch_without_early_stopping():
    X, y = _table()
    spec = _spec(epochs=40, validation_split=0.3, optimizer={"name": "adam", "learning_rate": 0.1})
    model = engine.fit(spec, X, y)
    assert model.spec["keep"] == "best" and model.stopped == "completed"
    val = [r["val_loss"] for r in model.history]
    best = int(np.argmin(val)) + 1
    assert best < len(val), "the test needs a run whose last epoch is not its best"
    assert model.metrics["weights_epoch"] == model.metrics["best_epoch"] == best
    assert model.metrics["val_loss"] == min(val)
    # same seed, stopped at that epoch: the restored weights are exactly those of epoch `best`
    at_best = engine.fit({**spec, "epochs": best, "keep": "last"}, X, y)
    for name, value in _weights(at_best).items():
        np.testing.assert_array_equal(_weights(model)[name], value)


def test_keep_last_keeps_the_final_weights():
    X, y = _table()
    spec = _spec(epochs=40, validation_split=0.3, optimizer={"name": "adam", "learning_rate": 0.3})
    model = engine.fit({**spec, "keep": "last"}, X, y)
    assert model.metrics["weights_epoch"] == len(model.history) == 40
    assert model.metrics["val_loss"] == model.history[-1]["val_loss"]
    # without validation data the default is last
    plain = engine.fit(_spec(epochs=5), X, y)
    assert plain.spec["keep"] == "last" and plain.metrics["weights_epoch"] == 5


def test_model_layers_build_the_same_network_as_hidden_layers():
    X, y = _table()
    short = engine.fit(_spec(model={"hidden_layers": [8, 4]}, epochs=3), X, y)
    layers = [{"type": "dense", "units": 8}, {"type": "dense", "units": 4}]
    long = engine.fit(_spec(model={"layers": layers}, epochs=3), X, y)
    for name, value in _weights(short).items():
        np.testing.assert_array_equal(_weights(long)[name], value)
    assert long.spec["model"]["layers"][0] == {
        "type": "dense",
        "units": 8,
        "activation": None,
        "init": None,
    }


def test_model_layers_dropout_entry_is_a_dropout_layer():
    X, y = _table()
    layers = [{"type": "dense", "units": 8, "activation": "tanh"}, {"type": "dropout", "rate": 0.5}]
    model = engine.fit(_spec(model={"layers": layers}, epochs=2), X, y)
    kinds = [type(layer).__name__ for layer in model.network.layers]
    assert kinds == ["Dense", "Tanh", "Dropout", "Dense"]
    assert model.network.layers[2].rate == 0.5
    restored = engine.load(model.to_bytes())
    np.testing.assert_array_equal(restored.predict(X), model.predict(X))


def test_conv_layers_on_a_table_raise_a_spec_error():
    X, y = _table()
    layers = [{"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "flatten"}]
    with pytest.raises(SpecError) as info:
        engine.fit(_spec(model={"layers": layers}), X, y)
    assert (info.value.loc, info.value.code) == (("model", "layers", 0), "needs_images")
