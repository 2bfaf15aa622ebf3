"""The event stream of a job (GET /jobs/{id}/events), its progress summary and its console lines.

Server-Sent Events, in this order on every connection::

    event: status   data: the job exactly as GET /jobs/{id} returns it (JSON)
    id: <epoch>     event: epoch   data: one history row (the fields of GET /jobs/{id}/history)
    event: point    data: one point of a search job's path, as a split reaches it
    ...             (more epochs and points; another ``status`` whenever the job's state changes)
    event: end      data: {"status", "model_id", "error", "error_code"} (then the stream closes)

plus a comment line (``: ping``) every 15 s so proxies keep the connection open. A client that
reconnects with ``Last-Event-ID: N`` (header, or ``?last_event_id=N``) gets epochs N+1.. onward,
none twice; a finished job replays its history, then ``end``. Only epoch events carry an id.
A search job has no epochs: its ``point`` events (``fold``: 0..K-1, or null for the path on all
training rows; ``index`` in the grid, ``value``, the held-out ``loss`` and ``metric`` of a fold,
``nonzero`` and ``selected_features`` of the all-rows path) replay in full on every connection. A
point comes again when a later write adds to it (the all-rows path's statistics); the last wins.
If a job is taken back by the reaper and re-run from epoch 1, a ``status`` event with the queued
job comes first and the epochs start again at 1.

The worker that writes the rows may run in another process (a Dask worker), so the API side reads
them from the database: ONE poller per job (an asyncio task polling in a thread every
``interval`` seconds with two statements: the job row, and the epoch rows after the last one
seen; a search job's a third, its path points after the last one seen), shared by every
subscriber of that job. The poller keeps the job's history, already encoded as SSE bytes, in
memory; a subscriber is a cursor into it plus a wake-up event. So a slow subscriber blocks nobody
and can never overflow: when it reads again it takes everything after its cursor, from memory (the
history of one job is bounded by ``settings.max_epochs``, a search's points by its grid size times
its splits, each sent at most twice). The poller
stops when the job ends or its last subscriber leaves; a finished job's feed is kept for
``linger`` seconds (within a memory budget) so a burst of viewers shares one load.
"""

import asyncio
import bisect
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from app.core.config import settings
from app.core.db import get_sessionmaker
from app.jobs.orm import FINISHED_STATUSES, EpochRecord, Job
from app.jobs.schemas import EpochRead, JobRead, LatestEpoch
from app.models.orm import Model
from app.paths.orm import FULL_PATH, PathPoint

log = logging.getLogger("regula.jobs")

HISTORY_FIELDS = tuple(EpochRead.model_fields)
LATEST_FIELDS = tuple(LatestEpoch.model_fields)
JOB_COLUMNS = tuple(column.key for column in Job.__table__.columns)
# A change of any of these is a new ``status`` event for every subscriber.
STATUS_KEY = ("status", "attempts", "cancel_requested", "model_id", "error_code")


# --- the job's summary: latest epoch and ETA (one rule for GET /jobs and the stream) -------------


def summarize(
    *, status: str, epochs: int | None, latest: Mapping[str, Any] | None, mean_seconds: float | None
) -> tuple[LatestEpoch | None, float | None]:
    """``latest`` and ``eta_seconds`` of a job from its last epoch row and mean seconds per epoch.

    ETA = mean seconds per epoch x (epochs - last epoch); 0 once the job has finished; None while
    queued or before the first epoch (nothing to measure yet).
    """
    summary = None if latest is None else LatestEpoch(**{k: latest[k] for k in LATEST_FIELDS})
    if status in FINISHED_STATUSES:
        return summary, 0.0
    if status != "running" or summary is None or mean_seconds is None or not epochs:
        return summary, None
    return summary, max(epochs - summary.epoch, 0) * float(mean_seconds)


def latest_records(
    *, session: Session, job_ids: list[str]
) -> dict[str, tuple[EpochRecord, float | None]]:
    """Each job's last EpochRecord and its mean seconds per epoch, in ONE query for all jobs."""
    if not job_ids:
        return {}
    agg = (
        select(
            EpochRecord.job_id.label("job_id"),
            func.max(EpochRecord.epoch).label("last"),
            func.avg(EpochRecord.seconds).label("mean_seconds"),
        )
        .where(EpochRecord.job_id.in_(job_ids))
        .group_by(EpochRecord.job_id)
        .subquery()
    )
    stmt = select(EpochRecord, agg.c.mean_seconds).join(
        agg, and_(EpochRecord.job_id == agg.c.job_id, EpochRecord.epoch == agg.c.last)
    )
    return {record.job_id: (record, mean) for record, mean in session.execute(stmt)}


def read_jobs(*, session: Session, jobs: list[Job]) -> list[JobRead]:
    """The API view of jobs, with their latest epoch and ETA (one extra query for the lot)."""
    found = latest_records(session=session, job_ids=[job.id for job in jobs if job.epochs_done])
    out = []
    for job in jobs:
        record, mean = found.get(job.id, (None, None))
        row = None if record is None else {k: getattr(record, k) for k in LATEST_FIELDS}
        latest, eta = summarize(
            status=job.status, epochs=job.spec.get("epochs"), latest=row, mean_seconds=mean
        )
        read = JobRead.model_validate(job)
        out.append(read.model_copy(update={"latest": latest, "eta_seconds": eta}))
    return out


# --- the hub: one poller per job, fanned out to its subscribers ---------------------------------


def _sse(event: str, data: str, event_id: int | None = None) -> bytes:
    head = "" if event_id is None else f"id: {event_id}\r\n"
    return f"{head}event: {event}\r\ndata: {data}\r\n\r\n".encode()


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


@dataclass
class _Poll:
    """What one poll read: the job's columns, its model id and the new epoch rows (as dicts)."""

    job: dict[str, Any] | None
    model_id: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    restarted: bool = False  # the history was read again from epoch 1 (a new attempt)
    points: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (row id, point)


def _point(row: PathPoint) -> dict[str, Any]:
    """The ``point`` event of a stored path point."""
    out: dict[str, Any] = {
        "fold": None if row.fold == FULL_PATH else row.fold,
        "index": row.index,
        "value": row.value,
        "loss": row.loss,
        "metric": row.metric,
        "nonzero": row.nonzero,
    }
    if row.stats and "selected" in row.stats:
        out["selected_features"] = row.stats["selected"]
    return out


@dataclass(eq=False)
class _Subscriber:
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Feed:
    """One job's shared state: the encoded history, the job's last status event, its poller."""

    job_id: str
    # Per event, the epoch after which a reconnecting client still gets it (ascending): an epoch
    # event's own number, a point event's is the epoch before it plus a half.
    epochs: list[float] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)  # their encoded SSE events
    last_epoch: int = 0
    last_point: int = 0  # the last PathPoint row id read
    points: dict[tuple[int | None, int], str] = field(default_factory=dict)  # sent, by place
    seconds_sum: float = 0.0
    seconds_n: int = 0
    job: dict[str, Any] | None = None  # JobRead as JSON
    status_event: bytes = b""
    status_key: tuple[Any, ...] = ()
    version: int = 0  # bumped when the job's state changes (a new status event)
    generation: int = 0  # bumped when the history restarts from epoch 1
    attempts: int | None = None
    finished: bool = False
    gone: bool = False  # the job row disappeared
    stopping: bool = False  # its poller was cancelled (the last subscriber left)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    subscribers: set[_Subscriber] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    polls: int = 0
    statements: int = 0
    peak_subscribers: int = 0
    stopped_at: float | None = None

    @property
    def status(self) -> str | None:
        return None if self.job is None else self.job["status"]

    def apply(self, poll: _Poll) -> None:
        """Fold one poll's result into the feed and wake the subscribers if anything changed."""
        changed = False
        if poll.job is None:
            self.gone = changed = True
        else:
            if poll.restarted and (self.epochs or self.last_point):
                self.epochs, self.events, self.points = [], [], {}
                self.last_epoch = self.last_point = 0
                self.seconds_sum, self.seconds_n = 0.0, 0
                self.generation += 1
                changed = True
            self.attempts = poll.job["attempts"]
            for record in poll.records:
                if record["epoch"] <= self.last_epoch:
                    continue  # already known (never sent twice)
                self.last_epoch = record["epoch"]
                self.epochs.append(record["epoch"])
                self.events.append(_sse("epoch", _dumps(record), record["epoch"]))
                if record["seconds"] is not None:
                    self.seconds_sum += record["seconds"]
                    self.seconds_n += 1
                changed = True
            for row_id, point in poll.points:
                self.last_point = max(self.last_point, row_id)
                data = _dumps(point)
                place = (point["fold"], point["index"])
                if self.points.get(place) == data:
                    continue  # rewritten as it was (a split stores its points again at its end)
                self.points[place] = data
                self.epochs.append(self.last_epoch + 0.5)
                self.events.append(_sse("point", data))
                changed = True
            job = dict(poll.job, model_id=poll.model_id)
            key = tuple(job.get(k) for k in STATUS_KEY)
            if key != self.status_key or self.job is None or poll.records or poll.points:
                # Kept current (progress, latest, ETA) for new subscribers; re-sent to the others
                # only when the job's state changes.
                self.job = self._job_read(job, poll.records)
                self.status_event = _sse("status", _dumps(self.job))
                if key != self.status_key:
                    self.status_key = key
                    self.version += 1
                    changed = True
            self.finished = job["status"] in FINISHED_STATUSES
        if changed:
            for subscriber in self.subscribers:
                subscriber.wake.set()

    def _job_read(self, job: dict[str, Any], new_records: list[dict[str, Any]]) -> dict[str, Any]:
        latest = None
        if self.events:
            latest = new_records[-1] if new_records else (self.job or {}).get("latest")
        mean = self.seconds_sum / self.seconds_n if self.seconds_n else None
        summary, eta = summarize(
            status=job["status"],
            epochs=(job.get("spec") or {}).get("epochs"),
            latest=latest,
            mean_seconds=mean,
        )
        read = JobRead.model_validate({**job, "latest": summary, "eta_seconds": eta})
        return read.model_dump(mode="json")

    def end_event(self) -> bytes:
        job = self.job or {}
        data = {k: job.get(k) for k in ("status", "model_id", "error", "error_code")}
        return _sse("end", _dumps(data))


class EventHub:
    """Pollers per job id and their subscribers. All methods run on the event loop's thread."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        *,
        interval: float = 0.25,
        linger: float = 30.0,
        max_lingering_bytes: int = 32 * 2**20,
    ) -> None:
        self._sessions = sessions
        self.interval = interval
        self.linger = linger
        self.max_lingering_bytes = max_lingering_bytes
        self._feeds: dict[str, _Feed] = {}
        # Finished feeds, oldest first, with the bytes of their encoded history.
        self._done: OrderedDict[str, tuple[_Feed, int]] = OrderedDict()
        self._done_bytes = 0
        self.feeds_started = 0
        self.polls = 0
        self.statements = 0

    # -- database side (runs in a worker thread) --

    def _poll(
        self, job_id: str, after: int, attempts: int | None, status: str | None, after_point: int
    ) -> tuple[_Poll, int]:
        with self._sessions() as session:
            row = session.execute(
                select(Job, Model.id)
                .outerjoin(Model, Model.job_id == Job.id)
                .where(Job.id == job_id)
            ).first()
            if row is None:
                return _Poll(job=None), 1
            job, model_id = row
            # Taken back by the reaper (its rows deleted) or claimed again: a new attempt re-runs
            # from epoch 1, so read the history again.
            restarted = (attempts is not None and job.attempts != attempts) or (
                status == "running" and job.status == "queued"
            )
            since = 0 if restarted else after
            records = session.scalars(
                select(EpochRecord)
                .where(EpochRecord.job_id == job_id, EpochRecord.epoch > since)
                .order_by(EpochRecord.epoch)
            ).all()
            points: list[tuple[int, dict[str, Any]]] = []
            search = bool((job.spec or {}).get("search"))
            if search:
                rows = session.scalars(
                    select(PathPoint)
                    .where(
                        PathPoint.job_id == job_id,
                        PathPoint.attempt == job.attempts,
                        PathPoint.id > (0 if restarted else after_point),
                    )
                    .order_by(PathPoint.id)
                ).all()
                points = [(row.id, _point(row)) for row in rows]
            return (
                _Poll(
                    job={k: getattr(job, k) for k in JOB_COLUMNS},
                    model_id=model_id,
                    records=[{k: getattr(r, k) for k in HISTORY_FIELDS} for r in records],
                    restarted=restarted,
                    points=points,
                ),
                3 if search else 2,
            )

    # -- event loop side --

    async def _run(self, feed: _Feed) -> None:
        failures = 0
        try:
            while True:
                try:
                    poll, statements = await asyncio.to_thread(
                        self._poll,
                        feed.job_id,
                        feed.last_epoch,
                        feed.attempts,
                        feed.status,
                        feed.last_point,
                    )
                except Exception:
                    failures += 1
                    if failures in (1, 10) or failures % 100 == 0:
                        log.warning("events: polling job %s failed", feed.job_id, exc_info=True)
                else:
                    failures = 0
                    feed.polls += 1
                    feed.statements += statements
                    self.polls += 1
                    self.statements += statements
                    feed.apply(poll)
                    feed.ready.set()
                    if feed.finished or feed.gone:
                        return
                if not feed.subscribers:
                    return
                await asyncio.sleep(self.interval)
        finally:
            feed.ready.set()  # never leave a subscriber waiting for a first poll that failed
            self._retire(feed)

    def _retire(self, feed: _Feed) -> None:
        if self._feeds.get(feed.job_id) is feed:
            del self._feeds[feed.job_id]
        feed.stopped_at = time.monotonic()
        for subscriber in feed.subscribers:
            subscriber.wake.set()
        if feed.finished and self.linger > 0:
            self._drop_done(feed.job_id)
            size = sum(map(len, feed.events)) + len(feed.status_event)
            self._done[feed.job_id] = (feed, size)
            self._done_bytes += size
        self._purge()
        log.debug(
            "events: job %s poller stopped after %d polls (%d statements), %d subscribers at most",
            feed.job_id,
            feed.polls,
            feed.statements,
            feed.peak_subscribers,
        )

    def _drop_done(self, job_id: str) -> None:
        entry = self._done.pop(job_id, None)
        if entry is not None:
            self._done_bytes -= entry[1]

    def _purge(self) -> None:
        """Forget finished feeds older than ``linger`` or beyond the memory budget, oldest first."""
        now = time.monotonic()
        while self._done:
            job_id, (feed, _size) = next(iter(self._done.items()))
            expired = feed.stopped_at is not None and now - feed.stopped_at >= self.linger
            if not expired and self._done_bytes <= self.max_lingering_bytes:
                return
            self._drop_done(job_id)

    def _feed(self, job_id: str) -> _Feed:
        feed = self._feeds.get(job_id)
        if feed is not None and not feed.stopping:
            return feed
        self._purge()
        if job_id in self._done:
            return self._done[job_id][0]
        feed = _Feed(job_id=job_id)
        self._feeds[job_id] = feed
        self.feeds_started += 1
        feed.task = asyncio.create_task(self._run(feed), name=f"regula-events-{job_id}")
        return feed

    def _leave(self, feed: _Feed, subscriber: _Subscriber) -> None:
        feed.subscribers.discard(subscriber)
        if not feed.subscribers and feed.task is not None and not feed.task.done():
            feed.stopping = True  # a subscriber arriving now gets a new feed
            feed.task.cancel()  # the last subscriber left: stop polling now

    def stats(self, job_id: str) -> dict[str, Any]:
        """Poller figures of one job (operators: is anyone watching, how hard is the DB polled)."""
        feed = self._feeds.get(job_id) or self._done.get(job_id, (None, 0))[0]
        if feed is None:
            return {
                "active": False,
                "subscribers": 0,
                "peak_subscribers": 0,
                "polls": 0,
                "statements": 0,
            }
        return {
            "active": feed.task is not None and not feed.task.done(),
            "subscribers": len(feed.subscribers),
            "peak_subscribers": feed.peak_subscribers,
            "polls": feed.polls,
            "statements": feed.statements,
        }

    async def stream(self, job_id: str, after: int = 0) -> AsyncIterator[bytes]:
        """The SSE bytes of ``job_id`` for one subscriber, starting after epoch ``after``."""
        feed = self._feed(job_id)
        subscriber = _Subscriber()
        feed.subscribers.add(subscriber)
        feed.peak_subscribers = max(feed.peak_subscribers, len(feed.subscribers))
        try:
            await feed.ready.wait()
            generation, version = feed.generation, -1
            cursor = bisect.bisect_right(feed.epochs, after)
            while True:
                subscriber.wake.clear()
                chunk: list[bytes] = []
                if feed.generation != generation:
                    # A new attempt: its status (queued or running again) first, then epoch 1..
                    generation, cursor, version = feed.generation, 0, -1
                if version == -1 and feed.status_event:
                    chunk.append(feed.status_event)
                    version = feed.version
                chunk.extend(feed.events[cursor:])
                cursor = len(feed.events)
                if feed.version != version:
                    chunk.append(feed.status_event)
                    version = feed.version
                # Decided with the chunk: the feed may change while the chunk is being sent.
                last = True
                if feed.finished:
                    chunk.append(feed.end_event())
                elif feed.gone:
                    chunk.append(_sse("error", _dumps({"msg": "The job no longer exists."})))
                elif feed.task is None or feed.task.done():
                    # Only on a bug or at shutdown: say so, and let the client resume.
                    msg = "The event stream stopped; reconnect with Last-Event-ID to resume."
                    chunk.append(_sse("error", _dumps({"msg": msg})))
                else:
                    last = False
                if chunk:
                    yield b"".join(chunk)
                if last:
                    return
                await subscriber.wake.wait()
        finally:
            self._leave(feed, subscriber)


def get_hub(request: Request) -> EventHub:
    """The app's hub, made on first use with the one session factory (tests may override this)."""
    hub = getattr(request.app.state, "event_hub", None)
    if hub is None:
        hub = EventHub(get_sessionmaker(settings.database_url))
        request.app.state.event_hub = hub
    return hub
