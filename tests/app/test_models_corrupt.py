"""Corrupt stored weights: every read answers ``model_corrupt`` in our error shape, never bytes,
never a prediction, never a generic 500."""

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.models import loading
from app.models.orm import Model, weights_checksum
from tests.app.test_models_cache import ROWS, fit_model, store


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :]


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _with_meta(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """The same npz with its JSON metadata changed."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(arrays["meta"].tobytes())
    change(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _swap_classes(meta: dict[str, Any]) -> None:
    meta["classes"] = list(reversed(meta["classes"]))


CORRUPTIONS = {
    "flipped-bytes": _flip,
    "truncated": _truncate,
    "altered-metadata": lambda data: _with_meta(data, _swap_classes),
}


def _corrupt(
    session: Session, model_id: str, damage: Callable[[bytes], bytes], *, rehash: bool
) -> None:
    row = session.get(Model, model_id)
    assert row is not None
    weights = damage(row.weights)
    values: dict[str, Any] = {"weights": weights}
    if rehash:  # as if the checksum had been rewritten along with the bytes
        values["weights_sha256"] = weights_checksum(weights)
    session.execute(update(Model).where(Model.id == model_id).values(**values))
    session.commit()
    loading.cache.clear()


def _assert_corrupt(response: Any) -> None:
    assert response.status_code == 500, response.text
    assert response.headers["content-type"] == "application/json"
    (item,) = response.json()["detail"]
    assert item["type"] == "model_corrupt" and item["loc"] == ["path", "model_id"]
    assert "corrupt" in item["msg"] and "Traceback" not in item["msg"]


REQUESTS = {
    "predict": lambda c, m: c.post(f"/models/{m}/predict", json={"rows": ROWS}),
    "sparsity": lambda c, m: c.get(f"/models/{m}/sparsity"),
    "weights": lambda c, m: c.get(f"/models/{m}/weights"),
    "export": lambda c, m: c.get(f"/models/{m}/export"),
}


@pytest.mark.parametrize("endpoint", list(REQUESTS))
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_weights_answer_model_corrupt(
    client: TestClient, session: Session, corruption: str, endpoint: str
) -> None:
    model_id = store(session, fit_model())
    _corrupt(session, model_id, CORRUPTIONS[corruption], rehash=False)
    _assert_corrupt(REQUESTS[endpoint](client, model_id))
    # The connection stays usable and the rest of the model still reads.
    assert client.get(f"/models/{model_id}").status_code == 200


@pytest.mark.parametrize("corruption", ["flipped-bytes", "truncated"])
def test_unloadable_bytes_with_a_matching_checksum_are_model_corrupt(
    client: TestClient, session: Session, corruption: str
) -> None:
    model_id = store(session, fit_model())
    _corrupt(session, model_id, CORRUPTIONS[corruption], rehash=True)
    for endpoint in ("predict", "sparsity", "weights"):
        _assert_corrupt(REQUESTS[endpoint](client, model_id))


def test_metadata_that_does_not_fit_the_weights_never_predicts_probabilities(
    client: TestClient, session: Session
) -> None:
    # Three classes claimed for a network with two outputs: the checksum matches (rewritten), the
    # archive loads, and only the last guard (probabilities per class) stands in the way.
    model_id = store(session, fit_model())
    _corrupt(
        session,
        model_id,
        lambda data: _with_meta(data, lambda meta: meta.__setitem__("classes", [0, 1, 2])),
        rehash=True,
    )
    _assert_corrupt(REQUESTS["predict"](client, model_id))


def test_restored_bytes_predict_again(client: TestClient, session: Session) -> None:
    model = fit_model()
    model_id = store(session, model)
    good = client.post(f"/models/{model_id}/predict", json={"rows": ROWS}).json()
    _corrupt(session, model_id, _flip, rehash=False)
    _assert_corrupt(REQUESTS["predict"](client, model_id))
    session.execute(update(Model).where(Model.id == model_id).values(weights=model.to_bytes()))
    session.commit()
    assert client.post(f"/models/{model_id}/predict", json={"rows": ROWS}).json() == good


def test_stored_checksum_is_the_sha256_of_the_stored_bytes(session: Session) -> None:
    model_id = store(session, fit_model())
    row = session.get(Model, model_id)
    assert row is not None
    assert row.weights_sha256 == weights_checksum(row.weights) and len(row.weights_sha256) == 64
