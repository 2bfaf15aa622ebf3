"""Load on a real ``regula serve`` over loopback: 32 prediction clients and 20 concurrent jobs.

Zero errors, every job finishes, and every prediction answered during the load equals the answer
given before it (training on the workers must not disturb serving). The load lasts until every job
has finished, and at least ``REGULA_LOAD_SECONDS`` (default 5: the jobs take a few seconds, and
predicting on past them would only repeat the same check). The issue's figure is one minute of
load: ``REGULA_LOAD_SECONDS=60 pytest tests/integration/test_load.py`` runs it.
"""

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ServerFactory
from tests.integration.test_faults import csv_bytes, integrity_check, submit, upload, wait_job

pytestmark = pytest.mark.integration

LOAD_SECONDS = float(os.environ.get("REGULA_LOAD_SECONDS", "5"))
PREDICT_CLIENTS = 32
JOBS = 20


@dataclass
class Tally:
    """What the client threads saw; appended to under a lock."""

    stop_at: float = float("inf")  # time.monotonic() at which the predictors stop
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[str] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)  # wall clock (time.time())
    latencies: list[float] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)


def _predictor(url: str, model_id: str, body: dict[str, Any], expected: Any, tally: Tally) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < tally.stop_at:
            started = time.monotonic()
            try:
                response = client.post(f"/models/{model_id}/predict", json=body)
            except httpx.HTTPError as exc:
                tally.error(f"predict: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.monotonic() - started
            if response.status_code != 200:
                tally.error(f"predict: {response.status_code} {response.text[:200]}")
            elif response.json() != expected:
                tally.error(f"predict: answer changed: {response.text[:200]}")
            with tally.lock:
                tally.answered_at.append(time.time())
                tally.latencies.append(elapsed)


def _trainer(url: str, dataset_id: str, seed: int, tally: Tally) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        try:
            job = submit(client, dataset_id, seed=seed, epochs=30, batch_size=16)
            job = wait_job(client, job["id"], timeout=LOAD_SECONDS + 240)
            with tally.lock:
                tally.jobs[job["id"]] = job
        except Exception as exc:  # reported, not raised: the thread must not die silently
            tally.error(f"job seed {seed}: {type(exc).__name__}: {exc}")


def _epoch_seconds(stamp: str) -> float:
    moment = datetime.fromisoformat(stamp)
    if moment.tzinfo is None:  # the API's timestamps are UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def test_predictions_stay_correct_under_load_while_jobs_train(
    regula_server: ServerFactory,
) -> None:
    server = regula_server(env={"REGULA_WORKERS": "2"})
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
        predictors = [
            threading.Thread(target=_predictor, args=(server.url, model_id, body, expected, tally))
            for _ in range(PREDICT_CLIENTS)
        ]
        for thread in predictors:
            thread.start()
        # The load window starts once every client is sending; then the jobs arrive all at once.
        deadline = time.monotonic() + 60
        while len(tally.answered_at) < PREDICT_CLIENTS and time.monotonic() < deadline:
            time.sleep(0.05)
        load_started = time.monotonic()
        trainers = [
            threading.Thread(target=_trainer, args=(server.url, dataset["id"], seed, tally))
            for seed in range(JOBS)
        ]
        for thread in trainers:
            thread.start()
        for thread in trainers:
            thread.join(timeout=LOAD_SECONDS + 300)
        # Every job has finished (or its thread hung): the load goes on to its minimum length.
        tally.stop_at = max(time.monotonic(), load_started + LOAD_SECONDS)
        for thread in predictors:
            thread.join(timeout=LOAD_SECONDS + 60)
        load_seconds = time.monotonic() - load_started
        assert not any(t.is_alive() for t in predictors + trainers), "client threads hung"

        assert tally.errors == [], f"{len(tally.errors)} errors, first: {tally.errors[:5]}"
        assert len(tally.jobs) == JOBS
        statuses = {job_id: job["status"] for job_id, job in tally.jobs.items()}
        assert set(statuses.values()) == {"succeeded"}, statuses
        # Predictions were served while training ran (by the server's own job timestamps).
        spans = [
            (_epoch_seconds(job["started_at"]), _epoch_seconds(job["finished_at"]))
            for job in tally.jobs.values()
        ]
        during = [t for t in tally.answered_at if any(a <= t <= b for a, b in spans)]
        latencies = sorted(tally.latencies)
        p50, p99 = (latencies[int(len(latencies) * q)] * 1e3 for q in (0.5, 0.99))
        training = max(b for _, b in spans) - min(a for a, _ in spans)
        print(
            f"\nload: {len(latencies)} predictions in {load_seconds:.1f} s "
            f"({len(latencies) / load_seconds:.0f}/s), {len(during)} while training "
            f"({training:.1f} s for {JOBS} jobs); p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        )
        assert len(during) >= PREDICT_CLIENTS, "predictions were not served while jobs trained"
    finally:
        server.stop()
    assert integrity_check(server.workdir / "regula.db") == "ok"
