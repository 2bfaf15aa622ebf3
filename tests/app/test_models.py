"""Models: read, list, delete, predict (labels in the dataset's values), sparsity, export, cache."""

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

import engine
from app.core.config import settings
from app.core.db import get_db
from app.models import loading
from app.models.orm import Model
from tests.app.test_jobs import classification_csv, train, upload

ROWS = [
    {"x1": 2.0, "x2": 1.5, "noise": 0.0, "color": "red"},
    {"x1": -2.0, "x2": -1.5, "noise": 0.3, "color": "blue"},
    {"x1": 1.0, "x2": 0.5, "noise": -0.2, "color": "green"},
]


def _model(client: TestClient, content: bytes | None = None, **spec: Any) -> str:
    dataset = upload(client, content or classification_csv(200))
    return train(client, dataset["id"], **spec)["model_id"]


def regression_csv(n: int = 200, seed: int = 0) -> bytes:
    """y = 3 x0 - 2 x1 + noise; x2..x5 are pure noise features."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    y = 3 * X[:, 0] - 2 * X[:, 1] + 0.05 * rng.normal(size=n)
    lines = ["x0,x1,x2,x3,x4,x5,y"]
    lines += [",".join(f"{v:.5f}" for v in [*row, t]) for row, t in zip(X, y, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def test_get_model_describes_what_was_trained(client: TestClient, session: Session) -> None:
    model_id = _model(client, epochs=3)
    response = client.get(f"/models/{model_id}")
    assert response.status_code == 200
    body = response.json()
    row = session.get(Model, model_id)
    assert body["id"] == model_id and body["job_id"] == row.job_id
    assert body["task"] == "classification" and body["target"] == "label"
    assert body["loss"] == "softmax_cross_entropy"
    assert body["feature_names"] == ["x1", "x2", "noise", "color"]
    assert body["classes"] == [0, 1]
    assert body["size_bytes"] == len(row.weights)
    assert body["metrics"]["epochs"] == 3 and body["metrics"]["metric_name"] == "accuracy"
    assert body["spec"]["dataset_id"] == row.dataset_id


def test_list_models_newest_first(client: TestClient) -> None:
    first = _model(client, epochs=1)
    second = _model(client, epochs=1)
    listed = client.get("/models").json()
    assert [m["id"] for m in listed] == [second, first]
    assert all(m["size_bytes"] > 0 for m in listed)


def test_predict_rows_gives_labels_in_the_datasets_own_values(client: TestClient) -> None:
    model_id = _model(client, epochs=30)
    response = client.post(f"/models/{model_id}/predict", json={"rows": ROWS})
    assert response.status_code == 200, response.text
    body = response.json()
    # A 0/1 CSV column comes back as the integers 0 and 1, not 0.0 / 1.0.
    assert body["predictions"] == [1, 0, 1]
    assert all(type(p) is int for p in body["predictions"])
    assert body["classes"] == [0, 1]
    probabilities = np.array(body["probabilities"])
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert probabilities[0, 1] > 0.5 > probabilities[1, 1]


def test_predict_string_labels(client: TestClient) -> None:
    content = classification_csv(200, labels=("no", "yes"))
    model_id = _model(client, content, epochs=30)
    body = client.post(f"/models/{model_id}/predict", json={"rows": ROWS}).json()
    assert body["predictions"] == ["yes", "no", "yes"]
    assert body["classes"] == ["no", "yes"]


def test_predict_instances_equals_predict_rows(client: TestClient) -> None:
    model_id = _model(client, epochs=5)
    names = client.get(f"/models/{model_id}").json()["feature_names"]
    instances = [[row[name] for name in names] for row in ROWS]
    by_rows = client.post(f"/models/{model_id}/predict", json={"rows": ROWS}).json()
    by_instances = client.post(f"/models/{model_id}/predict", json={"instances": instances})
    assert by_instances.status_code == 200
    assert by_instances.json() == by_rows


def test_regression_predictions_have_no_probabilities(client: TestClient) -> None:
    dataset = upload(client, regression_csv())
    job = train(
        client,
        dataset["id"],
        target="y",
        loss="mse",
        optimizer={"name": "adam", "learning_rate": 0.05},
        epochs=60,
        batch_size=32,
    )
    row = {"x0": 1.0, "x1": 1.0, "x2": 0.0, "x3": 0.0, "x4": 0.0, "x5": 0.0}
    body = client.post(f"/models/{job['model_id']}/predict", json={"rows": [row]}).json()
    assert body["probabilities"] is None and body["classes"] is None
    assert body["predictions"][0] == pytest.approx(1.0, abs=0.3)


def test_hinge_classifier_predicts_without_probabilities(client: TestClient) -> None:
    model_id = _model(client, loss="multiclass_hinge", epochs=10)
    body = client.post(f"/models/{model_id}/predict", json={"rows": ROWS}).json()
    assert body["predictions"] == [1, 0, 1]
    assert body["probabilities"] is None and body["classes"] == [0, 1]


def test_predict_names_the_row_and_feature_at_fault(client: TestClient) -> None:
    model_id = _model(client, epochs=1)
    rows = [dict(ROWS[0]), {k: v for k, v in ROWS[1].items() if k != "x2"}, dict(ROWS[2])]
    rows[2]["color"] = "purple"
    response = client.post(f"/models/{model_id}/predict", json={"rows": rows})
    assert response.status_code == 422
    # Checked before the engine: the missing feature is reported first.
    assert response.json()["detail"] == [
        {
            "loc": ["body", "rows", 1, "x2"],
            "msg": "rows[1]: feature 'x2' is missing.",
            "type": "missing_feature",
        }
    ]
    rows[1]["x2"] = 0.0
    response = client.post(f"/models/{model_id}/predict", json={"rows": rows})
    (item,) = response.json()["detail"]
    assert item["loc"] == ["body", "rows", 2, "color"] and item["type"] == "unknown_category"


def test_predict_batch_over_the_limit_is_413(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = _model(client, epochs=1)
    monkeypatch.setattr(settings, "max_predict_rows", 2)
    response = client.post(f"/models/{model_id}/predict", json={"rows": ROWS})
    assert response.status_code == 413
    assert response.json()["detail"][0]["type"] == "too_many_rows"
    assert client.post(f"/models/{model_id}/predict", json={"rows": ROWS[:2]}).status_code == 200


class _NoDatabase:
    """A stand-in session: any use of it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a cached prediction used the database session ({name})")


def test_cached_prediction_does_not_touch_the_database(client: TestClient) -> None:
    model_id = _model(client, epochs=1)
    first = client.post(f"/models/{model_id}/predict", json={"rows": ROWS})
    assert first.status_code == 200

    def no_database() -> Iterator[Any]:
        yield _NoDatabase()

    client.app.dependency_overrides[get_db] = no_database
    again = client.post(f"/models/{model_id}/predict", json={"rows": ROWS})
    assert again.status_code == 200 and again.json() == first.json()


def test_cache_counts_the_loaded_models_real_array_bytes(client: TestClient) -> None:
    loading.cache.clear()
    model_id = _model(client, epochs=1)
    assert client.post(f"/models/{model_id}/predict", json={"rows": ROWS}).status_code == 200
    item = loading.cache.get(model_id)
    params, grads = item.model.network.parameters()
    pre = item.model.preprocessor
    expected = sum(a.nbytes for a in [*params, *grads, pre.center, pre.scale, pre.fill])
    assert item.nbytes == expected and loading.cache.nbytes == expected
    assert item.n_weights == sum(p.size for p in params)


def test_delete_model_then_it_is_gone_everywhere(client: TestClient, session: Session) -> None:
    model_id = _model(client, epochs=1)
    assert client.post(f"/models/{model_id}/predict", json={"rows": ROWS}).status_code == 200
    response = client.delete(f"/models/{model_id}")
    assert response.status_code == 204 and response.content == b""
    assert session.get(Model, model_id) is None
    for method, path, body in (
        ("GET", f"/models/{model_id}", None),
        ("POST", f"/models/{model_id}/predict", {"rows": ROWS}),  # not served from the cache
        ("GET", f"/models/{model_id}/export", None),
        ("DELETE", f"/models/{model_id}", None),
    ):
        gone = client.request(method, path, json=body)
        assert gone.status_code == 404, (method, path)
        assert gone.json()["detail"][0]["type"] == "not_found"


def test_export_loads_with_engine_and_predicts_identically(client: TestClient) -> None:
    model_id = _model(client, epochs=5)
    response = client.get(f"/models/{model_id}/export")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="model-{model_id}.npz"'
    )
    model = engine.load(response.content)
    columns = {name: [row[name] for row in ROWS] for name in model.feature_names}
    columns["color"] = np.array(columns["color"], dtype=object)
    served = client.post(f"/models/{model_id}/predict", json={"rows": ROWS}).json()
    assert model.predict(columns).tolist() == served["predictions"]
    np.testing.assert_allclose(model.predict_proba(columns), served["probabilities"])


def test_sparsity_shows_l1_dropping_noise_features(client: TestClient) -> None:
    dataset = upload(client, regression_csv(300))
    job = train(
        client,
        dataset["id"],
        target="y",
        loss="mse",
        model={"hidden_layers": []},
        regularization={"l1": 0.2},
        optimizer={"name": "fista", "learning_rate": 0.1},
        epochs=200,
        batch_size=300,
    )
    response = client.get(f"/models/{job['model_id']}/sparsity")
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["tolerance"] == 0.0
    assert stats["total_weights"] == 6
    assert stats["zero_weights"] >= 3
    assert {"x0", "x1"} <= set(stats["selected_features"])
    assert set(stats["dropped_features"]) <= {"x2", "x3", "x4", "x5"}
    assert len(stats["dropped_features"]) == stats["zero_weights"]
    assert stats["feature_importance"]["x0"] > stats["feature_importance"]["x1"] > 0
    (layer,) = stats["layers"]
    assert layer["shape"] == [6, 1] and layer["zeros"] == stats["zero_weights"]
    # A tolerance counts near-zero weights too, and is validated.
    loose = client.get(f"/models/{job['model_id']}/sparsity", params={"tolerance": 10.0}).json()
    assert loose["tolerance"] == 10.0 and loose["layers"][0]["near_zero"] == 6
    bad = client.get(f"/models/{job['model_id']}/sparsity", params={"tolerance": -1})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "tolerance"]
