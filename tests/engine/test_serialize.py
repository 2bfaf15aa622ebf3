"""Model bytes: bit-identical round trip, loadable without pickle, clear errors on bad bytes."""

import io
import json

import numpy as np
import pytest

import engine
from engine import ModelFormatError


def _obj(values):
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _data(n=90):
    rng = np.random.default_rng(3)
    X = {
        "x": rng.normal(size=n),
        "color": _obj(rng.choice(["red", "green", "blue"], size=n)),
    }
    X["x"][0] = np.nan
    X["color"][1] = None
    y = np.where(X["x"] > 0, "up", "down").astype(object)
    y[X["color"] == "red"] = "red"
    return X, y


SPECS = [
    {"model": {"hidden_layers": [6], "activation": "prelu"}, "dropout": {"hidden": 0.1}},
    {"model": {"hidden_layers": []}, "loss": "multiclass_hinge", "dtype": "float64"},
    {"model": {"hidden_layers": [4, 3], "activation": "tanh"}, "regularization": {"l1": 0.01}},
]


@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_predicts_bit_identically(spec):
    X, y = _data()
    model = engine.fit({**spec, "epochs": 5, "validation_split": 0.2}, X, y)
    again = engine.load(model.to_bytes())
    np.testing.assert_array_equal(again.decision_function(X), model.decision_function(X))
    assert again.predict(X).tolist() == model.predict(X).tolist()
    for name, W in model.network.get_weights().items():
        loaded = again.network.get_weights()[name]
        assert loaded.dtype == W.dtype
        np.testing.assert_array_equal(loaded, W)
    assert again.spec == model.spec
    assert again.classes == model.classes
    assert again.feature_names == model.feature_names
    assert again.history == model.history
    assert again.metrics == model.metrics
    assert again.sparsity() == model.sparsity()


def test_regression_round_trip():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(60, 3))
    y = 10 + X @ np.array([1.0, -2.0, 0.5])
    model = engine.fit({"loss": "huber", "model": {"hidden_layers": [5]}, "epochs": 3}, X, y)
    again = engine.load(model.to_bytes())
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
    assert again.task == "regression" and again.classes is None


def test_int_labels_keep_their_type_after_load():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 2))
    y = np.where(X[:, 0] > 0, 7, 3)
    again = engine.load(engine.fit({"epochs": 2}, X, y).to_bytes())
    assert again.classes == [3, 7]
    assert all(type(v) is int for v in again.predict(X).tolist())


def test_bytes_are_a_plain_npz_loadable_without_pickle():
    X, y = _data()
    data = engine.fit({"epochs": 1, "model": {"hidden_layers": [3]}}, X, y).to_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        files = set(archive.files)
        meta = json.loads(archive["meta"].tobytes().decode("utf-8"))
        assert archive["w/dense0.W"].shape == (4, 3)  # x + 3 one-hot colours
        assert all(archive[name].dtype != object for name in files)
    assert meta["format"] == "regula-model" and meta["version"] == 1
    assert meta["preprocess"]["categories"][1] == ["blue", "green", "red"]
    assert {"meta", "w/dense0.W", "w/dense0.b", "pre/center", "pre/scale", "pre/fill"} <= files


def test_serialization_is_deterministic():
    X, y = _data()
    model = engine.fit({"epochs": 1}, X, y)
    assert model.to_bytes() == model.to_bytes()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda data: b"",
        lambda data: b"not a model at all",
        lambda data: data[: len(data) // 2],
        lambda data: data[:100] + bytes(200) + data[300:],
    ],
    ids=["empty", "garbage", "truncated", "zeroed-middle"],
)
def test_corrupt_bytes_raise_model_format_error(mangle):
    X, y = _data()
    data = engine.fit({"epochs": 1, "model": {"hidden_layers": [2]}}, X, y).to_bytes()
    with pytest.raises(ModelFormatError) as info:
        engine.load(mangle(data))
    assert isinstance(info.value, ValueError)
    assert info.value.code == "corrupt_model"


def _npz(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _meta(obj):
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


def test_foreign_npz_is_rejected():
    with pytest.raises(ModelFormatError, match="Regula"):
        engine.load(_npz(weights=np.ones(3)))
    with pytest.raises(ModelFormatError, match="format"):
        engine.load(_npz(meta=_meta({"hello": 1})))


def test_pickled_object_arrays_are_refused():
    data = _npz(meta=np.array([{"format": "regula-model"}], dtype=object))
    with pytest.raises(ModelFormatError):
        engine.load(data)


def test_future_version_is_unsupported():
    with pytest.raises(ModelFormatError) as info:
        engine.load(_npz(meta=_meta({"format": "regula-model", "version": 99})))
    assert info.value.code == "unsupported_version"


def test_inconsistent_archive_is_rejected():
    X, y = _data()
    data = engine.fit({"epochs": 1, "model": {"hidden_layers": [2]}}, X, y).to_bytes()
    with np.load(io.BytesIO(data)) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["w/dense0.W"] = np.ones((9, 9), dtype=np.float32)
    with pytest.raises(ModelFormatError):
        engine.load(_npz(**arrays))
