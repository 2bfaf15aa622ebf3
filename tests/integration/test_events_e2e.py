"""GET /jobs/{id}/events on a real ``regula serve``: the epochs come from a Dask worker process.

A 50-epoch job: a subscriber sees every epoch once, in order, then ``end``; a client that drops
the connection after epoch 20 and reconnects with ``Last-Event-ID: 20`` gets 21.. onward; 100
concurrent subscribers all see everything while the database is polled no more than for one
(the job's poller figures come from GET /jobs/{id}/events/stats).
"""

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import RegulaServer, wait_for_job

pytestmark = pytest.mark.integration

EPOCHS = 50


@pytest.fixture(scope="module")
def server(module_server: RegulaServer) -> RegulaServer:
    return module_server


@pytest.fixture(scope="module")
def dataset_id(server: RegulaServer) -> str:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 4))
    y = 3 * X[:, 0] - 2 * X[:, 1] + 0.1 * rng.normal(size=1500)
    rows = np.column_stack([X, y])
    body = "a,b,c,d,y\n" + "\n".join(",".join(f"{v:.5f}" for v in row) for row in rows) + "\n"
    with server.client() as client:
        response = client.post("/datasets", files={"file": ("d.csv", body, "text/csv")})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def submit(server: RegulaServer, dataset_id: str, epochs: int = EPOCHS) -> str:
    """A 50-epoch job of a few seconds (small batches through a hidden layer)."""
    spec = {
        "dataset_id": dataset_id,
        "target": "y",
        "loss": "mse",
        "model": {"hidden_layers": [16]},
        "regularization": {"l1": 0.001},
        "optimizer": {"name": "adam", "learning_rate": 0.001},
        "epochs": epochs,
        "batch_size": 4,
        "validation_split": 0.2,
    }
    with server.client() as client:
        response = client.post("/jobs", json=spec)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def events_of(lines: Any) -> Iterator[dict[str, Any]]:
    """Parsed SSE events ({"event", "id", "data"}) from an iterator of lines."""
    item: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "event" in item:
                item["data"] = json.loads(item["data"])
                yield item
            item = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            item[name] = value.removeprefix(" ")


def read_all(server: RegulaServer, job_id: str, headers: Any = None) -> list[dict[str, Any]]:
    with (
        httpx.Client(base_url=server.url, timeout=120) as client,
        client.stream("GET", f"/jobs/{job_id}/events", headers=headers or {}) as response,
    ):
        assert response.status_code == 200
        return list(events_of(response.iter_lines()))


def epoch_ids(got: list[dict[str, Any]]) -> list[int]:
    return [int(e["id"]) for e in got if e["event"] == "epoch"]


def test_a_subscriber_gets_every_epoch_once_in_order_then_end(
    server: RegulaServer, dataset_id: str
) -> None:
    job_id = submit(server, dataset_id)
    got = read_all(server, job_id)  # connected while the job is queued or running
    assert got[0]["event"] == "status"
    assert got[0]["data"]["status"] in ("queued", "running")
    assert epoch_ids(got) == list(range(1, EPOCHS + 1))
    assert got[-1]["event"] == "end"
    assert got[-1]["data"]["status"] == "succeeded" and got[-1]["data"]["model_id"]
    with server.client() as client:
        history = client.get(f"/jobs/{job_id}/history").json()["epochs"]
    assert [e["data"] for e in got if e["event"] == "epoch"] == history


def test_reconnecting_with_last_event_id_resumes_without_duplicates(
    server: RegulaServer, dataset_id: str
) -> None:
    job_id = submit(server, dataset_id)
    first: list[int] = []
    with (
        httpx.Client(base_url=server.url, timeout=120) as client,
        client.stream("GET", f"/jobs/{job_id}/events") as response,
    ):
        for event in events_of(response.iter_lines()):
            if event["event"] == "epoch":
                first.append(int(event["id"]))
                if first[-1] >= 20:
                    break  # the client drops the connection here
    assert first[-1] == 20 and first == list(range(1, 21))
    rest = read_all(server, job_id, headers={"Last-Event-ID": "20"})
    assert epoch_ids(rest) == list(range(21, EPOCHS + 1))
    assert rest[-1]["event"] == "end"


async def _subscribe_many(
    url: str, job_id: str, n: int, blocker_id: str
) -> list[list[dict[str, Any]]]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one() -> list[dict[str, Any]]:
            async with client.stream("GET", f"/jobs/{job_id}/events") as response:
                assert response.status_code == 200
                lines = [line async for line in response.aiter_lines()]
            return list(events_of(lines))

        subscribers = [asyncio.create_task(one()) for _ in range(n)]
        # The job waits behind the blocker until all n are connected (however slowly a busy
        # machine opens 100 streams); then the blocker is cancelled and the job runs.
        deadline = time.monotonic() + 120
        while (await client.get(f"/jobs/{job_id}/events/stats")).json()["subscribers"] < n:
            assert time.monotonic() < deadline, f"{n} subscribers never all connected"
            await asyncio.sleep(0.05)
        cancelled = await client.post(f"/jobs/{blocker_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        return await asyncio.gather(*subscribers)


def _watch(server: RegulaServer, dataset_id: str, n: int) -> tuple[dict[str, Any], float]:
    # The server has one worker: a long job holds it while the watched job queues.
    blocker_id = submit(server, dataset_id, epochs=10_000)
    with server.client() as client:
        wait_for_job(client, blocker_id, statuses=("running",))
    job_id = submit(server, dataset_id)
    started = time.monotonic()
    results = asyncio.run(_subscribe_many(server.url, job_id, n, blocker_id))
    seconds = time.monotonic() - started
    for got in results:
        assert epoch_ids(got) == list(range(1, EPOCHS + 1))
        assert got[-1]["event"] == "end" and got[-1]["data"]["status"] == "succeeded"
    with server.client() as client:
        wait_for_job(client, job_id)
        stats = client.get(f"/jobs/{job_id}/events/stats").json()
    return stats, seconds


def test_100_subscribers_get_everything_from_one_poller(
    server: RegulaServer, dataset_id: str
) -> None:
    one, one_seconds = _watch(server, dataset_id, 1)
    many, many_seconds = _watch(server, dataset_id, 100)
    assert one["peak_subscribers"] == 1 and many["peak_subscribers"] == 100
    # Two statements per poll whoever listens, and polls paced by the clock, not by subscribers:
    # per second of watching, 100 subscribers cost the database what one does.
    assert one["statements"] == 2 * one["polls"] and many["statements"] == 2 * many["polls"]
    assert many["polls"] / many_seconds <= 1.5 * one["polls"] / one_seconds + 1.0
