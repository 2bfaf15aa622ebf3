"""Load on a real ``regula serve`` over loopback: 32 prediction clients and 20 concurrent jobs.

Zero errors, every job finishes, and every prediction answered during the load equals the answer
given before it (training on the workers must not disturb serving). The issue's figure is one
minute of load; CI runs ``REGULA_LOAD_SECONDS`` (default 20) to stay inside the time budget:
``REGULA_LOAD_SECONDS=60 pytest tests/integration/test_load.py`` runs the full figure.
"""

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_faults import (
    Server,
    csv_bytes,
    integrity_check,
    submit,
    upload,
    wait_job,
)

pytestmark = pytest.mark.integration

LOAD_SECONDS = float(os.environ.get("REGULA_LOAD_SECONDS", "20"))
PREDICT_CLIENTS = 32
JOBS = 20


@dataclass
class Tally:
    """What the client threads saw; appended to under a lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[str] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    running_seen_at: list[float] = field(default_factory=list)

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)


def _predictor(
    url: str, model_id: str, body: dict[str, Any], expected: Any, stop: float, tally: Tally
) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < stop:
            started = time.monotonic()
            try:
                response = client.post(f"/models/{model_id}/predict", json=body)
            except httpx.HTTPError as exc:
                tally.error(f"predict: {type(exc).__name__}: {exc}")
                continue
            done = time.monotonic()
            if response.status_code != 200:
                tally.error(f"predict: {response.status_code} {response.text[:200]}")
            elif response.json() != expected:
                tally.error(f"predict: answer changed: {response.text[:200]}")
            with tally.lock:
                tally.answered_at.append(done)
                tally.latencies.append(done - started)


def _trainer(url: str, dataset_id: str, seed: int, tally: Tally) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        try:
            job = submit(client, dataset_id, seed=seed, epochs=4)
            while True:
                current = client.get(f"/jobs/{job['id']}").json()
                if current["status"] == "running":
                    with tally.lock:
                        tally.running_seen_at.append(time.monotonic())
                if current["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.25)
            with tally.lock:
                tally.jobs[job["id"]] = current
        except Exception as exc:  # reported, not raised: the thread must not die silently
            tally.error(f"job seed {seed}: {type(exc).__name__}: {exc}")


def test_predictions_stay_correct_under_load_while_jobs_train(tmp_path: Path) -> None:
    server = Server(tmp_path, REGULA_WORKERS="2")
    server.start()
    try:
        with server.client() as client:
            dataset = upload(client, csv_bytes(400))
            baseline_job = wait_job(client, submit(client, dataset["id"])["id"])
            assert baseline_job["status"] == "succeeded", baseline_job
            model_id = baseline_job["model_id"]
            instances = [[0.1 * i, -0.2 * i, 0.3, (-1.0) ** i] for i in range(16)]
            body = {"instances": instances}
            first = client.post(f"/models/{model_id}/predict", json=body)
            assert first.status_code == 200, first.text
            expected = first.json()
            assert len(expected["predictions"]) == 16

        tally = Tally()
        stop = time.monotonic() + LOAD_SECONDS
        threads = [
            threading.Thread(target=_trainer, args=(server.url, dataset["id"], seed, tally))
            for seed in range(JOBS)
        ] + [
            threading.Thread(
                target=_predictor, args=(server.url, model_id, body, expected, stop, tally)
            )
            for _ in range(PREDICT_CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=LOAD_SECONDS + 240)
        assert not any(t.is_alive() for t in threads), "client threads hung"

        assert tally.errors == [], f"{len(tally.errors)} errors, first: {tally.errors[:5]}"
        assert len(tally.jobs) == JOBS
        statuses = {job_id: job["status"] for job_id, job in tally.jobs.items()}
        assert set(statuses.values()) == {"succeeded"}, statuses
        # Predictions were really served while training ran, not only before or after it.
        assert tally.running_seen_at, "no job was ever seen running"
        window = (min(tally.running_seen_at), max(tally.running_seen_at))
        during = [t for t in tally.answered_at if window[0] <= t <= window[1]]
        assert during, "no prediction was answered while jobs were running"
        latencies = sorted(tally.latencies)
        print(
            f"\nload: {len(latencies)} predictions in {LOAD_SECONDS:g} s "
            f"({len(latencies) / LOAD_SECONDS:.0f}/s), {len(during)} while training; "
            f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
            f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms; {JOBS} jobs succeeded"
        )
        assert len(latencies) >= PREDICT_CLIENTS
    finally:
        server.stop()
    assert integrity_check(server.db_path) == "ok"
