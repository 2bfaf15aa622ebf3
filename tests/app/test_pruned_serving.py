"""Pruned serving: a prediction reads only the features with a non-zero first-layer weight.

Models are fitted by the engine, then the first-layer rows of some features are set to exactly
zero (what L1 / group L1 leave behind) and stored as a finished job stores them.
"""

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

import engine
from app.models import loading, prediction
from app.models.rows import engine_input
from engine.prune import required_features
from tests.app.test_models_cache import store

CREDIT = Path(__file__).resolve().parents[2] / "app" / "examples" / "credit.csv"
CATEGORICAL = ("employment", "region")
# Dropped from the credit model: a string column and three numeric ones.
CREDIT_DROPPED = ("region", "noise_1", "noise_2", "shoe_size")


def credit_table(n: int | None = None) -> tuple[dict[str, list[Any]], list[str]]:
    """The example credit CSV as columns (numbers as floats, strings kept) and its target."""
    with CREDIT.open() as f:
        records = list(csv.DictReader(f))[:n]
    names = [k for k in records[0] if k != "default"]
    columns = {k: [r[k] if k in CATEGORICAL else float(r[k]) for r in records] for k in names}
    return columns, [r["default"] for r in records]


def credit_rows(n: int) -> list[dict[str, Any]]:
    columns, _ = credit_table(n)
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def zero_features(model: engine.Model, names: tuple[str, ...]) -> engine.Model:
    """Set the first-layer rows of ``names`` (their one-hot rows too) to exactly zero."""
    pre = model.preprocessor
    weights = model.network.get_weights()
    W = weights["dense0.W"].copy()
    for name in names:
        start, stop = pre.groups[pre.feature_names.index(name)]
        W[start:stop] = 0.0
    weights["dense0.W"] = W
    model.network.set_weights(weights)
    return model


def credit_model(hidden: list[int] | None = None, dropped: tuple[str, ...] = CREDIT_DROPPED):
    columns, y = credit_table(400)
    spec = {
        "loss": "softmax_cross_entropy",
        "model": {"hidden_layers": [8] if hidden is None else hidden},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "epochs": 3,
        "seed": 0,
    }
    return zero_features(engine.fit(spec, columns, y), dropped)


def numeric_model(dropped: int = 20, loss: str = "softmax_cross_entropy") -> engine.Model:
    """breast_cancer (30 numeric features, two classes), the last ``dropped`` features zeroed."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    spec = {"loss": loss, "model": {"hidden_layers": [16]}, "epochs": 3, "seed": 0}
    model = engine.fit(spec, data.data, data.target, feature_names=names)
    return zero_features(model, tuple(names[len(names) - dropped :]))


@pytest.fixture
def credit(session: Session) -> tuple[str, engine.Model]:
    loading.cache.clear()
    model = credit_model()
    return store(session, model), model


def _predict(client: TestClient, model_id: str, **body: Any) -> dict[str, Any]:
    r = client.post(f"/models/{model_id}/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_get_model_lists_the_required_features(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, model = credit
    body = client.get(f"/models/{model_id}").json()
    assert body["feature_names"] == model.feature_names
    assert body["required_features"] == [n for n in model.feature_names if n not in CREDIT_DROPPED]
    assert body["required_features"] == required_features(model)


def test_rows_without_the_dropped_features_predict_as_the_full_model(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, model = credit
    rows = credit_rows(25)
    full = _predict(client, model_id, rows=rows)
    short = _predict(
        client,
        model_id,
        rows=[{k: v for k, v in r.items() if k not in CREDIT_DROPPED} for r in rows],
    )
    labels, proba = model.predict_with_proba({k: [r[k] for r in rows] for k in rows[0]})
    assert full["predictions"] == short["predictions"] == labels.tolist()
    np.testing.assert_allclose(short["probabilities"], proba, rtol=0, atol=1e-6)
    np.testing.assert_allclose(full["probabilities"], short["probabilities"], rtol=0, atol=0)


def test_values_of_dropped_features_are_ignored_unseen_categories_included(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, _ = credit
    rows = credit_rows(5)
    odd = [{**r, "region": "atlantis", "noise_1": 1e6} for r in rows]
    assert _predict(client, model_id, rows=odd) == _predict(client, model_id, rows=rows)
    names = list(rows[0])
    instances = [[r[k] for k in names] for r in odd]
    assert _predict(client, model_id, instances=instances) == _predict(client, model_id, rows=rows)


def test_required_features_keep_every_check(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, _ = credit
    row = credit_rows(1)[0]
    cases = {
        "missing_feature": ({k: v for k, v in row.items() if k != "income"}, "income"),
        "unknown_feature": ({**row, "colour": "red"}, "colour"),
        "unknown_category": ({**row, "employment": "astronaut"}, "employment"),
        "missing_value": ({**row, "debt_ratio": None}, "debt_ratio"),
    }
    for code, (bad, feature) in cases.items():
        r = client.post(f"/models/{model_id}/predict", json={"rows": [bad]})
        assert r.status_code == 422, (code, r.text)
        (error,) = r.json()["detail"]
        assert error["type"] == code and error["loc"] == ["body", "rows", 0, feature]


def test_instances_keep_the_trained_width_and_name_the_trained_position(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, model = credit
    row = credit_rows(1)[0]
    values = [row[k] for k in model.feature_names]
    r = client.post(f"/models/{model_id}/predict", json={"instances": [values[:-1]]})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "wrong_width"
    j = model.feature_names.index("debt_ratio")
    values[j] = "high"
    r = client.post(f"/models/{model_id}/predict", json={"instances": [values]})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "instances", 0, j]


def test_sparsity_and_weights_describe_the_trained_model(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, model = credit
    sparsity = client.get(f"/models/{model_id}/sparsity").json()
    assert set(CREDIT_DROPPED) <= set(sparsity["dropped_features"])
    weights = client.get(f"/models/{model_id}/weights").json()
    assert weights["row_names"] == list(model.preprocessor.encoded_names)
    np.testing.assert_array_equal(weights["values"], model.network.get_weights()["dense0.W"])


def test_the_cache_predicts_with_the_pruned_copy_and_counts_both(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, model = credit
    assert (
        client.post(f"/models/{model_id}/predict", json={"rows": credit_rows(1)}).status_code == 200
    )
    item = loading.cache.get(model_id)
    assert item is not None and item.full is not None
    assert item.model.feature_names == required_features(model)
    assert item.nbytes == loading.model_nbytes(item.model) + loading.model_nbytes(item.full)
    assert item.n_weights < sum(p.size for p in model.network.parameters()[0])


def test_a_model_with_nothing_to_prune_is_held_once(session: Session) -> None:
    model = credit_model(dropped=())
    item = loading.loaded("m", None, model)
    assert item.full is None and item.model is model and item.required == item.names


def test_all_numeric_pruned_rows_take_the_matrix_path(session: Session) -> None:
    model = numeric_model()
    item = loading.loaded("m", None, model)
    required = required_features(model)
    assert len(required) == 10 and item.required == tuple(required)
    rng = np.random.default_rng(0)
    rows = [
        {n: float(v) for n, v in zip(item.names, rng.normal(size=30), strict=True)}
        for _ in range(3)
    ]
    X = engine_input(item, "rows", [{n: r[n] for n in required} for r in rows])
    assert isinstance(X, np.ndarray) and X.shape == (3, 10)
    out = prediction.predict(item, rows=rows, instances=None)
    _, proba = model.predict_with_proba(np.array([[r[n] for n in item.names] for r in rows]))
    np.testing.assert_allclose(out["probabilities"], proba, rtol=0, atol=1e-6)
