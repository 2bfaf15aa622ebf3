"""The predict route as an ordinary FastAPI route: its JSON, its errors, its body reading."""

import asyncio
import math
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from app.core.errors import InvalidInputs, PayloadTooLarge
from app.models import loading, prediction
from app.models.rows import _matrix
from tests.app.test_models import ROWS, _model


def test_post_answers_json_with_matching_length(client: TestClient) -> None:
    model_id = _model(client, epochs=2)
    response = client.post(f"/models/{model_id}/predict", json={"rows": ROWS})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    assert len(body["predictions"]) == 3 and body["classes"] == [0, 1]
    assert all(abs(sum(p) - 1.0) < 1e-6 for p in body["probabilities"])


def test_errors_keep_their_handlers(client: TestClient) -> None:
    missing = client.post("/models/nope/predict", json={"rows": ROWS})
    assert missing.status_code == 404
    assert missing.json()["detail"][0]["loc"] == ["path", "model_id"]
    model_id = _model(client, epochs=1)
    bad = client.post(f"/models/{model_id}/predict", content=b"[1]")
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["type"] == "model_attributes_type"


def test_other_methods_get_fastapis_405(client: TestClient) -> None:
    response = client.get("/models/anything/predict")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["detail"][0]["type"] == "method_not_allowed"


def test_predict_is_documented_once_with_its_body(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    operation = paths["/models/{model_id}/predict"]
    assert list(operation) == ["post"]
    assert operation["post"]["summary"] == "Predict rows"
    schema = operation["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"rows", "instances"} <= set(schema["properties"])
    assert {"404", "413", "422"} <= set(operation["post"]["responses"])


def _request(messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]]) -> Request:
    queue = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(queue)

    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


def test_read_capped_joins_chunks_and_stops_at_the_limit() -> None:
    from app.core.bodies import prediction_too_large, read_capped

    chunks = [
        {"type": "http.request", "body": b'{"rows":', "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"[]}", "more_body": False},
    ]
    assert (
        asyncio.run(read_capped(_request(chunks, []), 100, prediction_too_large)) == b'{"rows":[]}'
    )
    # Without a Content-Length the limit applies while reading (the later chunks stay unread).
    endless = [{"type": "http.request", "body": b"x" * 60, "more_body": True}] * 2
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_capped(_request(endless, []), 100, prediction_too_large))
    # With one, the body is refused before any of it is read.
    with pytest.raises(PayloadTooLarge):
        asyncio.run(
            read_capped(_request([], [(b"content-length", b"101")]), 100, prediction_too_large)
        )


def test_matrix_takes_only_plain_numbers_without_nan() -> None:
    matrix = _matrix([1, 2.5, -3.0, 4], 2, 2)
    assert matrix is not None and matrix.dtype == np.float64
    assert matrix.tolist() == [[1.0, 2.5], [-3.0, 4.0]]
    for bad in (math.nan, True, None, "1.0", 10**400):
        assert _matrix([1.0, bad], 1, 2) is None, bad
    # inf is left to the engine, which names its row and column.
    assert _matrix([1.0, math.inf], 1, 2) is not None


def _fake(labels: list[Any], proba: list[list[float]] | None) -> loading.Loaded:
    class Model:
        classes = [0, 1]

        def predict_with_proba(self, X: Any) -> tuple[np.ndarray, np.ndarray | None]:
            return np.array(labels), None if proba is None else np.array(proba)

    return loading.Loaded(
        id="m",
        owner_id=None,
        model=Model(),  # type: ignore[arg-type]
        names=("a",),
        numeric=(True,),
        index={"a": 0},
        nbytes=0,
        n_weights=1,
    )


def test_output_check_flags_only_non_finite_rows() -> None:
    # Finite outputs whose sum would overflow are fine.
    regression = prediction.predict(_fake([1e308, 1e308], None), rows=None, instances=[[1], [2]])
    assert regression["predictions"].tolist() == [1e308, 1e308]
    for bad in (math.inf, math.nan):
        with pytest.raises(InvalidInputs) as caught:
            prediction.predict(_fake([1.0, bad], None), rows=None, instances=[[1.0], [2.0]])
        assert [e["loc"] for e in caught.value.errors] == [["body", "instances", 1]]
        assert caught.value.errors[0]["type"] == "non_finite_output"


@pytest.mark.parametrize(
    "proba", [[[0.5, 0.7]], [[1.2, -0.2]], [[0.5, 0.5, 0.0]]], ids=["sum", "range", "width"]
)
def test_probabilities_that_are_not_probabilities_are_model_corrupt(
    proba: list[list[float]],
) -> None:
    from app.models.service import ModelCorrupt

    with pytest.raises(ModelCorrupt):
        prediction.predict(_fake([0], proba), rows=None, instances=[[1.0]])


def test_response_writes_numpy_arrays_as_json() -> None:
    from app.core.bodies import NumpyJSONResponse

    content = {
        "predictions": np.array([0, 1]),
        "probabilities": np.array([[0.25, 0.75], [1.0, 0.0]]),
        "classes": ["é", 'a"b'],
    }
    body = orjson.loads(NumpyJSONResponse(content).body)
    assert body == {
        "predictions": [0, 1],
        "probabilities": [[0.25, 0.75], [1.0, 0.0]],
        "classes": ["é", 'a"b'],
    }
