"""Jobs on the inline executor: queue, train, history, cancel, failures, claim, recovery, reaper."""

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import settings
from app.core.db import get_sessionmaker, utcnow
from app.jobs import body as training
from app.jobs import executor as worker
from app.jobs import service as jobs_service
from app.jobs import state
from app.jobs.orm import EpochRecord, Job
from app.jobs.schemas import TRAINING_SPEC_EXAMPLE, TrainingSpec
from app.models.orm import Model
from app.models.schemas import PREDICT_EXAMPLES

FINISHED = ("succeeded", "failed", "cancelled")


# --- helpers shared with test_models / test_spec_validation ---------------------------------------


def classification_csv(n: int = 120, seed: int = 0, labels: tuple[Any, Any] = (0, 1)) -> bytes:
    """x1, x2 (informative), noise, color; label in ``labels`` decided by x1 + x2."""
    rng = np.random.default_rng(seed)
    colors = np.array(["red", "green", "blue"])
    lines = ["x1,x2,noise,color,label"]
    for _ in range(n):
        x1, x2, noise = rng.normal(size=3)
        label = labels[1] if x1 + x2 > 0 else labels[0]
        lines.append(f"{x1:.5f},{x2:.5f},{noise:.5f},{colors[rng.integers(3)]},{label}")
    return ("\n".join(lines) + "\n").encode()


EXAMPLE_CSV = Path(__file__).resolve().parents[2] / "app" / "examples" / "credit.csv"


def upload(client: TestClient, content: bytes, name: str = "t.csv") -> dict[str, Any]:
    response = client.post("/datasets", files={"file": (name, content, "text/csv")})
    assert response.status_code == 201, response.text
    return response.json()


def spec_for(dataset_id: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset_id": dataset_id,
        "target": "label",
        "loss": "softmax_cross_entropy",
        "model": {"hidden_layers": []},
        "optimizer": {"name": "adam", "learning_rate": 0.05},
        "epochs": 5,
        "batch_size": 16,
        "seed": 0,
    }
    spec.update(overrides)
    return spec


def wait(client: TestClient, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in FINISHED:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def wait_running(client: TestClient, job_id: str, min_epochs: int = 1) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] == "running" and job["epochs_done"] >= min_epochs:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} never ran: {job}")


def train(client: TestClient, dataset_id: str, **overrides: Any) -> dict[str, Any]:
    response = client.post("/jobs", json=spec_for(dataset_id, **overrides))
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def long_spec(dataset_id: str) -> dict[str, Any]:
    """A job that runs for minutes unless cancelled (small batches, many epochs)."""
    return spec_for(dataset_id, epochs=5000, batch_size=1, model={"hidden_layers": [32]})


class RecordingExecutor(worker.Executor):
    """Records submissions instead of running them."""

    def __init__(self, owns_workers: bool = True) -> None:
        super().__init__()
        self.owns_workers = owns_workers
        self.submitted: list[str] = []
        self.failed: list[tuple[str, str]] = []

    def submit(self, job_id: str, *, priority: int = 0) -> None:
        self.submitted.append(job_id)

    def failures(self) -> list[tuple[str, str]]:
        failed, self.failed = self.failed, []
        return failed


def insert_job(
    session: Session, dataset: dict[str, Any], *, status: str = "queued", **fields: Any
) -> Job:
    """A job row for ``dataset`` with a fully validated spec, inserted behind the API's back."""
    spec_in = TrainingSpec.model_validate(spec_for(dataset["id"]))
    _, spec = jobs_service.validate(session=session, spec_in=spec_in, owner_id=None)
    job = Job(dataset_id=dataset["id"], spec=spec, status=status, **fields)
    session.add(job)
    session.commit()
    return job


# --- submission and training ----------------------------------------------------------------------


def test_create_job_answers_202_with_location_and_full_spec(client: TestClient) -> None:
    dataset = upload(client, classification_csv())
    response = client.post("/jobs", json=spec_for(dataset["id"]))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["dataset_id"] == dataset["id"]
    assert job["progress"] == 0.0 and job["model_id"] is None and job["attempts"] == 0
    # The stored spec is the normalized one: defaults filled, features resolved.
    assert job["spec"]["features"] == ["x1", "x2", "noise", "color"]
    assert job["spec"]["task"] == "classification"
    assert job["spec"]["regularization"] == {
        "l1": 0.0,
        "l2": 0.0,
        "group_l1": 0.0,
        "l1_method": "proximal",
    }
    assert job["spec"]["optimizer"]["beta1"] == 0.9
    assert set(job) >= {"error", "error_code", "created_at", "started_at", "finished_at"}


def test_job_trains_to_success_with_one_history_row_per_epoch(
    client: TestClient, session: Session
) -> None:
    dataset = upload(client, classification_csv())
    job = train(client, dataset["id"], epochs=6, validation_split=0.25)
    assert job["progress"] == 1.0 and job["epochs_done"] == 6 and job["attempts"] == 1
    assert job["started_at"] and job["finished_at"] and job["error"] is None

    records = session.scalars(
        select(EpochRecord).where(EpochRecord.job_id == job["id"]).order_by(EpochRecord.epoch)
    ).all()
    assert [r.epoch for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:
        assert r.loss == pytest.approx(r.data_loss + r.penalty)
        assert r.val_loss is not None and 0.0 <= r.val_metric <= 1.0

    model = session.get(Model, job["model_id"])
    assert model is not None and model.job_id == job["id"]
    assert model.task == "classification" and model.target == "label"
    assert model.feature_names == ["x1", "x2", "noise", "color"]
    assert model.classes == [0, 1]
    assert model.metrics["epochs"] == 6
    assert model.weights[:2] == b"PK"  # an npz is a zip archive


def test_history_endpoint_lists_epochs_in_order(client: TestClient) -> None:
    dataset = upload(client, classification_csv())
    job = train(client, dataset["id"], epochs=4)
    response = client.get(f"/jobs/{job['id']}/history")
    assert response.status_code == 200
    body = response.json()
    assert body["job_id"] == job["id"]
    assert [e["epoch"] for e in body["epochs"]] == [1, 2, 3, 4]
    keys = {"epoch", "loss", "data_loss", "penalty", "val_loss", "metric", "val_metric"}
    keys |= {"zero_fraction", "learning_rate", "seconds"}
    assert set(body["epochs"][0]) == keys
    assert body["epochs"][0]["val_loss"] is None  # no validation split
    assert body["epochs"][-1]["loss"] < body["epochs"][0]["loss"]


def test_list_jobs_newest_first_with_status_filter(client: TestClient) -> None:
    dataset = upload(client, classification_csv())
    first = train(client, dataset["id"], epochs=1)
    second = train(client, dataset["id"], epochs=1)
    listed = client.get("/jobs").json()
    assert [j["id"] for j in listed] == [second["id"], first["id"]]
    assert client.get("/jobs", params={"status": "succeeded"}).json() == listed
    assert client.get("/jobs", params={"status": "failed"}).json() == []
    bad = client.get("/jobs", params={"status": "exploded"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "status"]


def test_unknown_job_is_404(client: TestClient) -> None:
    for path in ("/jobs/nope", "/jobs/nope/history"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["detail"][0]["type"] == "not_found"
    assert client.post("/jobs/nope/cancel").status_code == 404


# --- cancellation ---------------------------------------------------------------------------------


def test_cancel_running_job_stops_it_and_keeps_best_model(
    client: TestClient, session: Session
) -> None:
    dataset = upload(client, classification_csv(200))
    job_id = client.post("/jobs", json=long_spec(dataset["id"])).json()["id"]
    wait_running(client, job_id, min_epochs=2)
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["cancel_requested"] is True
    job = wait(client, job_id, timeout=60)
    assert job["status"] == "cancelled" and job["finished_at"]
    assert 2 <= job["epochs_done"] < 5000
    assert job["model_id"] is not None
    model = session.get(Model, job["model_id"])
    assert model.metrics["stopped"] == "cancelled"
    history = client.get(f"/jobs/{job_id}/history").json()["epochs"]
    assert len(history) == job["epochs_done"]
    # The kept model predicts.
    row = {"x1": 1.0, "x2": 1.0, "noise": 0.0, "color": "red"}
    predicted = client.post(f"/models/{job['model_id']}/predict", json={"rows": [row]})
    assert predicted.status_code == 200 and predicted.json()["predictions"] == [1]


def test_cancel_queued_job_cancels_at_once_and_it_never_runs(
    client: TestClient, session: Session
) -> None:
    dataset = upload(client, classification_csv(200))
    # The inline executor runs one job at a time: the second waits behind the first.
    blocker = client.post("/jobs", json=long_spec(dataset["id"])).json()["id"]
    queued = client.post("/jobs", json=spec_for(dataset["id"])).json()["id"]
    wait_running(client, blocker)
    response = client.post(f"/jobs/{queued}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    client.post(f"/jobs/{blocker}/cancel")
    wait(client, blocker)
    client.app.state.executor.join()  # the cancelled job's body has had its turn
    row = session.get(Job, queued)
    session.refresh(row)
    assert row.status == "cancelled" and row.attempts == 0 and row.model is None
    assert session.scalar(select(func.count()).where(EpochRecord.job_id == queued)) == 0


def test_cancel_finished_job_is_409(client: TestClient) -> None:
    dataset = upload(client, classification_csv())
    job = train(client, dataset["id"], epochs=1)
    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    (item,) = response.json()["detail"]
    assert item["type"] == "job_finished" and "succeeded" in item["msg"]
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "succeeded"


# --- failures -------------------------------------------------------------------------------------


def test_bad_data_fails_the_job_with_a_readable_reason(client: TestClient) -> None:
    # Valid in every way the service can check up front; it diverges only while training.
    dataset = upload(client, classification_csv())
    spec = spec_for(
        dataset["id"],
        target="x1",
        features=["x2", "noise"],
        loss="mse",
        model={"hidden_layers": [8]},
        optimizer={"name": "sgd", "learning_rate": 1e6},
        standardize=False,
    )
    response = client.post("/jobs", json=spec)
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["status"] == "failed"
    assert job["error_code"] == "diverged"
    assert "learning_rate" in job["error"] and "diverged" in job["error"]
    assert job["model_id"] is None and job["finished_at"]


def test_job_whose_dataset_was_deleted_fails(client: TestClient, session: Session) -> None:
    dataset = upload(client, classification_csv(200))
    blocker = client.post("/jobs", json=long_spec(dataset["id"])).json()["id"]
    other = upload(client, classification_csv(50, seed=3))
    queued = client.post("/jobs", json=spec_for(other["id"])).json()["id"]
    wait_running(client, blocker)
    assert client.delete(f"/datasets/{other['id']}").status_code == 204
    client.post(f"/jobs/{blocker}/cancel")
    job = wait(client, queued)
    assert job["status"] == "failed"
    assert job["error_code"] == "dataset_deleted"
    assert "dataset was deleted" in job["error"]


def test_unexpected_error_fails_the_job_not_leaves_it_running(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = upload(client, classification_csv())

    def broken_fit(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(training.engine, "fit", broken_fit)
    job_id = client.post("/jobs", json=spec_for(dataset["id"])).json()["id"]
    job = wait(client, job_id)
    assert job["status"] == "failed" and job["error_code"] == "internal_error"
    # The user gets our sentence; the exception itself goes to the server log only.
    assert "disk on fire" not in job["error"]
    assert "unexpected error" in job["error"]


# --- the claim ------------------------------------------------------------------------------------


def test_second_run_of_the_same_job_is_refused(
    client: TestClient, session: Session, db_url: str
) -> None:
    dataset = upload(client, classification_csv())
    job = insert_job(session, dataset)
    data_dir = str(settings.data_dir)
    assert worker.run_job(job.id, db_url, data_dir) == "succeeded"
    assert worker.run_job(job.id, db_url, data_dir) == "skipped"
    session.refresh(job)
    assert job.status == "succeeded" and job.attempts == 1
    assert session.scalar(select(func.count()).where(Model.job_id == job.id)) == 1
    assert session.scalar(select(func.count()).where(EpochRecord.job_id == job.id)) == 5


def test_a_worker_that_lost_its_claim_writes_nothing(
    client: TestClient, session: Session, db_url: str
) -> None:
    dataset = upload(client, classification_csv())
    job = insert_job(session, dataset)
    sessions = get_sessionmaker(db_url)
    attempt = state.claim(sessions, job.id, "test:1")
    assert attempt == 1
    # The reaper judges the worker lost and re-queues the job...
    assert state.requeue_or_fail(session=session, job_id=job.id, attempts=1)
    history = training.HistoryWriter(sessions, job.id, attempt, epochs=5, flush_seconds=0.0)
    # ...so the old worker's next epoch report is refused and nothing is written.
    with pytest.raises(state.LostClaim):
        history({"epoch": 1, "loss": 0.5})
    session.refresh(job)
    assert job.status == "queued" and job.epochs_done == 0
    assert session.scalar(select(func.count()).where(EpochRecord.job_id == job.id)) == 0


# --- recovery and the reaper ----------------------------------------------------------------------


def _running(session: Session, dataset: dict[str, Any], age: float, attempts: int = 1) -> Job:
    beat = utcnow() - timedelta(seconds=age)
    job = insert_job(
        session,
        dataset,
        status="running",
        attempts=attempts,
        heartbeat_at=beat,
        started_at=beat,
        epochs_done=2,
        progress=0.4,
        worker="gone:1",
    )
    for epoch in (1, 2):
        session.add(EpochRecord(job_id=job.id, epoch=epoch, loss=1.0 / epoch))
    session.commit()
    return job


def test_reaper_requeues_a_stale_running_job(client: TestClient, session: Session) -> None:
    dataset = upload(client, classification_csv())
    stale = _running(session, dataset, age=settings.stale_after_seconds + 60)
    fresh = _running(session, dataset, age=0.0)
    executor = RecordingExecutor(owns_workers=False)
    counts = state.reap_once(sessions=get_sessionmaker(settings.database_url), executor=executor)
    assert counts["stale"] == 1
    assert executor.submitted == [stale.id]
    session.expire_all()
    assert session.get(Job, stale.id).status == "queued"
    assert session.get(Job, stale.id).epochs_done == 0
    assert session.scalar(select(func.count()).where(EpochRecord.job_id == stale.id)) == 0
    # A job with a fresh heartbeat is left alone, history and all.
    assert session.get(Job, fresh.id).status == "running"
    assert session.scalar(select(func.count()).where(EpochRecord.job_id == fresh.id)) == 2


def test_reaper_fails_a_stale_job_out_of_attempts(client: TestClient, session: Session) -> None:
    dataset = upload(client, classification_csv())
    job = _running(session, dataset, age=1000, attempts=settings.max_attempts)
    executor = RecordingExecutor(owns_workers=False)
    state.reap_once(sessions=get_sessionmaker(settings.database_url), executor=executor)
    assert executor.submitted == []
    session.expire_all()
    row = session.get(Job, job.id)
    assert row.status == "failed" and row.error_code == "worker_lost"
    assert "the worker running this job was lost" in row.error
    assert row.finished_at is not None


def test_reaper_requeues_a_running_job_whose_task_died(
    client: TestClient, session: Session
) -> None:
    dataset = upload(client, classification_csv())
    job = _running(session, dataset, age=0.0)  # heartbeat still fresh
    executor = RecordingExecutor(owns_workers=False)
    executor.failed = [(job.id, "KilledWorker: worker died")]
    counts = state.reap_once(sessions=get_sessionmaker(settings.database_url), executor=executor)
    assert counts["failed_futures"] == 1
    assert executor.submitted == [job.id]
    session.expire_all()
    assert session.get(Job, job.id).status == "queued"


def test_startup_recovery_requeues_running_and_submits_queued(
    client: TestClient, session: Session
) -> None:
    dataset = upload(client, classification_csv())
    running = _running(session, dataset, age=0.0)
    spent = _running(session, dataset, age=0.0, attempts=settings.max_attempts)
    queued = insert_job(session, dataset)
    executor = RecordingExecutor(owns_workers=True)  # a new local cluster: all running are lost
    result = state.recover(sessions=get_sessionmaker(settings.database_url), executor=executor)
    assert result == {"requeued": 1, "failed": 1, "submitted": 2}
    assert sorted(executor.submitted) == sorted([running.id, queued.id])
    session.expire_all()
    assert session.get(Job, running.id).status == "queued"
    assert session.get(Job, spent.id).status == "failed"


def test_startup_recovery_with_remote_workers_keeps_live_jobs(
    client: TestClient, session: Session
) -> None:
    dataset = upload(client, classification_csv())
    live = _running(session, dataset, age=0.0)
    executor = RecordingExecutor(owns_workers=False)
    state.recover(sessions=get_sessionmaker(settings.database_url), executor=executor)
    assert executor.submitted == []
    session.expire_all()
    assert session.get(Job, live.id).status == "running"


def test_requeued_job_runs_again_from_epoch_one(client: TestClient, session: Session) -> None:
    dataset = upload(client, classification_csv())
    job = _running(session, dataset, age=1000)
    state.reap_once(
        sessions=get_sessionmaker(settings.database_url), executor=client.app.state.executor
    )  # the real inline executor reruns it
    done = wait(client, job.id)
    assert done["status"] == "succeeded" and done["attempts"] == 2
    epochs = [e["epoch"] for e in client.get(f"/jobs/{job.id}/history").json()["epochs"]]
    assert epochs == [1, 2, 3, 4, 5]


# --- the API description --------------------------------------------------------------------------


def test_openapi_routes_have_summaries_and_the_spec_example_validates(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
    examples = schema["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    for example in examples["examples"].values():
        TrainingSpec.model_validate(example["value"])
    TrainingSpec.model_validate(TRAINING_SPEC_EXAMPLE)


def test_docs_examples_work_on_the_shipped_example_csv(client: TestClient) -> None:
    # /docs shows these bodies; after uploading app/examples/credit.csv only the id needs pasting.
    dataset = upload(client, EXAMPLE_CSV.read_bytes(), name="credit.csv")
    response = client.post("/jobs", json={**TRAINING_SPEC_EXAMPLE, "dataset_id": dataset["id"]})
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["status"] == "succeeded"
    sparsity = client.get(f"/models/{job['model_id']}/sparsity").json()
    assert {"noise_1", "noise_2", "shoe_size"} <= set(sparsity["dropped_features"])
    assert {"income", "debt_ratio", "late_payments"} <= set(sparsity["selected_features"])
    for example in PREDICT_EXAMPLES.values():
        predicted = client.post(f"/models/{job['model_id']}/predict", json=example["value"])
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["predictions"][0] in ("no", "yes")


def test_time_limit_stops_a_job_inside_its_first_epoch(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = upload(client, classification_csv(4_000))
    monkeypatch.setattr(settings, "job_timeout_seconds", 0.01)
    # One epoch of 4,000 single-row steps through a hidden layer takes far longer than 10 ms.
    spec = spec_for(dataset["id"], epochs=1, batch_size=1, model={"hidden_layers": [256]})
    job = wait(client, client.post("/jobs", json=spec).json()["id"])
    assert job["status"] == "failed"
    assert job["error_code"] == "timeout"
    assert "time limit of 0.01 seconds" in job["error"]
    assert "during epoch 1" in job["error"]
    assert job["epochs_done"] == 0
    assert session.scalar(select(func.count()).select_from(EpochRecord)) == 0
