"""Executors run job bodies; the reaper thread drives the state machine's recovery passes.

``settings.executor`` picks the executor:

- ``"local"``: an embedded Dask ``LocalCluster`` of worker processes (one thread each, BLAS threads
  capped at 1 so ``workers`` jobs use ``workers`` cores, not ``workers x cores``);
- ``"tcp://host:port"``: a ``Client`` of an existing Dask scheduler (scale-out, with PostgreSQL);
- ``"inline"``: one background thread of the API process (tests only).

The executor only runs bodies; the database row is the job's state, and every transition is in
``app.jobs.state``, which is handed the executor. Bodies are queued with a priority (higher runs
first) so that keys share the workers fairly.
"""

import heapq
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from app.core.config import settings
from app.core.db import get_sessionmaker
from app.jobs import state

log = logging.getLogger("regula.worker")

BLAS_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}
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


WARM_MODULES = ("app.tables", "app.jobs.body", "app.datasets.service", "app.paths.runner")


def warm_up() -> None:
    """Import what a job body and a path's split tasks use (the engine, SQLAlchemy, the ORM,
    pyarrow's Parquet reader)."""
    import importlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    for module in WARM_MODULES:
        importlib.import_module(module)
    # pyarrow sets its Parquet reader up on the first read (about 0.3 s): one of a tiny table.
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"x": [0.0]}), buffer)
    pq.read_table(pa.BufferReader(buffer.getvalue()))


def _warm_up_plugin() -> Any:
    from distributed.diagnostics.plugin import WorkerPlugin

    class WarmUp(WorkerPlugin):
        """Runs :func:`warm_up` on every worker as it starts (and on those running already).

        A fresh worker process would otherwise spend about two seconds importing inside its
        first task: the first job's time, and with a search on several workers the first
        split each of them runs, while the workers that had it imported wait for nothing.
        """

        name = "regula-warm-up"

        def setup(self, worker: Any) -> None:
            warm_up()

    return WarmUp()


def run_job(job_id: str, database_url: str, data_dir: str) -> str:
    """The job body submitted to the executor: claim, train, store. Returns the final status."""
    from threadpoolctl import threadpool_limits

    from app.core import logs
    from app.jobs import body as training

    logs.configure()  # a worker process has none of the API process's logging set-up

    # The database and data folder are the submitting service's (they may come from `regula
    # serve` flags the worker process never saw); the rest of the settings come from REGULA_*.
    with threadpool_limits(limits=1):
        return training.run(job_id=job_id, database_url=database_url, data_dir=Path(data_dir))


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

    def submit(self, job_id: str, *, priority: int = 0) -> None:
        """Queue the body of ``job_id``; among waiting bodies a higher ``priority`` runs first."""
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
    """One background thread of the API process runs the bodies, by priority (tests only)."""

    def __init__(self) -> None:
        super().__init__()
        # A heap of (-priority, sequence, job id); sequence keeps equal priorities in order.
        self._heap: list[tuple[int, int, str]] = []
        self._sequence = itertools.count()
        self._ready = threading.Condition(self._lock)
        self._stopping = False
        self._running: str | None = None
        self._thread = threading.Thread(target=self._loop, name="regula-inline", daemon=True)
        self._failed: list[tuple[str, str]] = []

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        self._thread.join(timeout=60)

    def submit(self, job_id: str, *, priority: int = 0) -> None:
        with self._ready:
            self._in_flight[job_id] = True
            heapq.heappush(self._heap, (-priority, next(self._sequence), job_id))
            self._ready.notify_all()

    def discard(self, job_id: str) -> None:
        with self._ready:
            if job_id != self._running:
                self._heap = [item for item in self._heap if item[2] != job_id]
                heapq.heapify(self._heap)
                self._in_flight.pop(job_id, None)
            self._ready.notify_all()

    def join(self, timeout: float = 120.0) -> None:
        """Wait until every body submitted so far has run (tests)."""
        with self._ready:
            if not self._ready.wait_for(lambda: not self._in_flight, timeout):
                raise TimeoutError("the inline executor did not drain in time")

    def _next(self) -> str | None:
        with self._ready:
            self._ready.wait_for(lambda: self._heap or self._stopping)
            if self._stopping:
                return None
            self._running = heapq.heappop(self._heap)[2]
            return self._running

    def _loop(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            try:
                run_job(item, settings.database_url, str(settings.data_dir))
            except Exception as exc:  # the body catches its own errors; this is the DB being down
                log.exception("job %s: body raised", item)
                with self._lock:
                    self._failed.append((item, f"{type(exc).__name__}: {exc}"))
                self.wakeup.set()
            finally:
                with self._ready:
                    self._running = None
                    self._in_flight.pop(item, None)
                    self._ready.notify_all()

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
        self.client.register_plugin(_warm_up_plugin())
        log.info("executor: dask %s", self.client.scheduler.address)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def submit(self, job_id: str, *, priority: int = 0) -> None:
        # A unique key per attempt: Dask would otherwise hand back the previous (finished) future.
        key = f"regula-job-{job_id}-{uuid.uuid4().hex[:8]}"
        future = self.client.submit(
            run_job,
            job_id,
            settings.database_url,
            str(settings.data_dir),
            key=key,
            pure=False,
            priority=priority,
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

    @staticmethod
    def _sessions() -> Any:
        return get_sessionmaker(settings.database_url)

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
                state.reap_once(sessions=self._sessions(), executor=self.executor)
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
    state.recover(sessions=get_sessionmaker(settings.database_url), executor=executor)
    reaper = Reaper(executor, housekeeping=housekeeping)
    reaper.start()
    return executor, reaper


def stop_service(executor: Executor, reaper: Reaper) -> None:
    """Lifespan end: stop the reaper, then the executor."""
    reaper.stop()
    executor.close()


def get_executor(request: Request) -> Executor | None:
    """The executor the app's lifespan started (None outside a running app)."""
    return getattr(request.app.state, "executor", None)


ExecutorDep = Annotated[Executor | None, Depends(get_executor)]
