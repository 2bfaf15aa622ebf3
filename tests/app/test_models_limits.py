"""Predict limits: the body cap (413), absurd key counts, capped error lists, capped strings."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.core.config import settings
from app.models.schemas import PredictRequest
from tests.app.test_models_cache import FEATURES, ROWS, fit_model, store


@pytest.fixture
def model_id(client: TestClient, session: Session) -> str:
    return store(session, fit_model())


def _assert_small_422(response: object, code: str, max_bytes: int = 4096) -> list[dict]:
    assert response.status_code == 422, response.text[:500]
    assert len(response.content) <= max_bytes, len(response.content)
    detail = response.json()["detail"]
    assert any(item["type"] == code for item in detail), detail
    return detail


def test_body_over_the_predict_cap_is_413_by_content_length(
    client: TestClient, model_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "max_predict_mb", 1)
    rows = [dict(ROWS[0]) for _ in range(40_000)]  # ~1.3 MB of JSON
    body = json.dumps({"rows": rows}).encode()
    assert len(body) > settings.max_predict_bytes
    response = client.post(
        f"/models/{model_id}/predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    (item,) = response.json()["detail"]
    assert item["type"] == "too_large" and "REGULA_MAX_PREDICT_MB" in item["msg"]
    # Far below the upload limit: predictions are capped on their own.
    assert settings.max_predict_bytes < settings.max_upload_bytes


def test_chunked_body_over_the_cap_is_413_while_reading(
    client: TestClient, model_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "max_predict_mb", 1)
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        yield b'{"rows": ['
        for _ in range(40):
            sent.append(1)
            yield b'{"a": 1.0, "b": 2.0, "c": 3.0},' * 1000
        yield b'{"a": 1.0, "b": 2.0, "c": 3.0}]}'

    response = client.post(
        f"/models/{model_id}/predict",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413, response.text
    assert response.json()["detail"][0]["type"] == "too_large"


def test_chunked_body_under_the_cap_predicts(client: TestClient, model_id: str) -> None:
    def chunks() -> Iterator[bytes]:
        text = json.dumps({"rows": ROWS}).encode()
        yield text[:7]
        yield text[7:]

    response = client.post(
        f"/models/{model_id}/predict",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == len(ROWS)


def test_300k_unknown_feature_names_give_a_small_422_naming_the_row(
    client: TestClient, model_id: str
) -> None:
    hostile = {f"feature_{i}": 0.0 for i in range(300_000)}
    response = client.post(f"/models/{model_id}/predict", json={"rows": [ROWS[0], hostile]})
    (item,) = _assert_small_422(response, "too_many_keys", max_bytes=1024)
    assert item["loc"] == ["body", "rows", 1]
    assert "rows[1]" in item["msg"] and "300000 keys" in item["msg"]


def test_error_list_is_capped_with_a_summary(client: TestClient, model_id: str) -> None:
    rows = [{"a": None, "b": None, "c": None} for _ in range(200)]  # 600 bad values
    detail = _assert_small_422(
        client.post(f"/models/{model_id}/predict", json={"rows": rows}), "missing_value", 16_384
    )
    assert len(detail) == 51
    assert all(item["type"] == "missing_value" for item in detail[:50])
    assert detail[-1]["type"] == "too_many_errors" and "50" in detail[-1]["msg"]
    assert detail[0]["loc"] == ["body", "rows", 0, "a"]


def test_huge_keys_and_values_are_quoted_short(client: TestClient, model_id: str) -> None:
    key = "k" * 100_000
    row = {**ROWS[0], key: 1.0}
    response = client.post(f"/models/{model_id}/predict", json={"rows": [row]})
    (item,) = _assert_small_422(response, "unknown_feature", max_bytes=1024)
    assert item["loc"][:3] == ["body", "rows", 0] and len(item["loc"][3]) <= 40
    value = "v" * 100_000
    response = client.post(f"/models/{model_id}/predict", json={"rows": [{**ROWS[0], "a": value}]})
    (item,) = _assert_small_422(response, "not_numeric", max_bytes=1024)
    assert item["loc"] == ["body", "rows", 0, "a"]
    # A stray top-level key is pydantic's error, shortened the same way.
    response = client.post(f"/models/{model_id}/predict", json={"rows": ROWS, key: 1})
    (item,) = _assert_small_422(response, "extra_forbidden", max_bytes=1024)


def test_large_bodies_are_parsed_and_predicted(client: TestClient, model_id: str) -> None:
    # Bigger than the inline parse size and the inline predict cost: the thread-pool paths.
    rows = [{name: float(i % 7) for name in FEATURES} for i in range(5000)]
    response = client.post(f"/models/{model_id}/predict", json={"instances": None, "rows": rows})
    assert response.status_code == 200, response.text[:300]
    body = response.json()
    assert len(body["predictions"]) == 5000 and len(body["probabilities"]) == 5000


def test_a_body_of_absurdly_many_keys_is_refused_before_it_is_parsed(
    client: TestClient, model_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # regression: a 13 MB row of 1M unknown keys was parsed whole (seconds of the interpreter,
    # /healthz waiting) before the row's key count refused it
    parsed: list[bytes] = []
    real = PredictRequest.model_validate_json

    def spy(raw: bytes, *args: Any, **kwargs: Any) -> PredictRequest:
        parsed.append(raw)
        return real(raw, *args, **kwargs)

    monkeypatch.setattr(PredictRequest, "model_validate_json", spy)
    body = json.dumps({"rows": [{f"k{i}": 0 for i in range(100_000)}]})
    r = client.post(
        f"/models/{model_id}/predict", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["type"] == "too_many_keys" and error["loc"] == ["body", "rows", 0]
    assert "rows[0] has 100000 keys" in error["msg"]
    assert parsed == []
    # an ordinary large body still parses and predicts
    rows = ROWS * 2000
    r = client.post(f"/models/{model_id}/predict", json={"rows": rows})
    assert r.status_code == 200, r.text[:300]
