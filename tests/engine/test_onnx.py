"""engine.onnx_export: ONNX Runtime on the exported graph predicts what the engine predicts."""

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pa_csv = pytest.importorskip("pyarrow.csv")
datasets = pytest.importorskip("sklearn.datasets")

import engine  # noqa: E402
from engine.onnx_export import to_onnx  # noqa: E402
from engine.prune import required_features  # noqa: E402

CREDIT = Path(__file__).resolve().parents[2] / "app" / "examples" / "credit.csv"


def _session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _feed(session: ort.InferenceSession, columns: dict) -> dict:
    """One [N, 1] array per graph input: numbers as float / double (NaN = missing), strings with
    ``None`` sent as ``""`` (the graph's missing value)."""
    feed = {}
    for node in session.get_inputs():
        col = np.asarray(columns[node.name])
        if node.type == "tensor(string)":
            values = ["" if v is None else str(v) for v in col.tolist()]
            feed[node.name] = np.array(values, dtype=object).reshape(-1, 1)
        else:
            dtype = np.float32 if node.type == "tensor(float)" else np.float64
            feed[node.name] = col.astype(dtype).reshape(-1, 1)
    return feed


def _run(model, columns, **kwargs) -> tuple[dict, ort.InferenceSession]:
    data = to_onnx(model, **kwargs)
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    session = _session(data)
    names = [out.name for out in session.get_outputs()]
    return dict(zip(names, session.run(None, _feed(session, columns)), strict=True)), session


def _breast_cancer():
    X, y = datasets.load_breast_cancer(return_X_y=True)
    names = [f"f{j}" for j in range(X.shape[1])]
    return {name: X[:, j] for j, name in enumerate(names)}, y, names


def _fit(columns, y, names=None, **spec):
    base = {
        "model": {"hidden_layers": [16, 8]},
        "regularization": {"l1": 0.003},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
    }
    for key, value in spec.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return engine.fit(base, columns, y, feature_names=names)


@pytest.mark.parametrize(
    ("loss", "activation", "mode"),
    [
        ("softmax_cross_entropy", "relu", "inverted"),
        ("softmax_cross_entropy", "leaky_relu", "standard"),
        ("softmax_cross_entropy", "sigmoid", "dropconnect"),
        ("binary_cross_entropy", "prelu", "standard"),
        ("binary_cross_entropy", "tanh", "inverted"),
        ("binary_cross_entropy", "linear", "standard"),
    ],
)
def test_numeric_classifier_probabilities_match(loss, activation, mode):
    columns, y, names = _breast_cancer()
    model = _fit(
        columns,
        y,
        names,
        loss=loss,
        model={"activation": activation},
        dropout={"input": 0.1, "hidden": 0.3, "mode": mode},
    )
    out, session = _run(model, columns)
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    proba = model.predict_proba(columns)
    assert out["probabilities"].shape == proba.shape == (len(y), 2)
    np.testing.assert_allclose(out["probabilities"], proba, atol=1e-5)
    np.testing.assert_array_equal(out["label"], model.predict(columns))
    assert out["label"].dtype == np.int64


def test_multiclass_and_float64_model():
    X, y = datasets.load_digits(return_X_y=True)
    model = _fit(X, y, dtype="float64", epochs=5, model={"activation": "prelu"})
    columns = {f"x{j}": X[:, j] for j in range(X.shape[1])}
    out, session = _run(model, columns)
    assert {node.type for node in session.get_inputs()} == {"tensor(double)"}
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(X), atol=1e-9)
    np.testing.assert_array_equal(out["label"], model.predict(X))
    # Pixels whose first-layer rows L1 zeroed (the constant border pixels) are not graph inputs.
    assert [node.name for node in session.get_inputs()] == required_features(model)


def test_hinge_classifier_exports_scores_and_labels():
    columns, y, names = _breast_cancer()
    model = _fit(columns, y, names, loss="multiclass_hinge")
    out, _ = _run(model, columns)
    assert set(out) == {"label", "scores"}
    np.testing.assert_allclose(out["scores"], model.decision_function(columns), atol=1e-5)
    np.testing.assert_array_equal(out["label"], model.predict(columns))


@pytest.mark.parametrize("hidden", [[], [32]])
def test_regression_values_match(hidden):
    X, y = datasets.load_diabetes(return_X_y=True)
    columns = {f"f{j}": X[:, j] for j in range(X.shape[1])}
    model = _fit(
        columns,
        y,
        task="regression",
        model={"hidden_layers": hidden},
        regularization={"l1": 1.0},
        optimizer={"learning_rate": 0.1},
        epochs=50,
    )
    out, session = _run(model, columns)
    assert [o.name for o in session.get_outputs()] == ["variable"]
    assert out["variable"].shape == (len(y), 1)
    np.testing.assert_allclose(out["variable"][:, 0], model.predict(columns), rtol=1e-5)


def _credit():
    table = pa_csv.read_csv(CREDIT)
    columns = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
    y = columns.pop("default")
    return columns, y


def test_string_columns_and_string_labels():
    columns, y = _credit()
    model = _fit(
        columns,
        y,
        model={"hidden_layers": [8]},
        regularization={"l1": 0.001, "group_l1": 0.05},
        epochs=40,
    )
    need = required_features(model)
    assert "employment" in need
    assert len(need) < len(columns), "group L1 should drop some of the noise columns"
    out, session = _run(model, columns)
    inputs = {node.name: node.type for node in session.get_inputs()}
    assert list(inputs) == need
    assert inputs["employment"] == "tensor(string)"
    assert inputs["income"] == "tensor(float)"
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(columns), atol=1e-5)
    np.testing.assert_array_equal(out["label"], model.predict(columns))
    assert set(out["label"]) <= {"yes", "no"}


def test_missing_values_and_unseen_categories_encode_as_the_engine_does():
    columns, y = _credit()
    model = _fit(columns, y, model={"hidden_layers": [8]}, epochs=10)
    rows = slice(0, 40)
    part = {name: col[rows].copy() for name, col in columns.items()}
    part["income"] = part["income"].astype(np.float64)
    part["income"][::3] = np.nan  # imputed with the training mean
    part["employment"] = part["employment"].astype(object)
    part["employment"][1::4] = None  # missing: an all-zero one-hot
    part["region"] = part["region"].astype(object)
    out, _ = _run(model, part, pruned=False)
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(part), atol=1e-5)

    # An unseen category is an error in the engine; the graph encodes it like a missing value.
    unseen = dict(part, region=np.array(["atlantis"] * 40, dtype=object))
    missing = dict(part, region=np.array([None] * 40, dtype=object))
    with pytest.raises(engine.InputError, match="not seen in training"):
        model.predict(unseen)
    out_unseen, _ = _run(model, unseen, pruned=False)
    np.testing.assert_allclose(out_unseen["probabilities"], model.predict_proba(missing), atol=1e-5)


def test_unpruned_export_takes_every_feature_and_agrees_with_the_pruned():
    columns, y, names = _breast_cancer()
    model = _fit(columns, y, names, regularization={"l1": 0.0, "group_l1": 0.05})
    pruned_out, pruned_session = _run(model, columns)
    full_out, full_session = _run(model, columns, pruned=False)
    assert [node.name for node in full_session.get_inputs()] == names
    assert len(pruned_session.get_inputs()) < len(names)
    np.testing.assert_allclose(pruned_out["probabilities"], full_out["probabilities"], atol=1e-6)


def test_metadata_names_task_classes_and_features():
    columns, y = _credit()
    model = _fit(columns, y, model={"hidden_layers": [4]}, epochs=2)
    proto = onnx.load_from_string(to_onnx(model, pruned=False))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["regula.task"] == "classification"
    assert meta["regula.loss"] == "softmax_cross_entropy"
    assert json.loads(meta["regula.classes"]) == ["no", "yes"]
    assert json.loads(meta["regula.features"]) == model.feature_names
    assert {o.domain for o in proto.opset_import} == {"", "ai.onnx.ml"}


def test_feature_named_like_an_output_is_refused():
    X, y = datasets.load_breast_cancer(return_X_y=True)
    model = _fit(X[:, :3], y, ["label", "b", "c"], epochs=1, regularization={"l1": 0.0})
    with pytest.raises(ValueError, match="clashes"):
        to_onnx(model)


@pytest.mark.parametrize(
    ("labels", "elem"),
    [
        (np.array([3, 7]), np.int64),
        (np.array([False, True]), np.bool_),
        (np.array([0.5, 2.5]), np.float64),
        (np.array(["neg", "pos"], dtype=object), object),
    ],
)
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "binary_cross_entropy"])
def test_labels_keep_their_type(labels, elem, loss):
    X, y = datasets.load_breast_cancer(return_X_y=True)
    X = X[:, :5]
    model = _fit(X, labels[y], loss=loss, epochs=3, regularization={"l1": 0.0})
    columns = {f"x{j}": X[:, j] for j in range(5)}
    out, _ = _run(model, columns)
    assert out["label"].dtype == elem
    np.testing.assert_array_equal(out["label"], model.predict(X))


@pytest.mark.integration  # a subprocess
def test_importing_engine_loads_neither_onnx_nor_sklearn():
    import subprocess
    import sys

    code = (
        "import sys, engine, engine.prune; "
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("pruned", [True, False])
def test_an_image_model_is_not_exported(pruned):
    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 6, 6))
    model = engine.fit({"epochs": 1}, x, (x.mean(axis=(1, 2, 3)) > 0.5).astype(int))
    with pytest.raises(NotImplementedError, match="image models"):
        to_onnx(model, pruned=pruned)
