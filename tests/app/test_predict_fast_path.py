"""The predict route's direct POST path: same bytes, headers and error responses as FastAPI's."""

import json

from fastapi.testclient import TestClient

from tests.app.test_models import ROWS, _model


def test_post_answers_with_exact_json_bytes_and_headers(client: TestClient) -> None:
    model_id = _model(client, epochs=2)
    response = client.post(f"/models/{model_id}/predict", json={"rows": ROWS})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    # Compact separators, the same document json.dumps would write.
    assert response.content == json.dumps(body, separators=(",", ":")).encode()
    assert len(body["predictions"]) == 3 and body["classes"] == [0, 1]
    assert all(abs(sum(p) - 1.0) < 1e-6 for p in body["probabilities"])


def test_errors_raised_on_the_direct_path_keep_their_handlers(client: TestClient) -> None:
    missing = client.post("/models/nope/predict", json={"rows": ROWS})
    assert missing.status_code == 404
    assert missing.json()["detail"][0]["loc"] == ["path", "model_id"]
    model_id = _model(client, epochs=1)
    bad = client.post(f"/models/{model_id}/predict", content=b"[1]")
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["type"] == "model_attributes_type"


def test_other_methods_still_get_fastapis_405(client: TestClient) -> None:
    response = client.get("/models/anything/predict")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["detail"][0]["type"] == "method_not_allowed"


def test_predict_is_matched_first_and_documented_once(client: TestClient) -> None:
    from app.models.router import PredictFirst

    assert isinstance(client.app.router.routes[0], PredictFirst)
    paths = client.get("/openapi.json").json()["paths"]
    operation = paths["/models/{model_id}/predict"]
    assert list(operation) == ["post"]
    assert operation["post"]["summary"] == "Predict rows"
    assert (
        "rows"
        in operation["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    )


def test_read_body_joins_chunks_and_raises_on_disconnect() -> None:
    import asyncio

    import pytest
    from starlette.requests import ClientDisconnect, Request

    from app.models.router import _read_body

    def request(messages: list[dict]) -> Request:
        queue = iter(messages)

        async def receive() -> dict:
            return next(queue)

        return Request({"type": "http", "method": "POST", "headers": []}, receive)

    chunked = request(
        [
            {"type": "http.request", "body": b'{"rows":', "more_body": True},
            {"type": "http.request", "body": b"", "more_body": True},
            {"type": "http.request", "body": b"[]}", "more_body": False},
        ]
    )
    assert asyncio.run(_read_body(chunked)) == b'{"rows":[]}'
    assert asyncio.run(chunked.body()) == b'{"rows":[]}'  # cached, not read again
    assert asyncio.run(_read_body(request([{"type": "http.request"}]))) == b""
    with pytest.raises(ClientDisconnect):
        asyncio.run(_read_body(request([{"type": "http.disconnect"}])))


def test_flat_matrix_takes_only_plain_finite_numbers() -> None:
    import math

    import numpy as np

    from app.models.prediction import _SUM_TEST_MAX, _flat_matrix

    matrix = _flat_matrix([1, 2.5, -3.0, 4], 2, 2)
    assert matrix is not None and matrix.dtype == np.float64
    assert matrix.tolist() == [[1.0, 2.5], [-3.0, 4.0]]
    for bad in (math.nan, math.inf, -math.inf, True, None, "1.0", 10**400):
        assert _flat_matrix([1.0, bad], 1, 2) is None, bad
    # Finite values whose sum overflows: left to the slow path, which accepts them.
    assert _flat_matrix([1e308, 1e308], 1, 2) is None
    # Past the sum test's size, NumPy finds the NaN.
    big = [0.5] * (_SUM_TEST_MAX + 2)
    assert _flat_matrix(big, len(big) // 2, 2) is not None
    big[-1] = math.nan
    assert _flat_matrix(big, len(big) // 2, 2) is None


def test_encode_writes_what_json_dumps_writes() -> None:
    from app.models.router import _encode

    for value in (
        {"predictions": [0, "yes"], "probabilities": [[0.25, 0.75]], "classes": [0, "yes"]},
        {"predictions": [1e-05, -0.0, 10**30, 3.141592653589793], "probabilities": None},
        {"classes": ["é", "\u2028", 'a"b\\c', True, None]},
    ):
        assert _encode(value) == json.dumps(value, separators=(",", ":"))


def test_output_check_flags_only_non_finite_rows() -> None:
    import math
    from types import SimpleNamespace

    import numpy as np
    import pytest

    from app.models import prediction

    def item(out: list[list[float]]) -> prediction.Loaded:
        model = SimpleNamespace(
            decision_function=lambda X: np.array(out, dtype=np.float64),
            task="regression",
            classes=None,
        )
        return prediction.Loaded(
            id="m",
            owner_id=None,
            model=model,  # type: ignore[arg-type]
            names=("a",),
            numeric=(True,),
            name_set=frozenset({"a"}),
            labels=None,
        )

    # Finite outputs whose sum overflows are still fine.
    result = prediction.predict(item([[1e308], [1e308]]), rows=None, instances=[[1.0], [2.0]])
    assert result["predictions"] == [1e308, 1e308]
    for bad in (math.inf, math.nan):
        with pytest.raises(prediction.PredictInvalid) as caught:
            prediction.predict(item([[1.0], [bad]]), rows=None, instances=[[1.0], [2.0]])
        assert [e["loc"] for e in caught.value.errors] == [["body", "instances", 1]]
        assert caught.value.errors[0]["type"] == "non_finite_output"
