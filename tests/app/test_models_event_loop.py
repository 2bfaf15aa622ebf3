"""A big model never runs on the event loop: /healthz keeps answering while it predicts.

A real uvicorn server in its own process (as in production), a model of ~9M weights (36 MB of
float32, built by the engine and stored directly), and a batch whose forward pass takes a good
fraction of a second. Had the batch run on the event loop, a probe would wait for all of it.
"""

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy.orm import Session

import engine
from tests.app.test_models_cache import store

ROOT = Path(__file__).resolve().parents[2]

HIDDEN = [3000, 3000]
N_FEATURES = 3
BATCH = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[str]:
    """The app served by uvicorn on a free port, in its own process (as in production)."""
    port = _free_port()
    env = {
        **os.environ,
        "REGULA_DATABASE_URL": db_url,
        "REGULA_DATA_DIR": str(tmp_path / "data"),
        "REGULA_EXECUTOR": "inline",
        "REGULA_AUTH_REQUIRED": "false",
    }
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start"
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _big_model() -> engine.Model:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, N_FEATURES))
    y = (X[:, 0] > 0).astype(int)
    spec = {"loss": "softmax_cross_entropy", "model": {"hidden_layers": HIDDEN}, "epochs": 1}
    return engine.fit(spec, X, y, feature_names=[f"f{j}" for j in range(N_FEATURES)])


@pytest.mark.integration  # a uvicorn process
def test_healthz_answers_while_a_big_model_predicts(server: str, session: Session) -> None:
    model = _big_model()
    model_id = store(session, model)
    n_weights = sum(p.size for p in model.network.parameters()[0])
    assert n_weights > 9_000_000
    rows = [{f"f{j}": float(i % 5 + j) for j in range(N_FEATURES)} for i in range(BATCH)]
    url = f"{server}/models/{model_id}/predict"
    with httpx.Client(timeout=120) as client:
        # Warm the cache (the load is off the loop too, but this test is about the forward pass).
        assert client.post(url, json={"rows": rows[:1]}).status_code == 200
        assert BATCH * n_weights > 1e9  # far above the inline cost

        done = threading.Event()
        answer: dict[str, Any] = {}

        def predict() -> None:
            started = time.perf_counter()
            answer["response"] = client.post(url, json={"rows": rows})
            answer["seconds"] = time.perf_counter() - started
            done.set()

        with httpx.Client(base_url=server, timeout=30) as probe:
            assert probe.get("/healthz").status_code == 200
            worker = threading.Thread(target=predict)
            t_start = time.perf_counter()
            worker.start()
            latencies = []
            while not done.is_set():
                started = time.perf_counter()
                assert probe.get("/healthz").status_code == 200
                latencies.append(time.perf_counter() - started)
                print("probe", round(started - t_start, 3), round(latencies[-1], 3))
            worker.join(120)

    response = answer["response"]
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["predictions"]) == BATCH
    seconds = answer["seconds"]
    assert len(latencies) >= 3, (seconds, latencies)
    # On the loop, one probe would have waited for (most of) the whole batch.
    assert max(latencies) < seconds / 2, (seconds, latencies)
    assert statistics.median(latencies) < 0.1, (seconds, latencies)
