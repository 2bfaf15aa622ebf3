"""The executor that runs job bodies, start-up recovery and the reaper.

``settings.executor`` picks the executor:

- ``"local"``: an embedded Dask ``LocalCluster`` of worker processes (one thread each, BLAS threads
  capped at 1 so ``workers`` jobs use ``workers`` cores, not ``workers x cores``);
- ``"tcp://host:port"``: a ``Client`` of an existing Dask scheduler (scale-out, with PostgreSQL);
- ``"inline"``: one background thread of the API process (tests only).

The executor only runs bodies; the database row is the job's state. Hence recovery is about rows:
a running job whose worker is gone is re-queued (or failed after ``max_attempts``), and a queued
job is (re)submitted - the body's atomic claim makes a double submission harmless.
"""

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from app.core.config import settings
from app.core.db import get_sessionmaker, utcnow
from app.jobs import service as jobs
from app.jobs.orm import Job

log = logging.getLogger("regula.worker")

BLAS_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}
# A queued job whose body errors this many times before it could even claim the row is failed.
MAX_SUBMIT_ERRORS = 3
# Dask's defaults suit many short tasks; ours are few and long. Its background chores (event-loop
# ticks every 20 ms, a statistical profiler sampling every 10 ms, system monitor, stealing) would
# otherwise cost the API process - where the embedded scheduler and the client live - CPU that
# predictions need. Workers inherit this configuration from the nanny.
QUIET_DASK = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.profile.enabled": False,
    "distributed.scheduler.work-stealing-interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
}


def run_job(job_id: str, database_url: str, data_dir: str) -> str:
    """The job body submitted to the executor: claim, train, store. Returns the final status."""
    from threadpoolctl import threadpool_limits

    from app.jobs import body as training

    # The database and data folder are the submitting service's (they may come from `regula
    # serve` flags the worker process never saw); the rest of the settings come from REGULA_*.
    with threadpool_limits(limits=1):
        return training.run(job_id, database_url, Path(data_dir))


class Executor:
    """Runs job bodies somewhere; remembers what it submitted so failures can be noticed."""

    #: True when every worker belongs to this process, so at start-up every running job is orphaned.
    owns_workers = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[str, Any] = {}
        self._submit_errors: dict[str, int] = {}
        self.wakeup = threading.Event()

    def start(self) -> None:
        """Start (or connect to) the workers."""

    def close(self) -> None:
        """Stop (or disconnect from) the workers."""

    def submit(self, job_id: str) -> None:
        """Queue the body of ``job_id``."""
        raise NotImplementedError

    def discard(self, job_id: str) -> None:
        """Drop a not-yet-started body of ``job_id`` (its job was cancelled while queued)."""

    def in_flight(self, job_id: str) -> bool:
        """Whether a body of ``job_id`` submitted by this executor has not finished yet."""
        with self._lock:
            return job_id in self._in_flight

    def failures(self) -> list[tuple[str, str]]:
        """Pop the bodies that ended abnormally (worker died, task errored): (job_id, reason)."""
        return []

    def note_submit_error(self, job_id: str) -> int:
        """Count a body of a still-queued job that failed before claiming; return the count."""
        with self._lock:
            self._submit_errors[job_id] = self._submit_errors.get(job_id, 0) + 1
            return self._submit_errors[job_id]


class InlineExecutor(Executor):
    """One background thread of the API process runs the bodies in order (tests only)."""

    def __init__(self) -> None:
        super().__init__()
        # Items: a job id, an Event to set once everything before it ran (join), None to stop.
        self._queue: queue.Queue[str | threading.Event | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="regula-inline", daemon=True)
        self._failed: list[tuple[str, str]] = []

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def submit(self, job_id: str) -> None:
        with self._lock:
            self._in_flight[job_id] = True
        self._queue.put(job_id)

    def join(self, timeout: float = 120.0) -> None:
        """Wait until every body submitted so far has run (tests)."""
        done = threading.Event()
        self._queue.put(done)
        if not done.wait(timeout):
            raise TimeoutError("the inline executor did not drain in time")

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                run_job(item, settings.database_url, str(settings.data_dir))
            except Exception as exc:  # the body catches its own errors; this is the DB being down
                log.exception("job %s: body raised", item)
                with self._lock:
                    self._failed.append((item, f"{type(exc).__name__}: {exc}"))
                self.wakeup.set()
            finally:
                with self._lock:
                    self._in_flight.pop(item, None)

    def failures(self) -> list[tuple[str, str]]:
        with self._lock:
            failed, self._failed = self._failed, []
        return failed


class DaskExecutor(Executor):
    """Job bodies as Dask tasks, on an embedded LocalCluster or an existing scheduler."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self.owns_workers = address == "local"
        self.cluster: Any = None
        self.client: Any = None

    def start(self) -> None:
        import dask
        from distributed import Client, LocalCluster

        dask.config.set(QUIET_DASK)
        if self.address == "local":
            self.cluster = LocalCluster(
                n_workers=settings.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env=BLAS_ENV,
            )
            self.client = Client(self.cluster)
        else:
            self.client = Client(self.address, timeout="30s")
        log.info("executor: dask %s", self.client.scheduler.address)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def submit(self, job_id: str) -> None:
        # A unique key per attempt: Dask would otherwise hand back the previous (finished) future.
        key = f"regula-job-{job_id}-{uuid.uuid4().hex[:8]}"
        future = self.client.submit(
            run_job,
            job_id,
            settings.database_url,
            str(settings.data_dir),
            key=key,
            pure=False,
        )
        with self._lock:
            self._in_flight[job_id] = future
        future.add_done_callback(lambda _f: self.wakeup.set())

    def discard(self, job_id: str) -> None:
        with self._lock:
            future = self._in_flight.pop(job_id, None)
        if future is not None:
            # Frees the worker slot; had the body started, its claim would refuse to run anyway.
            future.cancel()

    def failures(self) -> list[tuple[str, str]]:
        failed = []
        with self._lock:
            for job_id, future in list(self._in_flight.items()):
                if future.status == "finished":
                    del self._in_flight[job_id]
                elif future.status in ("error", "cancelled", "lost"):
                    del self._in_flight[job_id]
                    reason = future.status
                    if future.status == "error":
                        try:
                            exc = future.exception(timeout=1)
                            reason = f"{type(exc).__name__}: {exc}"
                        except Exception:
                            pass
                    failed.append((job_id, reason))
        return failed


def make_executor(address: str) -> Executor:
    """The executor for ``settings.executor``."""
    if address == "inline":
        return InlineExecutor()
    return DaskExecutor(address)


_executor: Executor | None = None


def get_executor() -> Executor | None:
    """The running executor, if the service started one."""
    return _executor


def set_executor(executor: Executor | None) -> None:
    """Install the executor used by ``submit`` (the lifespan does this)."""
    global _executor
    _executor = executor


def discard(job_id: str) -> None:
    """Tell the executor a queued job was cancelled: its pending body need not wait for a slot."""
    if _executor is not None:
        _executor.discard(job_id)


def submit(job_id: str) -> None:
    """Hand a committed, queued job to the executor (no-op with a warning if none is running)."""
    if _executor is None:
        # The row stays queued; start-up recovery or the reaper of a running service submits it.
        log.warning("job %s: no executor running; it stays queued", job_id)
        return
    _executor.submit(job_id)


# --- recovery and reaping -------------------------------------------------------------------------


def recover(executor: Executor) -> dict[str, int]:
    """Start-up: take back orphaned running jobs, then (re)submit every queued job."""
    sessions = get_sessionmaker(settings.database_url)
    requeued = failed = 0
    with sessions() as session:
        stale_only = not executor.owns_workers
        for job_id, attempts in jobs.orphaned(session=session, all_running=not stale_only):
            if jobs.requeue_or_fail(
                session=session, job_id=job_id, attempts=attempts, only_if_stale=stale_only
            ):
                requeued += 1
            else:
                failed += 1
        queued = jobs.queued_ids(session=session)
    for job_id in queued:
        executor.submit(job_id)
    if queued or failed:
        log.info(
            "recovery: %d running job(s) re-queued, %d failed, %d queued job(s) submitted",
            requeued,
            failed,
            len(queued),
        )
    return {"requeued": requeued, "failed": failed, "submitted": len(queued)}


def _handle_failure(executor: Executor, job_id: str, reason: str) -> None:
    """A body ended abnormally: take back its job if the row says it is still in progress."""
    sessions = get_sessionmaker(settings.database_url)
    with sessions() as session:
        row = session.execute(select(Job.status, Job.attempts).where(Job.id == job_id)).first()
        if row is None:
            return
        if row.status == "running":
            if jobs.requeue_or_fail(session=session, job_id=job_id, attempts=row.attempts):
                executor.submit(job_id)
        elif row.status == "queued":
            # The body died before it could claim the row (e.g. the task was cancelled).
            if executor.note_submit_error(job_id) >= MAX_SUBMIT_ERRORS:
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == "queued")
                    .values(
                        status="failed",
                        error=f"The job could not be started on a worker ({reason}).",
                        error_code="worker_error",
                        finished_at=utcnow(),
                    )
                    .execution_options(synchronize_session=False)
                )
                session.commit()
            else:
                executor.submit(job_id)


def reap_once(executor: Executor) -> dict[str, int]:
    """One reaper pass: stale heartbeats, failed futures, queued jobs nobody is running."""
    sessions = get_sessionmaker(settings.database_url)
    counts = {"stale": 0, "failed_futures": 0, "resubmitted": 0}
    for job_id, reason in executor.failures():
        counts["failed_futures"] += 1
        log.warning("job %s: its task ended abnormally: %s", job_id, reason)
        _handle_failure(executor, job_id, reason)
    with sessions() as session:
        for job_id, attempts in jobs.orphaned(session=session, all_running=False):
            counts["stale"] += 1
            if jobs.requeue_or_fail(
                session=session, job_id=job_id, attempts=attempts, only_if_stale=True
            ):
                executor.submit(job_id)
        # A queued job that no executor task will pick up (its submission was lost) gets one.
        cutoff = utcnow() - timedelta(seconds=settings.stale_after_seconds)
        stmt = select(Job.id).where(Job.status == "queued", Job.created_at < cutoff)
        leftovers = [job_id for job_id in session.scalars(stmt) if not executor.in_flight(job_id)]
    for job_id in leftovers:
        counts["resubmitted"] += 1
        executor.submit(job_id)
    return counts


class Reaper:
    """A thread that runs ``reap_once`` every few seconds (or at once when a task ends).

    ``housekeeping`` (e.g. collecting orphaned dataset files) runs every ``housekeeping_every``
    seconds on the same thread.
    """

    def __init__(
        self,
        executor: Executor,
        interval: float | None = None,
        housekeeping: Callable[[], None] | None = None,
        housekeeping_every: float = 300.0,
    ) -> None:
        self.executor = executor
        self.interval = interval or max(0.5, min(5.0, settings.stale_after_seconds / 4))
        self.housekeeping = housekeeping
        self.housekeeping_every = housekeeping_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="regula-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.executor.wakeup.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        last_housekeeping = time.monotonic()
        while not self._stop.is_set():
            self.executor.wakeup.wait(self.interval)
            self.executor.wakeup.clear()
            if self._stop.is_set():
                return
            try:
                reap_once(self.executor)
                if (
                    self.housekeeping is not None
                    and time.monotonic() - last_housekeeping > self.housekeeping_every
                ):
                    last_housekeeping = time.monotonic()
                    self.housekeeping()
            except Exception:  # the database may be briefly unreachable; try again next pass
                log.warning("reaper pass failed", exc_info=True)


def start_service(housekeeping: Callable[[], None] | None = None) -> tuple[Executor, Reaper]:
    """Lifespan start: executor, recovery, reaper."""
    executor = make_executor(settings.executor)
    executor.start()
    set_executor(executor)
    recover(executor)
    reaper = Reaper(executor, housekeeping=housekeeping)
    reaper.start()
    return executor, reaper


def stop_service(executor: Executor, reaper: Reaper) -> None:
    """Lifespan end: stop the reaper, then the executor."""
    reaper.stop()
    set_executor(None)
    executor.close()
