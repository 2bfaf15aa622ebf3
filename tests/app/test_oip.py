"""Open Inference Protocol v2 (REST): metadata, health and infer in JSON and binary tensors give
what /models/{id}/predict gives, and errors are the protocol's ``{"error": "..."}``."""

import json
import math
import struct
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

import engine
from app.core.auth import create_key
from app.core.config import settings
from app.models import loading
from engine.prune import required_features
from tests.app.test_models_cache import store
from tests.app.test_pruned_serving import CREDIT_DROPPED, credit_model, credit_rows, numeric_model


@pytest.fixture
def credit(session: Session) -> tuple[str, engine.Model]:
    loading.cache.clear()
    model = credit_model()
    return store(session, model), model


@pytest.fixture
def numeric(session: Session) -> tuple[str, engine.Model]:
    loading.cache.clear()
    model = numeric_model()
    return store(session, model), model


def _column_tensors(model: engine.Model, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One JSON [N, 1] tensor per required feature."""
    tensors = []
    pre = model.preprocessor
    for name in required_features(model):
        kind = pre.kinds[pre.feature_names.index(name)]
        tensors.append(
            {
                "name": name,
                "shape": [len(rows), 1],
                "datatype": "FP64" if kind == "numeric" else "BYTES",
                "data": [row[name] for row in rows],
            }
        )
    return tensors


def _bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def _binary_body(request: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(request).encode()
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}


def _read_binary(response: Any) -> dict[str, Any]:
    """Outputs of a binary answer, decoded: {name: list or ndarray}."""
    cut = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:cut])
    out, pos = {}, cut
    for o in header["outputs"]:
        size = o["parameters"]["binary_data_size"]
        chunk = response.content[pos : pos + size]
        pos += size
        if o["datatype"] == "BYTES":
            values, i = [], 0
            while i < len(chunk):
                (n,) = struct.unpack_from("<I", chunk, i)
                values.append(chunk[i + 4 : i + 4 + n].decode())
                i += 4 + n
            out[o["name"]] = values
        else:
            dtype = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8"}[o["datatype"]]
            out[o["name"]] = np.frombuffer(chunk, dtype=dtype).reshape(o["shape"])
    assert pos == len(response.content)
    return out


def _predict(client: TestClient, model_id: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    r = client.post(f"/models/{model_id}/predict", json={"rows": rows})
    assert r.status_code == 200, r.text
    return r.json()


def test_server_metadata_and_health(client: TestClient) -> None:
    assert client.get("/v2").json() == {
        "name": "regula",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_model_metadata_lists_required_inputs_and_outputs(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, model = credit
    meta = client.get(f"/v2/models/{model_id}").json()
    assert meta["name"] == model_id and meta["platform"] == "regula"
    required = required_features(model)
    assert [i["name"] for i in meta["inputs"]] == required
    types = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert types["employment"] == "BYTES" and types["income"] == "FP64"
    assert all(i["shape"] == [-1, 1] for i in meta["inputs"])
    assert meta["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]
    assert meta["parameters"]["classes"] == model.classes
    assert meta["parameters"]["features"] == model.feature_names
    assert client.get(f"/v2/models/{model_id}/ready").status_code == 200


@pytest.mark.parametrize("binary", [False, True])
def test_infer_outputs_have_the_datatypes_the_metadata_declares(
    client: TestClient, credit: tuple[str, engine.Model], binary: bool
) -> None:
    # regression: the metadata declared FP32 probabilities (a float32 model) and infer sent FP64
    model_id, model = credit
    declared = {
        o["name"]: o["datatype"] for o in client.get(f"/v2/models/{model_id}").json()["outputs"]
    }
    request: dict[str, Any] = {"inputs": _column_tensors(model, credit_rows(3))}
    if binary:
        request["parameters"] = {"binary_data_output": True}
    r = client.post(f"/v2/models/{model_id}/infer", json=request)
    assert r.status_code == 200, r.text
    if binary:
        cut = int(r.headers["inference-header-content-length"])
        outputs = json.loads(r.content[:cut])["outputs"]
    else:
        outputs = r.json()["outputs"]
    assert {o["name"]: o["datatype"] for o in outputs} == declared
    if binary:
        proba = _read_binary(r)["probabilities"]
        assert proba.dtype == np.float32
        expected = _predict(client, model_id, credit_rows(3))["probabilities"]
        np.testing.assert_allclose(proba, expected, rtol=1e-6)


def test_version_one_answers_as_the_unversioned_routes(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, model = credit
    meta = client.get(f"/v2/models/{model_id}").json()
    assert meta["versions"] == ["1"]
    base = f"/v2/models/{model_id}/versions/1"
    assert client.get(base).json() == meta
    ready = client.get(f"{base}/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    rows = credit_rows(5)
    r = client.post(f"{base}/infer", json={"id": "v1", "inputs": _column_tensors(model, rows)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == model_id and body["model_version"] == "1"
    label = next(o for o in body["outputs"] if o["name"] == "label")
    assert label["data"] == _predict(client, model_id, rows)["predictions"]


def test_unknown_version_is_404_in_the_protocols_shape(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, model = credit
    base = f"/v2/models/{model_id}/versions/2"
    assert "'2'" in _error(client.get(base), 404)
    _error(client.get(f"{base}/ready"), 404)
    inputs = _column_tensors(model, credit_rows(1))
    _error(client.post(f"{base}/infer", json={"inputs": inputs}), 404)
    # An unknown model is named as such, whatever the version.
    assert "nope" in _error(client.get("/v2/models/nope/versions/1"), 404)


def test_json_infer_per_feature_tensors_matches_predict(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, model = credit
    rows = credit_rows(20)
    r = client.post(
        f"/v2/models/{model_id}/infer",
        json={"id": "req-1", "inputs": _column_tensors(model, rows)},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["model_name"] == model_id and body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    expected = _predict(client, model_id, rows)
    assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["shape"] == [20]
    assert outputs["label"]["data"] == expected["predictions"]
    assert outputs["probabilities"]["shape"] == [20, 2]
    proba = np.array(outputs["probabilities"]["data"]).reshape(20, 2)
    np.testing.assert_allclose(proba, expected["probabilities"], rtol=0, atol=1e-7)


def test_dropped_features_may_be_sent_and_are_ignored(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, model = credit
    rows = credit_rows(3)
    region = {"name": "region", "shape": [3], "datatype": "BYTES", "data": ["atlantis"] * 3}
    inputs = [*_column_tensors(model, rows), region]
    r = client.post(f"/v2/models/{model_id}/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    label = next(o for o in r.json()["outputs"] if o["name"] == "label")
    assert label["data"] == _predict(client, model_id, rows)["predictions"]
    assert "region" in CREDIT_DROPPED


def test_binary_inputs_and_outputs_match_predict(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, model = credit
    rows = credit_rows(7)
    inputs, blobs = [], []
    for tensor in _column_tensors(model, rows):
        if tensor["datatype"] == "BYTES":
            blob = _bytes_tensor(tensor["data"])
        else:
            blob = np.asarray(tensor["data"], dtype="<f8").tobytes()
        inputs.append({**tensor, "data": None, "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    for t in inputs:
        del t["data"]
    request = {
        "inputs": inputs,
        "outputs": [
            {"name": "label", "parameters": {"binary_data": True}},
            {"name": "probabilities", "parameters": {"binary_data": True}},
        ],
    }
    content, headers = _binary_body(request, blobs)
    r = client.post(f"/v2/models/{model_id}/infer", content=content, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    out = _read_binary(r)
    expected = _predict(client, model_id, rows)
    assert out["label"] == expected["predictions"]
    np.testing.assert_allclose(out["probabilities"], expected["probabilities"], rtol=0, atol=1e-7)


def test_one_input_matrix_for_a_numeric_model(
    client: TestClient, numeric: tuple[str, engine.Model]
) -> None:
    model_id, model = numeric
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, len(model.feature_names))) * 3 + 10
    blob = X.astype("<f4").tobytes()
    request = {
        "inputs": [
            {
                "name": "input",
                "shape": list(X.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(blob)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    content, headers = _binary_body(request, [blob])
    r = client.post(f"/v2/models/{model_id}/infer", content=content, headers=headers)
    assert r.status_code == 200, r.text
    out = _read_binary(r)
    X32 = X.astype(np.float32).astype(np.float64)
    expected = client.post(f"/models/{model_id}/predict", json={"instances": X32.tolist()}).json()
    assert out["label"].tolist() == expected["predictions"]
    np.testing.assert_allclose(out["probabilities"], expected["probabilities"], rtol=0, atol=1e-7)
    # The same in JSON, nested data.
    r = client.post(
        f"/v2/models/{model_id}/infer",
        json={
            "inputs": [
                {"name": "input", "shape": [5, 30], "datatype": "FP64", "data": X32.tolist()}
            ],
            "outputs": [{"name": "label"}],
        },
    )
    (label,) = r.json()["outputs"]
    assert label["datatype"] == "INT64" and label["data"] == expected["predictions"]


def test_regression_answers_predictions_fp64(client: TestClient, session: Session) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    model = engine.fit(
        {"loss": "mse", "epochs": 2}, X, X @ [1.0, -2.0, 0.5], feature_names=["a", "b", "c"]
    )
    model_id = store(session, model)
    outs = client.get(f"/v2/models/{model_id}").json()["outputs"]
    assert outs == [{"name": "predictions", "datatype": "FP64", "shape": [-1]}]
    r = client.post(
        f"/v2/models/{model_id}/infer",
        json={
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 3],
                    "datatype": "FP64",
                    "data": [0.1, 0.2, 0.3, -1.0, 0.0, 1.0],
                }
            ]
        },
    )
    (out,) = r.json()["outputs"]
    expected = client.post(
        f"/models/{model_id}/predict", json={"instances": [[0.1, 0.2, 0.3], [-1.0, 0.0, 1.0]]}
    ).json()
    assert out["name"] == "predictions" and out["shape"] == [2]
    np.testing.assert_allclose(out["data"], expected["predictions"], rtol=0, atol=1e-12)


def _error(r: Any, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    assert "Traceback" not in body["error"] and "sqlalchemy" not in body["error"].lower()
    return body["error"]


def test_errors_are_the_protocols(client: TestClient, credit: tuple[str, engine.Model]) -> None:
    model_id, model = credit
    url = f"/v2/models/{model_id}/infer"
    rows = credit_rows(2)
    good = _column_tensors(model, rows)
    assert "nope" in _error(client.get("/v2/models/nope"), 404)
    _error(client.post("/v2/models/nope/infer", json={"inputs": good}), 404)
    assert "income" in _error(client.post(url, json={"inputs": good[1:]}), 400)
    wrong = [{**good[0], "name": "colour"}, *good[1:]]
    assert "colour" in _error(client.post(url, json={"inputs": wrong}), 400)
    bad_type = [{**t, "datatype": "BYTES"} if t["name"] == "income" else t for t in good]
    assert "numeric" in _error(client.post(url, json={"inputs": bad_type}), 400)
    short = [{**good[0], "shape": [3, 1]}, *good[1:]]
    _error(client.post(url, json={"inputs": short}), 400)
    unseen = [
        {**t, "data": ["astronaut", "salaried"]} if t["name"] == "employment" else t for t in good
    ]
    assert "astronaut" in _error(client.post(url, json={"inputs": unseen}), 400)
    _error(client.post(url, json={"inputs": good, "outputs": [{"name": "scores"}]}), 400)
    _error(client.post(url, content=b"{not json"), 400)
    _error(client.post(url, json={"inputs": "x"}), 400)
    content, headers = _binary_body(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 11],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 400},
                }
            ]
        },
        [b"\0" * 8],
    )
    _error(client.post(url, content=content, headers=headers), 400)


def test_non_finite_binary_values_are_refused_with_our_sentence(
    client: TestClient, numeric: tuple[str, engine.Model]
) -> None:
    model_id, _ = numeric
    X = np.ones((2, 30))
    X[1, 3] = math.nan
    blob = X.tobytes()
    content, headers = _binary_body(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 30],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        },
        [blob],
    )
    msg = _error(client.post(f"/v2/models/{model_id}/infer", content=content, headers=headers), 400)
    assert "NaN" in msg and "instances[1]" in msg


def test_infer_needs_the_owners_key(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = create_key(session=session, name="a")
    _, other = create_key(session=session, name="b")
    monkeypatch.setattr(settings, "auth_required", True)
    loading.cache.clear()
    owner = client.get("/models", headers={"Authorization": f"Bearer {key}"})
    assert owner.status_code == 200
    from app.core.auth import get_by_plain_key

    model = credit_model()
    model_id = store(session, model, owner_id=get_by_plain_key(session=session, key=key).id)
    url = f"/v2/models/{model_id}"
    r = client.get(url)
    _error(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"
    _error(client.get(url, headers={"Authorization": f"Bearer {other}"}), 404)
    assert client.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/v2/health/live").status_code == 200
