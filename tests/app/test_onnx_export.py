"""GET /models/{id}/export?format=onnx: ONNX Runtime answers as /predict does."""

import json
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

import engine
from app.models import loading
from engine.prune import required_features
from tests.app.test_models_cache import store
from tests.app.test_pruned_serving import CREDIT_DROPPED, credit_model, credit_rows, numeric_model


def _session(client: TestClient, model_id: str) -> ort.InferenceSession:
    r = client.get(f"/models/{model_id}/export", params={"format": "onnx"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert f"model-{model_id}.onnx" in r.headers["content-disposition"]
    onnx.checker.check_model(onnx.load_from_string(r.content))
    return ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])


def _feeds(sess: ort.InferenceSession, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    feeds = {}
    for node in sess.get_inputs():
        values = [row[node.name] for row in rows]
        if node.type == "tensor(string)":
            feeds[node.name] = np.array(values, dtype=object).reshape(-1, 1)
        else:
            dtype = np.float32 if node.type == "tensor(float)" else np.float64
            feeds[node.name] = np.array(values, dtype=dtype).reshape(-1, 1)
    return feeds


def _compare(client: TestClient, model_id: str, rows: list[dict[str, Any]]) -> list[str]:
    sess = _session(client, model_id)
    labels, proba = sess.run(["label", "probabilities"], _feeds(sess, rows))
    r = client.post(f"/models/{model_id}/predict", json={"rows": rows})
    assert r.status_code == 200, r.text
    expected = r.json()
    assert labels.tolist() == expected["predictions"]
    np.testing.assert_allclose(proba, expected["probabilities"], rtol=0, atol=1e-5)
    return [node.name for node in sess.get_inputs()]


def test_onnx_of_a_numeric_model_matches_predict(client: TestClient, session: Session) -> None:
    loading.cache.clear()
    model = numeric_model()
    model_id = store(session, model)
    rng = np.random.default_rng(1)
    from sklearn.datasets import load_breast_cancer

    X = load_breast_cancer().data[rng.choice(569, 40, replace=False)]
    rows = [dict(zip(model.feature_names, map(float, x), strict=True)) for x in X]
    inputs = _compare(client, model_id, rows)
    # The pruned graph: one input per required feature, in the listed order.
    assert inputs == client.get(f"/models/{model_id}").json()["required_features"]
    assert len(inputs) == 10


def test_onnx_of_a_string_column_model_matches_predict(
    client: TestClient, session: Session
) -> None:
    loading.cache.clear()
    model = credit_model()
    model_id = store(session, model)
    inputs = _compare(client, model_id, credit_rows(60))
    assert inputs == required_features(model)
    assert not set(CREDIT_DROPPED) & set(inputs)
    meta = {
        p.key: p.value
        for p in onnx.load_from_string(
            client.get(f"/models/{model_id}/export?format=onnx").content
        ).metadata_props
    }
    assert json.loads(meta["regula.classes"]) == model.classes


def test_export_default_is_npz_and_other_formats_are_refused(
    client: TestClient, session: Session
) -> None:
    model = credit_model()
    model_id = store(session, model)
    r = client.get(f"/models/{model_id}/export")
    assert r.status_code == 200 and engine.load(r.content).feature_names == model.feature_names
    r = client.get(f"/models/{model_id}/export", params={"format": "pickle"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "format"]
    assert client.get("/models/nope/export?format=onnx").status_code == 404
