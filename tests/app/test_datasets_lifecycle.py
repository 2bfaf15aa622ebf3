"""The upload lifecycle: its own thread pool, slow and stalled clients, disconnects, a full disk,
deletes whose file cannot be removed. Each leaves either a complete dataset or nothing at all."""

import asyncio
import errno
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import settings
from app.datasets import service
from app.datasets.ingest import csvfile, spool
from app.datasets.orm import Dataset

CT = "multipart/form-data; boundary=bb"
HEAD = b'--bb\r\nContent-Disposition: form-data; name="file"; filename="s.csv"\r\n\r\n'
TAIL = b"\r\n--bb--\r\n"
BODY = HEAD + b"a,b\n1,2\n3,4\n" + TAIL
REPO = Path(__file__).resolve().parents[2]


def state(session: Session) -> tuple[int, list[str]]:
    """(dataset rows, every file under the data folder)."""
    session.expire_all()
    rows = session.scalar(select(func.count()).select_from(Dataset)) or 0
    root = Path(settings.data_dir)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return rows, files


def nothing_stored(session: Session) -> bool:
    return state(session) == (0, [])


def asgi_post(
    app: Any, receive: Callable[[], Awaitable[dict[str, Any]]]
) -> tuple[int, dict[str, Any]]:
    """POST /datasets straight through the ASGI interface with a hand-written ``receive``."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/datasets",
        "raw_path": b"/datasets",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", CT.encode()), (b"host", b"t")],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


def scripted(*messages: dict[str, Any] | None) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A ``receive`` returning ``messages`` in order; None means: never answer (a stalled client).
    After the last one it reports a disconnect."""
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if not queue:
            return {"type": "http.disconnect"}
        message = queue.pop(0)
        if message is None:
            await asyncio.Event().wait()  # stalls until cancelled
        assert message is not None
        return message

    return receive


def chunk(data: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


# --- A. the domain's own pool, one lifecycle ------------------------------------------------------


def test_eight_slow_uploads_leave_a_small_upload_unaffected(client: TestClient) -> None:
    """Slow senders hold no thread while they dawdle, so a ninth upload completes meanwhile."""
    n_slow = 8

    async def scenario() -> tuple[httpx.Response, list[bool], list[httpx.Response]]:
        started = [asyncio.Event() for _ in range(n_slow)]
        release = asyncio.Event()

        async def slow_body(i: int) -> AsyncIterator[bytes]:
            yield HEAD + b"a,b\n" + b"1,2\n" * 1000
            started[i].set()  # the server came back for more: it holds the first chunk
            await release.wait()
            yield b"3,4\n" + TAIL

        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            slow = [
                asyncio.create_task(
                    c.post("/datasets", content=slow_body(i), headers={"content-type": CT})
                )
                for i in range(n_slow)
            ]
            try:
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
                small = await asyncio.wait_for(
                    c.post("/datasets", files={"file": ("small.csv", b"x,y\n1,2\n")}), 60
                )
                in_flight = [not t.done() for t in slow]
            finally:
                release.set()
            return small, in_flight, await asyncio.gather(*slow)

    small, in_flight, slow = asyncio.run(scenario())
    assert small.status_code == 201, small.text
    assert small.json()["rows"] == 1
    assert all(in_flight)
    assert [r.status_code for r in slow] == [201] * n_slow
    assert {r.json()["rows"] for r in slow} == {1001}


def test_conversion_runs_in_the_datasets_pool(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = csvfile.convert_csv

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr("app.datasets.ingest.convert_csv", spy)
    r = client.post("/datasets", files={"file": ("a.csv", b"a\n1\n")})
    assert r.status_code == 201, r.text
    assert len(threads) == 1 and threads[0].startswith("regula-ingest")


@pytest.mark.integration  # a subprocess
def test_importing_the_app_changes_no_process_wide_csv_limit() -> None:
    code = (
        "import csv; before = csv.field_size_limit();"
        "import app.main, app.datasets.service, app.datasets.ingest;"
        "assert csv.field_size_limit() == before, csv.field_size_limit()"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- B4. body read timeout, clients that go away --------------------------------------------------


def test_stalled_client_gets_408_and_nothing_is_stored(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "body_read_timeout_seconds", 0.2)
    status, body = asgi_post(client.app, scripted(chunk(HEAD + b"a,b\n1,2\n", True), None))
    assert status == 408
    (error,) = body["detail"]
    assert error["type"] == "body_timeout" and error["loc"] == ["body"]
    assert "REGULA_BODY_READ_TIMEOUT_SECONDS" in error["msg"]
    assert nothing_stored(session)


def test_client_gone_mid_body_stores_nothing(client: TestClient, session: Session) -> None:
    status, body = asgi_post(client.app, scripted(chunk(HEAD + b"a,b\n1,2\n", True)))
    assert status == 422 and body["detail"][0]["type"] == "disconnected"
    assert nothing_stored(session)


def test_client_gone_after_the_body_is_not_committed(client: TestClient, session: Session) -> None:
    """The whole body arrived, then the client went away before the row was committed."""
    status, body = asgi_post(client.app, scripted(chunk(BODY, False)))
    assert status == 422 and body["detail"][0]["type"] == "disconnected"
    assert nothing_stored(session)


def test_client_still_there_after_the_body_is_committed(
    client: TestClient, session: Session
) -> None:
    # The client waits for its answer: receive() blocks, as a server's does while connected.
    status, body = asgi_post(client.app, scripted(chunk(BODY, False), None))
    assert status == 201, body
    assert state(session)[0] == 1


# --- B8. a full data disk --------------------------------------------------------------------


def _disk_full(*_args: Any, **_kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("stage", ["spool", "parquet"])
def test_full_disk_is_507_and_leaves_nothing(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    if stage == "spool":
        monkeypatch.setattr(spool, "write_all", _disk_full)
    else:
        monkeypatch.setattr(pq.ParquetWriter, "write_table", _disk_full)
    r = client.post("/datasets", files={"file": ("a.csv", b"a,b\n1,2\n")})
    assert r.status_code == 507, r.text
    (error,) = r.json()["detail"]
    assert error["type"] == "insufficient_storage"
    assert "disk is full" in error["msg"] and "No space" not in error["msg"]
    assert nothing_stored(session)


# --- B9. deletes whose file cannot be removed ------------------------------------------------


def _upload(client: TestClient) -> tuple[str, Path]:
    r = client.post("/datasets", files={"file": ("a.csv", b"a,b\n1,2\n")})
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    return dataset_id, Path(settings.data_dir) / "datasets" / f"{dataset_id}.parquet"


def test_delete_whose_file_cannot_be_moved_changes_nothing(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset_id, path = _upload(client)

    def refuse(src: Any, dst: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(service.os, "replace", refuse)
    r = client.delete(f"/datasets/{dataset_id}")
    assert r.status_code == 503, r.text
    assert r.json()["detail"][0]["type"] == "storage_unavailable"
    monkeypatch.undo()
    assert client.get(f"/datasets/{dataset_id}").status_code == 200
    assert pq.read_table(path).num_rows == 1  # the row still works


def test_delete_whose_file_cannot_be_removed_succeeds_and_gc_finishes(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset_id, path = _upload(client)

    def refuse(p: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(service, "_remove", refuse)
    r = client.delete(f"/datasets/{dataset_id}")
    assert r.status_code == 204, r.text
    assert client.get(f"/datasets/{dataset_id}").status_code == 404
    assert not path.exists()
    rows, files = state(session)
    assert rows == 0 and files == [f"datasets/.{dataset_id}.deleted"]  # left for the collector
    monkeypatch.undo()
    service.gc_orphans(session=session, data_dir=settings.data_dir)
    assert state(session) == (0, [])


def test_delete_that_fails_at_commit_puts_the_file_back(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset_id, path = _upload(client)

    def crash() -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(session, "commit", crash)
    with pytest.raises(RuntimeError):
        service.delete(session=session, dataset_id=dataset_id, owner_id=None)
    monkeypatch.undo()
    assert path.is_file()
    assert client.get(f"/datasets/{dataset_id}").status_code == 200


def test_gc_moves_back_the_file_of_a_row_a_crashed_delete_left(
    client: TestClient, session: Session
) -> None:
    dataset_id, path = _upload(client)
    os.replace(path, path.with_name(f".{dataset_id}.deleted"))  # crash after the move
    service.gc_orphans(session=session, data_dir=settings.data_dir)
    assert path.is_file()
    assert state(session) == (1, [f"datasets/{dataset_id}.parquet"])


def test_gc_removes_orphaned_image_folders(client: TestClient, session: Session) -> None:
    folder = service.storage_dir()
    crashed = folder / f".{'a' * 32}.npy.part"  # an image upload that died mid-write
    orphan = folder / ("b" * 32)  # an image dataset whose row is gone
    for path in (crashed, orphan):
        path.mkdir()
        (path / "x.npy").write_bytes(b"\x93NUMPY")
    removed = service.gc_orphans(session=session, data_dir=settings.data_dir)
    assert sorted(removed) == sorted([crashed, orphan])
    assert list(folder.iterdir()) == []
