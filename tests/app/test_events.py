"""The event stream of a job, ?since / CSV history, the job's latest epoch and ETA, console lines.

Streams are read to the end (a finished job's stream closes after ``end``). The one-poller rule is
checked by counting the SQL statements the hub's own engine runs while many subscribers read.
"""

import asyncio
import json
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from app.core.auth import create_key
from app.core.config import settings
from app.core.db import make_engine, utcnow
from app.jobs import events
from app.jobs.orm import EpochRecord, Job
from app.jobs.schemas import EpochRead
from tests.app.test_jobs import FINISHED, classification_csv, train, upload

HISTORY_FIELDS = list(EpochRead.model_fields)


def _live() -> dict[str, Any]:
    # A running row with a fresh heartbeat, so no reaper pass takes it for an orphan.
    now = utcnow()
    return {"started_at": now, "heartbeat_at": now + timedelta(hours=1), "worker": "test"}


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Events of an SSE body as {"event", "id", "data"} (data JSON-decoded); comments skipped."""
    out: list[dict[str, Any]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        item: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            item[name] = value.removeprefix(" ")
        if "event" in item:
            item["data"] = json.loads(item["data"])
            out.append(item)
    return out


def read_events(client: TestClient, path: str, **kwargs: Any) -> list[dict[str, Any]]:
    with client.stream("GET", path, **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return parse_sse(response.read().decode())


@pytest.fixture
def finished(client: TestClient) -> dict[str, Any]:
    """A job trained on the inline executor: 8 epochs with a validation split."""
    dataset = upload(client, classification_csv())
    return train(client, dataset["id"], epochs=8, validation_split=0.25)


# --- the stream over HTTP -------------------------------------------------------------------------


def test_finished_job_replays_status_every_epoch_then_end(
    client: TestClient, finished: dict[str, Any]
) -> None:
    got = read_events(client, f"/jobs/{finished['id']}/events")
    history = client.get(f"/jobs/{finished['id']}/history").json()["epochs"]
    assert [e["event"] for e in got] == ["status"] + ["epoch"] * 8 + ["end"]
    assert got[0]["data"] == client.get(f"/jobs/{finished['id']}").json()
    epochs = got[1:-1]
    assert [e["id"] for e in epochs] == [str(n) for n in range(1, 9)]
    assert [e["data"] for e in epochs] == history
    assert got[-1]["data"] == {
        "status": "succeeded",
        "model_id": finished["model_id"],
        "error": None,
        "error_code": None,
    }


def test_last_event_id_header_resumes_after_that_epoch(
    client: TestClient, finished: dict[str, Any]
) -> None:
    got = read_events(client, f"/jobs/{finished['id']}/events", headers={"Last-Event-ID": "5"})
    assert [e["id"] for e in got if e["event"] == "epoch"] == ["6", "7", "8"]
    assert got[-1]["event"] == "end"


def test_last_event_id_query_resumes_like_the_header(
    client: TestClient, finished: dict[str, Any]
) -> None:
    got = read_events(client, f"/jobs/{finished['id']}/events?last_event_id=7")
    assert [e["data"]["epoch"] for e in got if e["event"] == "epoch"] == [8]


def test_last_event_id_past_the_end_sends_status_and_end_only(
    client: TestClient, finished: dict[str, Any]
) -> None:
    got = read_events(client, f"/jobs/{finished['id']}/events", headers={"Last-Event-ID": "8"})
    assert [e["event"] for e in got] == ["status", "end"]


def test_bad_last_event_id_is_422_naming_the_header(
    client: TestClient, finished: dict[str, Any]
) -> None:
    response = client.get(f"/jobs/{finished['id']}/events", headers={"Last-Event-ID": "abc"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "last-event-id"]


def test_events_of_unknown_job_is_404(client: TestClient) -> None:
    response = client.get("/jobs/nope/events")
    assert response.status_code == 404
    assert response.json()["detail"][0]["loc"] == ["path", "job_id"]


# --- history: ?since and CSV ----------------------------------------------------------------------


def test_history_since_returns_only_later_epochs(
    client: TestClient, finished: dict[str, Any]
) -> None:
    full = client.get(f"/jobs/{finished['id']}/history").json()["epochs"]
    later = client.get(f"/jobs/{finished['id']}/history?since=5").json()["epochs"]
    assert [e["epoch"] for e in later] == [6, 7, 8]
    assert later == full[5:]


def test_history_csv_is_a_download_with_the_history_fields(
    client: TestClient, finished: dict[str, Any]
) -> None:
    response = client.get(f"/jobs/{finished['id']}/history?format=csv&since=2")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert f'filename="job-{finished["id"]}-history.csv"' in response.headers["content-disposition"]
    lines = response.text.strip().split("\n")
    assert lines[0].split(",") == HISTORY_FIELDS
    full = client.get(f"/jobs/{finished['id']}/history").json()["epochs"]
    rows = [line.split(",") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == [3, 4, 5, 6, 7, 8]
    for row, record in zip(rows, full[2:], strict=True):
        for name, cell in zip(HISTORY_FIELDS, row, strict=True):
            assert (None if cell == "" else float(cell)) == record[name]


def test_history_rejects_an_unknown_format(client: TestClient, finished: dict[str, Any]) -> None:
    response = client.get(f"/jobs/{finished['id']}/history?format=xml")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "format"]


# --- the job's latest epoch and ETA ---------------------------------------------------------------


def _running_job(session: Session, epochs: int, seconds: list[float]) -> Job:
    job = Job(spec={"epochs": epochs}, status="running", attempts=1, **_live())
    job.epochs_done = len(seconds)
    session.add(job)
    session.flush()
    for n, s in enumerate(seconds, start=1):
        session.add(
            EpochRecord(
                job_id=job.id,
                epoch=n,
                loss=1.0 / n,
                val_loss=2.0 / n,
                metric=0.5,
                seconds=s,
                zero_fraction=n / 100,
            )
        )
    session.commit()
    return job


def test_job_read_carries_latest_epoch_and_eta(client: TestClient, session: Session) -> None:
    job = _running_job(session, epochs=10, seconds=[1.0, 2.0, 3.0, 2.0])
    body = client.get(f"/jobs/{job.id}").json()
    assert body["latest"] == {
        "epoch": 4,
        "loss": 0.25,
        "val_loss": 0.5,
        "metric": 0.5,
        "zero_fraction": 0.04,
    }
    assert body["eta_seconds"] == pytest.approx(2.0 * 6)  # mean 2 s x 6 epochs left
    listed = {j["id"]: j for j in client.get("/jobs").json()}
    assert listed[job.id]["eta_seconds"] == pytest.approx(12.0)


def test_eta_is_null_before_the_first_epoch_and_zero_once_finished(
    client: TestClient, session: Session, finished: dict[str, Any]
) -> None:
    job = _running_job(session, epochs=10, seconds=[])
    body = client.get(f"/jobs/{job.id}").json()
    assert body["latest"] is None and body["eta_seconds"] is None
    done = client.get(f"/jobs/{finished['id']}").json()
    assert done["eta_seconds"] == 0.0
    assert done["latest"]["epoch"] == 8


def test_job_list_reads_the_latest_epochs_in_one_query(
    client: TestClient, session: Session, db_url: str
) -> None:
    for _ in range(5):
        _running_job(session, epochs=10, seconds=[1.0, 1.0])
    engine = session.get_bind()
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "epoch_records" in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        jobs = client.get("/jobs").json()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(jobs) == 5 and all(j["latest"]["epoch"] == 2 for j in jobs)
    assert len(statements) == 1


# --- auth -----------------------------------------------------------------------------------------


@pytest.fixture
def two_keys(session: Session, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setattr(settings, "auth_required", True)
    return create_key(session=session, name="a")[1], create_key(session=session, name="b")[1]


def test_events_need_a_key_and_hide_other_keys_jobs(
    client: TestClient, two_keys: tuple[str, str]
) -> None:
    mine, theirs = two_keys
    auth = {"Authorization": f"Bearer {mine}"}
    dataset = client.post(
        "/datasets", files={"file": ("t.csv", classification_csv(), "text/csv")}, headers=auth
    ).json()
    job = client.post(
        "/jobs",
        json={
            "dataset_id": dataset["id"],
            "target": "label",
            "epochs": 3,
            "model": {"hidden_layers": []},
        },
        headers=auth,
    ).json()
    deadline = time.monotonic() + 120
    while client.get(f"/jobs/{job['id']}", headers=auth).json()["status"] not in FINISHED:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    url = f"/jobs/{job['id']}/events"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": f"Bearer {theirs}"}).status_code == 404
    assert client.get(f"{url}?api_key={theirs}").status_code == 404
    assert client.get(f"{url}?api_key=rg_wrong").status_code == 401
    got = read_events(client, f"{url}?api_key={mine}")
    assert [e["event"] for e in got] == ["status", "epoch", "epoch", "epoch", "end"]
    # The query key is accepted on the event stream only.
    assert client.get(f"/jobs/{job['id']}?api_key={mine}").status_code == 401


# --- one poller per job ---------------------------------------------------------------------------


class Writer(threading.Thread):
    """Plays a worker in another process: one committed EpochRecord per tick, then succeeds."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, epochs: int) -> None:
        super().__init__(daemon=True)
        self.sessions, self.job_id, self.epochs = sessions, job_id, epochs
        self.go = threading.Event()

    def run(self) -> None:
        self.go.wait(30)
        for n in range(1, self.epochs + 1):
            with self.sessions() as session:
                session.add(EpochRecord(job_id=self.job_id, epoch=n, loss=1.0 / n, seconds=0.01))
                job = session.get(Job, self.job_id)
                assert job is not None
                job.epochs_done = n
                if n == self.epochs:
                    job.status, job.finished_at = "succeeded", utcnow()
                session.commit()
            time.sleep(0.03)


def _counting_hub(db_url: str) -> tuple[events.EventHub, list[str]]:
    """A hub on an engine of its own whose statements are recorded."""
    engine = make_engine(db_url)
    statements: list[str] = []
    event.listen(
        engine, "before_cursor_execute", lambda _c, _cur, stmt, *_a: statements.append(stmt)
    )
    return events.EventHub(sessionmaker(bind=engine), interval=0.05), statements


def _watch(app: Any, job_id: str, n: int, writer: Writer) -> list[list[dict[str, Any]]]:
    async def main() -> list[list[dict[str, Any]]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:

            async def one() -> list[dict[str, Any]]:
                async with http.stream("GET", f"/jobs/{job_id}/events") as response:
                    assert response.status_code == 200
                    return parse_sse((await response.aread()).decode())

            tasks = [asyncio.create_task(one()) for _ in range(n)]
            await asyncio.sleep(0.2)  # let every subscriber connect before the first epoch
            writer.go.set()
            return await asyncio.gather(*tasks)

    return asyncio.run(main())


@pytest.mark.parametrize("subscribers", [1, 20])
def test_one_poller_serves_every_subscriber(
    client: TestClient, session: Session, db_url: str, subscribers: int
) -> None:
    job = Job(spec={"epochs": 12}, status="running", attempts=1, **_live())
    session.add(job)
    session.commit()
    hub, statements = _counting_hub(db_url)
    app: Any = client.app
    app.dependency_overrides[events.get_hub] = lambda: hub
    writer = Writer(sessionmaker(bind=session.get_bind()), job.id, epochs=12)
    writer.start()
    results = _watch(app, job.id, subscribers, writer)
    writer.join(30)

    for got in results:
        assert [int(e["id"]) for e in got if e["event"] == "epoch"] == list(range(1, 13))
        assert got[0]["event"] == "status" and got[-1]["event"] == "end"
        assert got[-1]["data"]["status"] == "succeeded"
    assert hub.feeds_started == 1
    # Each poll runs two statements (the job row, the new epoch rows), whoever is listening.
    queries = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(queries) == 2 * hub.polls == hub.statements
    assert hub.stats(job.id)["peak_subscribers"] == subscribers


def test_a_slow_subscriber_blocks_nobody_and_misses_nothing(db_url: str, session: Session) -> None:
    job = Job(spec={"epochs": 30}, status="running", attempts=1, **_live())
    session.add(job)
    session.commit()
    writer = Writer(sessionmaker(bind=session.get_bind()), job.id, epochs=30)
    hub = events.EventHub(sessionmaker(bind=make_engine(db_url)), interval=0.02)

    async def main() -> tuple[bytes, bytes]:
        fast = hub.stream(job.id)
        slow = hub.stream(job.id)
        first = await anext(slow)  # subscribed, then does not read while the job trains
        writer.go.set()
        writer.start()
        fast_body = b"".join([chunk async for chunk in fast])
        slow_body = first + b"".join([chunk async for chunk in slow])
        return fast_body, slow_body

    fast_body, slow_body = asyncio.run(main())
    writer.join(30)
    for body in (fast_body, slow_body):
        got = parse_sse(body.decode())
        assert [int(e["id"]) for e in got if e["event"] == "epoch"] == list(range(1, 31))
        assert got[-1]["event"] == "end"


@pytest.mark.parametrize(
    ("linger", "budget", "loads"), [(30.0, 2**20, 1), (0.0, 2**20, 2), (30.0, 0, 2)]
)
def test_a_finished_jobs_feed_lingers_within_its_budget(
    db_url: str, session: Session, linger: float, budget: int, loads: int
) -> None:
    job = Job(spec={"epochs": 3}, status="succeeded", attempts=1, finished_at=utcnow())
    session.add(job)
    session.flush()
    session.add_all(EpochRecord(job_id=job.id, epoch=n, loss=1.0) for n in (1, 2, 3))
    session.commit()
    hub = events.EventHub(
        sessionmaker(bind=make_engine(db_url)), linger=linger, max_lingering_bytes=budget
    )

    async def main() -> list[bytes]:
        return [b"".join([c async for c in hub.stream(job.id)]) for _ in range(2)]

    first, second = asyncio.run(main())
    assert first == second
    assert [int(e["id"]) for e in parse_sse(first.decode()) if e["event"] == "epoch"] == [1, 2, 3]
    assert hub.feeds_started == loads and hub.polls == loads


def _job_row(attempts: int, status: str, spec: dict[str, Any], epochs_done: int) -> dict[str, Any]:
    """A job's columns as the hub's poll reads them."""
    return {
        "id": "j",
        "status": status,
        "attempts": attempts,
        "spec": spec,
        "progress": 0.0,
        "error": None,
        "error_code": None,
        "dataset_id": None,
        "created_at": utcnow(),
        "started_at": None,
        "finished_at": None,
        "epochs_done": epochs_done,
        "cancel_requested": False,
    }


def test_feed_restarts_the_history_on_a_new_attempt() -> None:
    def poll(attempts: int, status: str, epochs: list[int], restarted: bool) -> events._Poll:
        job = _job_row(attempts, status, {"epochs": 5}, len(epochs))
        rows = [{k: (n if k == "epoch" else None) for k in HISTORY_FIELDS} for n in epochs]
        return events._Poll(job=job, records=rows, restarted=restarted)

    feed = events._Feed(job_id="j")
    feed.apply(poll(1, "running", [1, 2, 3], False))
    assert feed.epochs == [1, 2, 3] and feed.generation == 0
    feed.apply(poll(1, "running", [3], False))  # a row seen twice is kept once
    assert feed.epochs == [1, 2, 3]
    feed.apply(poll(2, "running", [1], True))  # re-queued by the reaper and claimed again
    assert feed.epochs == [1] and feed.generation == 1
    assert json.loads(feed.status_event.decode().split("data: ")[1])["attempts"] == 2


def test_feed_sends_a_search_point_once_unless_it_changes() -> None:
    def job(attempts: int) -> dict[str, Any]:
        return _job_row(attempts, "running", {"epochs": 5, "search": {"num": 2}}, 0)

    def point(fold: int | None, index: int, **extra: Any) -> dict[str, Any]:
        return {"fold": fold, "index": index, "value": 1.0 / (index + 1), "loss": 0.5, **extra}

    def sent(feed: events._Feed) -> list[dict[str, Any]]:
        return [e["data"] for e in parse_sse(b"".join(feed.events).decode())]

    feed = events._Feed(job_id="j")
    feed.apply(events._Poll(job=job(1), points=[(1, point(0, 0)), (2, point(None, 0))]))
    assert feed.last_point == 2 and len(sent(feed)) == 2
    # the split stores its points again at its end: unchanged ones are not sent twice
    feed.apply(events._Poll(job=job(1), points=[(3, point(0, 0))]))
    assert feed.last_point == 3 and len(sent(feed)) == 2
    full = point(None, 0, selected_features=["a"])
    feed.apply(events._Poll(job=job(1), points=[(4, full)]))
    assert sent(feed)[-1] == full and len(sent(feed)) == 3
    # a new attempt starts the path again
    feed.apply(events._Poll(job=job(2), points=[(9, point(0, 0))], restarted=True))
    assert sent(feed) == [point(0, 0)] and feed.generation == 1 and feed.last_point == 9
