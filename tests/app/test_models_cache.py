"""The prediction cache: bounded in bytes, one load per model however many wait, deletion wins."""

import threading
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

import engine
from app.core.config import settings
from app.models import loading
from app.models.orm import Model

FEATURES = ["a", "b", "c"]
ROWS = [{"a": 0.5, "b": -1.0, "c": 2.0}, {"a": -0.3, "b": 0.2, "c": 0.0}]


def fit_model(hidden: list[int] | None = None, n: int = 60, seed: int = 0) -> engine.Model:
    """A small softmax classifier on three numeric features, fitted by the engine directly."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES)))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    spec = {
        "loss": "softmax_cross_entropy",
        "model": {"hidden_layers": hidden or []},
        "epochs": 1,
        "batch_size": n,
        "seed": seed,
    }
    return engine.fit(spec, X, y, feature_names=FEATURES)


def store(session: Session, model: engine.Model, owner_id: str | None = None) -> str:
    """Insert a model row the way a finished job does (its checksum comes with the bytes)."""
    row = Model(
        owner_id=owner_id,
        task=model.task,
        target="label",
        feature_names=list(model.feature_names),
        classes=model.classes,
        spec=model.spec,
        metrics=model.metrics,
        weights=model.to_bytes(),
    )
    session.add(row)
    session.commit()
    return row.id


def _fake(model_id: str, nbytes: int) -> loading.Loaded:
    return loading.Loaded(
        id=model_id,
        owner_id=None,
        model=None,  # type: ignore[arg-type]
        names=(),
        numeric=(),
        index={},
        nbytes=nbytes,
        n_weights=0,
    )


def test_cache_evicts_least_recently_used_past_its_byte_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "model_cache_mb", 1)
    cache = loading.ModelCache()
    third = 2**20 // 3
    for name in ("a", "b", "c"):
        cache.load(name, None, lambda name=name: _fake(name, third))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.load("d", None, lambda: _fake("d", third))
    assert cache.get("b") is None  # b was the least recently used
    assert {n for n in "acd" if cache.get(n) is not None} == set("acd")
    assert cache.nbytes == 3 * third <= 2**20
    # A model larger than the whole cache is served but never cached (it would evict the rest).
    big = cache.load("big", None, lambda: _fake("big", 2**20 + 1))
    assert big.id == "big" and cache.get("big") is None and len(cache) == 3


def test_max_servable_bytes_leaves_room_for_the_gradient_buffers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "model_cache_mb", 64)
    assert loading.max_servable_bytes() == 32 * 2**20
    model = fit_model([8])
    params, _ = model.network.parameters()
    weights = sum(p.nbytes for p in params)
    # What a job's weights take, doubled, is what the cache holds for it.
    assert weights <= loading.model_nbytes(model) / 2 + 3 * 8 * len(FEATURES)


def test_concurrent_first_predicts_load_the_model_once(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = store(session, fit_model([16]))
    loading.cache.clear()
    n = 8
    entered = threading.Semaphore(0)
    loads: list[int] = []
    real_load, real_engine_load = loading.load, engine.load

    def counting_load(**kwargs: Any) -> loading.Loaded:
        entered.release()
        return real_load(**kwargs)

    def slow_engine_load(data: bytes) -> engine.Model:
        loads.append(1)
        # Hold the first load until every request has asked for the model.
        for _ in range(n):
            assert entered.acquire(timeout=30)
        return real_engine_load(data)

    monkeypatch.setattr(loading, "load", counting_load)
    monkeypatch.setattr(engine, "load", slow_engine_load)
    statuses: list[int] = []
    bodies: list[Any] = []

    def predict() -> None:
        response = client.post(f"/models/{model_id}/predict", json={"rows": ROWS})
        statuses.append(response.status_code)
        bodies.append(response.json())

    threads = [threading.Thread(target=predict) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == [200] * n, bodies
    assert len(loads) == 1
    assert all(body == bodies[0] for body in bodies)


def test_a_model_deleted_during_its_cold_load_is_never_served(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = store(session, fit_model())
    loading.cache.clear()
    in_load, deleted = threading.Event(), threading.Event()
    real_engine_load = engine.load

    def slow_engine_load(data: bytes) -> engine.Model:
        in_load.set()
        assert deleted.wait(30)
        return real_engine_load(data)

    monkeypatch.setattr(engine, "load", slow_engine_load)
    answers: list[Any] = []
    first = threading.Thread(
        target=lambda: answers.append(
            client.post(f"/models/{model_id}/predict", json={"rows": ROWS})
        )
    )
    first.start()
    assert in_load.wait(30)
    assert client.delete(f"/models/{model_id}").status_code == 204
    deleted.set()
    first.join(60)
    (answer,) = answers
    assert answer.status_code == 404, answer.text
    assert answer.json()["detail"][0]["type"] == "not_found"
    assert loading.cache.get(model_id) is None
    again = client.post(f"/models/{model_id}/predict", json={"rows": ROWS})
    assert again.status_code == 404


def test_a_failed_load_is_not_cached_and_is_retried(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = store(session, fit_model())
    loading.cache.clear()
    real_engine_load = engine.load
    calls: list[int] = []

    def failing_once(data: bytes) -> engine.Model:
        calls.append(1)
        if len(calls) == 1:
            raise engine.ModelFormatError("simulated")
        return real_engine_load(data)

    monkeypatch.setattr(engine, "load", failing_once)
    first = client.post(f"/models/{model_id}/predict", json={"rows": ROWS})
    assert first.status_code == 500 and first.json()["detail"][0]["type"] == "model_corrupt"
    second = client.post(f"/models/{model_id}/predict", json={"rows": ROWS})
    assert second.status_code == 200 and len(calls) == 2


def test_loading_a_model_costs_its_arrays_not_a_multiple_of_them() -> None:
    # regression: pruning a model with nothing to prune made float64 copies of every matrix,
    # rebuilt and re-initialised the network and gathered sparsity statistics, a transient 12x
    # the weights (a 36 MB model peaked at +413 MB of API memory while it loaded)
    import tracemalloc

    trained = fit_model(hidden=[600, 600])
    blob = trained.to_bytes()
    weights = sum(int(p.nbytes) for p in trained.network.parameters()[0])
    tracemalloc.start()
    try:
        item = loading.loaded("m", None, engine.load(blob))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert item.full is None  # nothing to prune: the trained model serves
    # the loaded weights and their gradient buffers, and the archive's read buffer meanwhile
    assert peak <= 3.5 * weights, peak / weights
