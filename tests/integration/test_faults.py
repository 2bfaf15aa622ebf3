"""Faults on a real ``regula serve``: worker killed mid-epoch, server killed mid-upload, restarts.

Each test runs its own server subprocess (embedded Dask LocalCluster, SQLite in a temp folder) so
it can kill it with SIGKILL and start it again on the same database and data folder. After each
fault the SQLite file must pass ``PRAGMA integrity_check``.
"""

import hashlib
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from tests.integration.conftest import RegulaServer, ServerFactory

pytestmark = pytest.mark.integration

FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture
def server(regula_server: ServerFactory) -> RegulaServer:
    """A not-yet-started server (S2's restartable fixture) on its own database and data folder."""
    return regula_server(start=False)


def db_path(server: RegulaServer) -> Path:
    return server.workdir / "regula.db"


def data_dir(server: RegulaServer) -> Path:
    return server.workdir / "data"


def csv_bytes(n: int, d: int = 4, seed: int = 0) -> bytes:
    """A numeric table with a 0/1 label: ``n`` rows, ``d`` features f0..f{d-1}."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X @ rng.normal(size=d) > 0).astype(int)
    header = ",".join([*(f"f{j}" for j in range(d)), "label"])
    lines = [
        header,
        *(",".join([*(f"{v:.5f}" for v in row), str(t)]) for row, t in zip(X, y, strict=True)),
    ]
    return ("\n".join(lines) + "\n").encode()


def upload(client: httpx.Client, content: bytes, name: str = "t.csv") -> dict[str, Any]:
    response = client.post("/datasets", files={"file": (name, content, "text/csv")})
    assert response.status_code == 201, response.text
    return response.json()


def submit(client: httpx.Client, dataset_id: str, **overrides: Any) -> dict[str, Any]:
    spec = {
        "dataset_id": dataset_id,
        "target": "label",
        "loss": "softmax_cross_entropy",
        "model": {"hidden_layers": [8]},
        "regularization": {"l1": 0.001},
        "epochs": 5,
        "batch_size": 32,
        "seed": 3,
        **overrides,
    }
    response = client.post("/jobs", json=spec)
    assert response.status_code == 202, response.text
    return response.json()


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in FINISHED:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.get('status')!r} after {timeout} s: {job}")


def integrity_check(db_path: Path) -> str:
    with sqlite3.connect(db_path) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def data_files(data_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file())


def worker_pid(server: RegulaServer, worker: str) -> int:
    """The pid of the server's descendant named by a job's ``worker`` column.

    That is a Dask worker address (``tcp://127.0.0.1:PORT``: the process listening there) or,
    outside Dask, ``hostname:pid``.
    """
    assert server.proc is not None
    number = int(worker.rsplit(":", 1)[1])
    descendants = psutil.Process(server.proc.pid).children(recursive=True)
    for proc in descendants:
        if proc.pid == number and not worker.startswith(("tcp://", "tls://")):
            return proc.pid
    for proc in descendants:
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == number:
                    return proc.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"no descendant of the server is the worker {worker!r}")


def job_row(db_path: Path, job_id: str) -> dict[str, Any]:
    with sqlite3.connect(db_path) as con:
        con.row_factory = sqlite3.Row
        return dict(con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())


# --------------------------------------------------------------------------------------------


LONG_EPOCHS = 30


def _start_long_job(server: RegulaServer, client: httpx.Client) -> tuple[dict, dict]:
    """Submit a job of several seconds and wait until it is running past its first epoch."""
    dataset = upload(client, csv_bytes(6000, d=20))
    # Small batches and a wide layer: each epoch takes a noticeable fraction of a second.
    job = submit(
        client, dataset["id"], epochs=LONG_EPOCHS, batch_size=8, model={"hidden_layers": [128, 64]}
    )
    deadline = time.monotonic() + 60
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = job_row(db_path(server), job["id"])
        if row["status"] == "running" and row["epochs_done"] >= 1 and row["worker"]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"job never got past epoch 1: {row}")
    assert row["epochs_done"] < LONG_EPOCHS, "job finished too fast to kill it mid-run"
    return job, row


def _assert_ended_cleanly(
    server: RegulaServer, client: httpx.Client, job_id: str, what: str
) -> None:
    """The job ends (never stays running): re-run to success with a clean history, or failed
    with a reason."""
    final = wait_job(client, job_id, timeout=180)
    print(f"\n{what}: job {final['status']}, attempts {final.get('attempts')}, {final['error']!r}")
    assert final["status"] in ("succeeded", "failed"), final
    if final["status"] == "failed":
        assert final["error"], "a failed job must say why"
        return
    # Re-run from scratch: one clean history, epochs 1..N, no interleaving of attempts.
    history = client.get(f"/jobs/{job_id}/history").json()["epochs"]
    assert [e["epoch"] for e in history] == list(range(1, LONG_EPOCHS + 1))
    predicted = client.post(
        f"/models/{final['model_id']}/predict", json={"instances": [[0.0] * 20, [1.0] * 20]}
    )
    assert predicted.status_code == 200, predicted.text
    assert job_row(db_path(server), job_id)["attempts"] >= 2


def test_worker_killed_mid_epoch_never_leaves_job_running(server: RegulaServer) -> None:
    server.start()
    with server.client() as client:
        job, row = _start_long_job(server, client)
        victim = psutil.Process(worker_pid(server, row["worker"]))
        victim.kill()
        victim.wait(timeout=30)
        _assert_ended_cleanly(
            server, client, job["id"], f"worker killed at epoch {row['epochs_done']}"
        )
    server.stop()
    assert integrity_check(db_path(server)) == "ok"


def test_server_killed_mid_training_never_leaves_job_running(server: RegulaServer) -> None:
    server.start()
    with server.client() as client:
        job, row = _start_long_job(server, client)
    server.kill()
    assert integrity_check(db_path(server)) == "ok"
    assert job_row(db_path(server), job["id"])["status"] == "running"  # as the crash left it
    server.start()
    with server.client() as client:
        _assert_ended_cleanly(
            server, client, job["id"], f"server killed at epoch {row['epochs_done']}"
        )
    server.stop()
    assert integrity_check(db_path(server)) == "ok"


def _slow_upload(url: str, total: int, chunk: int, sent_before_kill: int) -> socket.socket:
    """Start a multipart upload of ``total`` bytes and send only ``sent_before_kill`` of them."""
    boundary = "regulaboundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="big.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    body_len = len(head) + total + len(tail)
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        (
            f"POST /datasets HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {body_len}\r\n\r\n"
        ).encode()
        + head
    )
    line = b"0.1,0.2,0.3,0.4,1\n"
    sock.sendall(b"f0,f1,f2,f3,label\n")
    sent = 0
    block = line * (chunk // len(line))
    while sent < sent_before_kill:
        sock.sendall(block)
        sent += len(block)
        time.sleep(0.01)
    return sock


def test_server_killed_mid_upload_leaves_no_partial_dataset(server: RegulaServer) -> None:
    server.start()
    with server.client() as client:
        kept = upload(client, csv_bytes(200), name="kept.csv")
    files_before = data_files(data_dir(server))
    sock = _slow_upload(server.url, total=50_000_000, chunk=64_000, sent_before_kill=3_000_000)
    try:
        # Wait until the server is visibly mid-upload (its spool file exists), then crash it.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and data_files(data_dir(server)) == files_before:
            time.sleep(0.05)
        spooled = sorted(set(data_files(data_dir(server))) - set(files_before))
        assert spooled, "the upload never reached the data folder"
        server.kill()
    finally:
        sock.close()
    assert integrity_check(db_path(server)) == "ok"

    server.start()
    with server.client() as client:
        listed = client.get("/datasets").json()
        assert [d["id"] for d in listed] == [kept["id"]]
        assert client.get(f"/datasets/{kept['id']}").json()["rows"] == 200
    leftovers = sorted(set(data_files(data_dir(server))) - set(files_before))
    assert leftovers == [], f"orphan files after restart: {leftovers} (spooled: {spooled})"
    server.stop()
    assert integrity_check(db_path(server)) == "ok"


def _everything(client: httpx.Client, dataset_id: str, job_id: str, model_id: str) -> dict:
    """Every read a user can make about one dataset, job and model, plus a prediction."""
    probe = csv_bytes(10, seed=42).decode().splitlines()[1:]
    instances = [[float(v) for v in line.split(",")[:-1]] for line in probe]
    out: dict[str, Any] = {}
    for path in (
        "/datasets",
        f"/datasets/{dataset_id}",
        f"/jobs/{job_id}",
        f"/jobs/{job_id}/history",
        "/models",
        f"/models/{model_id}",
        f"/models/{model_id}/sparsity",
    ):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        out[path] = response.json()
    export = client.get(f"/models/{model_id}/export")
    assert export.status_code == 200
    out["export sha256"] = hashlib.sha256(export.content).hexdigest()
    predicted = client.post(f"/models/{model_id}/predict", json={"instances": instances})
    assert predicted.status_code == 200, predicted.text
    out["predict"] = predicted.json()
    return out


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_restart_keeps_datasets_models_histories_and_predictions(
    server: RegulaServer, how: str
) -> None:
    server.start()
    with server.client() as client:
        dataset = upload(client, csv_bytes(400))
        job = wait_job(client, submit(client, dataset["id"], epochs=6)["id"])
        assert job["status"] == "succeeded", job
        before = _everything(client, dataset["id"], job["id"], job["model_id"])
    assert len(before[f"/jobs/{job['id']}/history"]["epochs"]) == 6
    server.kill() if how == "sigkill" else server.stop()
    assert integrity_check(db_path(server)) == "ok"

    server.start()
    with server.client() as client:
        after = _everything(client, dataset["id"], job["id"], job["model_id"])
    for key in before:
        assert after[key] == before[key], key
    server.stop()
    assert integrity_check(db_path(server)) == "ok"
