"""Scale-out on loopback: ``dask scheduler`` + two ``dask worker --nthreads 1`` processes, and
``regula serve`` with ``REGULA_EXECUTOR=tcp://...`` on a fresh PostgreSQL database.

Twenty small jobs submitted at once all succeed, each exactly once, spread over both workers, with
complete histories. Then one worker is killed with SIGKILL in the middle of a job: every job still
ends finished or failed with a reason, none stays ``running``.
"""

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from app.core.db import make_engine
from app.jobs.orm import EpochRecord, Job
from app.models.orm import Model
from tests.integration.conftest import free_port
from tests.integration.test_postgres import fresh_postgres_database

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass
class Cluster:
    """The processes of one scale-out deployment and how to reach them."""

    tmp: Path
    database_url: str
    scheduler: str
    api: str
    env: dict[str, str]
    workers: dict[str, subprocess.Popen[str]] = field(default_factory=dict)  # address -> process
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        # Own session per process: teardown (and the kill test) signal the whole tree, which for
        # `dask worker` is the nanny and its worker child.
        log = (self.tmp / f"{name}.log").open("w")
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start_worker(self, name: str) -> str:
        port = free_port()
        address = f"tcp://127.0.0.1:{port}"
        args = [str(BIN / "dask"), "worker", self.scheduler, "--nthreads", "1"]
        args += ["--host", "127.0.0.1", "--worker-port", str(port), "--no-dashboard"]
        args += ["--name", name]
        self.workers[address] = self.start(name, args, self.env)
        return address

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text()[-4000:] if path.exists() else ""


def _wait(predicate: Callable[[], Any], timeout: float, what: str, cluster: Cluster) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in cluster.procs:
            if proc.poll() is not None and proc not in cluster.workers.values():
                pytest.fail(f"a process exited while waiting for {what}:\n{cluster.log('serve')}")
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{cluster.log('serve')}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass


def _scheduler_workers(address: str) -> set[str]:
    from distributed import Client

    with Client(address, timeout=20) as client:
        return set(client.scheduler_info()["workers"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Scheduler, two workers and the API, all on loopback, sharing one PostgreSQL database."""
    databases = fresh_postgres_database()
    database_url = next(databases)  # skips the module when PostgreSQL is not reachable
    tmp = tmp_path_factory.mktemp("scale")
    scheduler = f"tcp://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGULA_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "REGULA_DATA_DIR": str(tmp / "artifacts"),  # the "shared volume"
        "REGULA_HEARTBEAT_SECONDS": "0.5",
        "REGULA_LOG_LEVEL": "info",
    }
    api_port = free_port()
    cluster = Cluster(tmp, database_url, scheduler, f"http://127.0.0.1:{api_port}", env)
    try:
        dashboard = f"127.0.0.1:{free_port()}"
        cluster.start(
            "scheduler",
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
             scheduler.rsplit(":", 1)[1], "--dashboard-address", dashboard],
            env,
        )  # fmt: skip
        first = cluster.start_worker("worker-a")
        second = cluster.start_worker("worker-b")

        def both_connected() -> bool:
            try:
                return _scheduler_workers(scheduler) == {first, second}
            except OSError:
                return False

        _wait(both_connected, 90, "two workers on the scheduler", cluster)
        api_env = env | {
            "REGULA_DATABASE_URL": database_url,
            "REGULA_EXECUTOR": scheduler,
            "REGULA_HOST": "127.0.0.1",
            "REGULA_PORT": str(api_port),
            "REGULA_STALE_AFTER_SECONDS": "5",
        }
        cluster.start("serve", [str(BIN / "regula"), "serve"], api_env)

        def ready() -> bool:
            try:
                return httpx.get(f"{cluster.api}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(ready, 90, "the API to be ready", cluster)
        yield cluster
    finally:
        for proc in reversed(cluster.procs):
            _stop(proc)
        databases.close()  # drops the database


def _upload(cluster: Cluster, rows: int, features: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    path = cluster.tmp / f"data-{rows}x{features}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"x{j}" for j in range(features)] + ["label"])
        for row, label in zip(X, y, strict=True):
            writer.writerow([f"{v:.6f}" for v in row] + [label])
    with path.open("rb") as handle:
        response = httpx.post(
            f"{cluster.api}/datasets", files={"file": (path.name, handle, "text/csv")}, timeout=60
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _submit_all(cluster: Cluster, specs: list[dict[str, Any]]) -> list[str]:
    def submit(spec: dict[str, Any]) -> str:
        response = httpx.post(f"{cluster.api}/jobs", json=spec, timeout=60)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    with ThreadPoolExecutor(max_workers=len(specs)) as pool:  # "at once": concurrent POSTs
        return list(pool.map(submit, specs))


def _statuses(cluster: Cluster, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for job_id in job_ids:
        response = httpx.get(f"{cluster.api}/jobs/{job_id}", timeout=30)
        assert response.status_code == 200, response.text
        out[job_id] = response.json()
    return out


def _wait_finished(
    cluster: Cluster, job_ids: list[str], timeout: float
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = _statuses(cluster, job_ids)
        if all(job["status"] in FINISHED for job in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            stuck = {j: (v["status"], v["attempts"]) for j, v in jobs.items()}
            pytest.fail(f"jobs not finished after {timeout}s: {stuck}\n{cluster.log('serve')}")
        time.sleep(0.5)


def _rows(cluster: Cluster, job_ids: list[str]) -> dict[str, Any]:
    engine = make_engine(cluster.database_url)
    try:
        with engine.connect() as conn:
            jobs = {
                row.id: row
                for row in conn.execute(
                    select(Job.id, Job.status, Job.attempts, Job.worker, Job.error).where(
                        Job.id.in_(job_ids)
                    )
                )
            }
            models = dict(
                conn.execute(
                    select(Model.job_id, func.count())
                    .where(Model.job_id.in_(job_ids))
                    .group_by(Model.job_id)
                ).all()
            )
            epochs: dict[str, list[int]] = {job_id: [] for job_id in job_ids}
            for job_id, epoch in conn.execute(
                select(EpochRecord.job_id, EpochRecord.epoch)
                .where(EpochRecord.job_id.in_(job_ids))
                .order_by(EpochRecord.job_id, EpochRecord.epoch)
            ):
                epochs[job_id].append(epoch)
    finally:
        engine.dispose()
    return {"jobs": jobs, "models": models, "epochs": epochs}


def _spec(dataset_id: str, seed: int, epochs: int, hidden: list[int]) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "target": "label",
        "loss": "softmax_cross_entropy",
        "model": {"hidden_layers": hidden},
        "regularization": {"l1": 0.001},
        "optimizer": {"name": "sgd", "learning_rate": 0.05},
        "epochs": epochs,
        "batch_size": 16,
        "seed": seed,
    }


def test_twenty_jobs_run_once_each_spread_over_both_workers(cluster: Cluster) -> None:
    dataset_id = _upload(cluster, rows=120, features=4, seed=0)
    epochs = 5
    job_ids = _submit_all(cluster, [_spec(dataset_id, i, epochs, []) for i in range(20)])
    assert len(set(job_ids)) == 20

    jobs = _wait_finished(cluster, job_ids, timeout=90)
    assert {job["status"] for job in jobs.values()} == {"succeeded"}
    assert all(job["model_id"] for job in jobs.values())

    rows = _rows(cluster, job_ids)
    assert {row.attempts for row in rows["jobs"].values()} == {1}  # each body ran exactly once
    assert rows["models"] == dict.fromkeys(job_ids, 1)  # one model per job
    assert rows["epochs"] == {job_id: list(range(1, epochs + 1)) for job_id in job_ids}
    workers = {row.worker for row in rows["jobs"].values()}
    assert workers == set(cluster.workers), workers  # both workers ran jobs, and only they did

    history = httpx.get(f"{cluster.api}/jobs/{job_ids[0]}/history", timeout=30).json()
    assert [record["epoch"] for record in history["epochs"]] == list(range(1, epochs + 1))
    assert all(record["loss"] is not None for record in history["epochs"])


def test_a_worker_killed_mid_job_leaves_no_job_running(cluster: Cluster) -> None:
    alive = {a for a, p in cluster.workers.items() if p.poll() is None}
    assert len(alive) == 2, "the kill test needs both workers"
    dataset_id = _upload(cluster, rows=3000, features=8, seed=1)
    epochs = 60
    job_ids = _submit_all(cluster, [_spec(dataset_id, i, epochs, [32]) for i in range(4)])

    def both_busy() -> dict[str, str] | None:
        running = {
            row.worker: job_id
            for job_id, row in _rows(cluster, job_ids)["jobs"].items()
            if row.status == "running"
        }
        progressed = _rows(cluster, job_ids)["epochs"]
        if set(running) == alive and all(progressed[j] for j in running.values()):
            return running
        return None

    running = _wait(both_busy, 60, "a job in progress on each worker", cluster)
    victim = sorted(running)[0]
    victim_job = running[victim]
    os.killpg(cluster.workers[victim].pid, signal.SIGKILL)  # nanny and worker, no clean-up
    cluster.workers[victim].wait(timeout=20)

    killed_at = time.monotonic()
    jobs = _wait_finished(cluster, job_ids, timeout=100)
    rows = _rows(cluster, job_ids)
    summary = {j: (r.status, r.attempts, r.worker, r.error) for j, r in rows["jobs"].items()}
    elapsed = time.monotonic() - killed_at
    print(f"killed {victim} running {victim_job}; all finished {elapsed:.1f}s later")
    print("\n".join(f"  {j}: {v}" for j, v in summary.items()))
    for job_id, job in jobs.items():
        row = rows["jobs"][job_id]
        assert row.status in ("succeeded", "failed"), (job_id, row.status)
        if row.status == "failed":
            assert job["error"] and job["error_code"], job
            assert rows["models"].get(job_id) is None
        else:
            assert rows["models"][job_id] == 1
            # A re-run starts its history afresh: no duplicate or missing epoch rows.
            assert rows["epochs"][job_id] == list(range(1, epochs + 1))
    # The killed worker's job was taken back: it ran again elsewhere (or failed, with a reason).
    lost = rows["jobs"][victim_job]
    if lost.status == "succeeded":
        assert lost.attempts == 2
        assert lost.worker != victim
