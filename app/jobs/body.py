"""The job body: claim a queued job, train it with the engine, store history and model.

Runs on a Dask worker (or the inline executor's thread), never in a request. Every write goes
through ``app.jobs.state`` and is guarded by ``status = 'running' AND attempts = <this attempt>``:
if the reaper took the job back (the worker was presumed lost) a late writer changes nothing.
"""

import contextlib
import logging
import math
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from sqlalchemy.orm import Session, sessionmaker

import engine
from app.core.config import settings
from app.core.db import get_sessionmaker
from app.datasets.orm import Dataset
from app.jobs import state
from app.jobs.orm import Job
from app.models import service as models_service

log = logging.getLogger("regula.training")

# The per-epoch fields an EpochRecord stores: every key of the engine's record but "epoch".
HISTORY_FIELDS = tuple(key for key in engine.HISTORY_KEYS if key != "epoch")
SERVICE_KEYS = ("dataset_id", "target", "features")


class JobFailed(Exception):
    """A failure with a sentence for the user and a stable code."""

    def __init__(self, msg: str, code: str) -> None:
        super().__init__(msg)
        self.msg = msg
        self.code = code


def worker_name() -> str:
    """The Dask worker address running this body, else ``hostname:pid``."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def memory_limit(budget_bytes: int) -> Iterator[None]:
    """Cap this process's address space at its current size plus ``budget_bytes`` meanwhile.

    An allocation past the cap raises ``MemoryError`` in the job (failed as ``out_of_memory``)
    instead of the machine swapping. Only for a process that runs one job at a time (a Dask
    worker with one thread): the cap is the whole process's.
    """
    current = psutil.Process().memory_info().vms
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = current + budget_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _memory_guard() -> contextlib.AbstractContextManager[None]:
    """The job's memory cap on a one-thread Dask worker; nothing in the API process (inline)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return contextlib.nullcontext()
    if worker.state.nthreads != 1:
        return contextlib.nullcontext()
    # The submit-time estimate is held to the limit; the margin covers the interpreter's own
    # allocations and temporaries the estimate leaves out.
    return memory_limit(int(settings.max_job_memory_mb * 2**20 * MEMORY_MARGIN))


class Heartbeat:
    """A daemon thread refreshing the attempt's heartbeat: a long epoch is not a lost worker."""

    def __init__(
        self, sessions: sessionmaker[Session], job_id: str, attempt: int, interval: float
    ) -> None:
        self._beat = lambda: state.heartbeat(sessions, job_id, attempt)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="regula-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except Exception:  # a missed beat is harmless; the next one retries
                log.warning("heartbeat failed", exc_info=True)


def _finite(value: Any) -> float | None:
    # Diverged training can report NaN/inf; the history stores those as null (JSON has no NaN).
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# Runtime memory cap = REGULA_MAX_JOB_MEMORY_MB times this.
MEMORY_MARGIN = 1.25

# Values whose squares overflow float32 (about 1.8e19): a loss over them is inf from the start.
HUGE_VALUE = float(np.sqrt(np.finfo(np.float32).max))


def _divergence_reason(spec: dict[str, Any], dataset: Dataset) -> str | None:
    """Name the column that made training diverge, when its profile shows values too large."""
    used = {spec["target"], *spec["features"]}
    for column in dataset.columns:
        if column["name"] not in used or column.get("dtype") != "number":
            continue
        extreme = column.get("max_abs") or 0.0
        if extreme > HUGE_VALUE:
            role = "target" if column["name"] == spec["target"] else "feature"
            return (
                f"Training diverged: {role} column {column['name']!r} holds values up to "
                f"{extreme:.3g}, too large for the network's arithmetic; rescale that column "
                "(e.g. to other units, or its logarithm)."
            )
    return None


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4g}"


def _labels(y: np.ndarray) -> np.ndarray:
    """Classification labels as the dataset wrote them: integral floats (a 0/1 CSV) become ints."""
    if y.dtype.kind == "f" and np.isfinite(y).all() and np.array_equal(y, np.round(y)):
        return y.astype(np.int64)
    return y


def _load(sessions: sessionmaker[Session], job_id: str) -> tuple[Job, Dataset]:
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise state.LostClaim(job_id)
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        session.expunge_all()
    if dataset is None:
        raise JobFailed(
            "The dataset was deleted before the job could train on it.", "dataset_deleted"
        )
    return job, dataset


def _read_images(
    job: Job, dataset: Dataset, data_dir: Path
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """An image dataset as ``{image column: x (N, C, H, W) memory map}`` and its labels."""
    from app.datasets import service as datasets

    spec = job.spec
    try:
        x, y = datasets.load_images(dataset, data_dir)
    except FileNotFoundError as exc:
        raise JobFailed(
            "The dataset was deleted before the job could train on it.", "dataset_deleted"
        ) from exc
    if spec["task"] == "classification":
        y = _labels(y)
    return {spec["features"][0]: x}, y


def _read_table(
    job: Job, dataset: Dataset, data_dir: Path
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from app.datasets import service as datasets

    spec = job.spec
    if dataset.kind == "images":
        return _read_images(job, dataset, data_dir)
    try:
        table = datasets.load_table(
            dataset, data_dir=data_dir, columns=[spec["target"], *spec["features"]]
        )
    except FileNotFoundError as exc:
        raise JobFailed(
            "The dataset was deleted before the job could train on it.", "dataset_deleted"
        ) from exc
    missing = [c for c in [spec["target"], *spec["features"]] if c not in table]
    if missing:
        raise JobFailed(f"The dataset has no column {missing[0]!r}.", "missing_column")
    X = {name: table[name] for name in spec["features"]}
    y = table[spec["target"]]
    if spec["task"] == "classification":
        y = _labels(y)
    return X, y


class HistoryWriter:
    """The trainer's epoch callback: stores epoch rows in batches and answers "cancel?".

    Each flush is one transaction (rows, progress, heartbeat, the cancel flag read back), at most
    one every ``flush_seconds``: 10,000 short epochs cost a few commits a second, not 10,000,
    while a watcher still sees the history grow live. The first epoch and the last are flushed at
    once.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        attempt: int,
        *,
        epochs: int,
        flush_seconds: float,
    ) -> None:
        self._sessions = sessions
        self._job_id = job_id
        self._attempt = attempt
        self._epochs = epochs
        self._flush_seconds = flush_seconds
        self._pending: list[dict[str, Any]] = []
        self._last_flush = -math.inf
        self._last_log = -math.inf
        self._cancel = False

    def _log(self, record: dict[str, Any]) -> None:
        # One console line every few seconds while a job trains, so an operator sees it move.
        now = time.monotonic()
        if now - self._last_log < settings.progress_log_seconds:
            return
        self._last_log = now
        log.info(
            "job %s: epoch %d/%d loss %s val_loss %s zero_fraction %s",
            self._job_id,
            int(record["epoch"]),
            self._epochs,
            _fmt(record.get("loss")),
            _fmt(record.get("val_loss")),
            _fmt(record.get("zero_fraction")),
        )

    def __call__(self, record: dict[str, Any]) -> bool:
        row = {key: _finite(record.get(key)) for key in HISTORY_FIELDS}
        row["epoch"] = int(record["epoch"])
        self._pending.append(row)
        self._log(record)
        if time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()
        return self._cancel

    def on_batch(self, info: dict[str, Any]) -> None:
        """The trainer's in-epoch progress (``{"epoch", "batch", "batches"}``, at most every
        ~0.5 s): stores ``Job.progress`` so a long image epoch shows movement, at most once per
        ``flush_seconds``, together with any pending epoch rows."""
        if time.monotonic() - self._last_flush < max(self._flush_seconds, 0.5):
            return
        done = int(info["epoch"]) - 1 + int(info["batch"]) / max(int(info["batches"]), 1)
        progress = min(done / self._epochs, 1.0) if self._epochs else 0.0
        rows, self._pending = self._pending, []
        self._cancel = state.record_epochs(
            self._sessions,
            self._job_id,
            self._attempt,
            rows,
            epochs=self._epochs,
            progress=progress,
        )
        self._last_flush = time.monotonic()

    def flush(self) -> None:
        """Write the pending rows now (also called once training has ended)."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        self._cancel = state.record_epochs(
            self._sessions, self._job_id, self._attempt, rows, epochs=self._epochs
        )
        self._last_flush = time.monotonic()


def _service_keys(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: spec[key] for key in SERVICE_KEYS if key in spec}


def _store(
    model: engine.Model, spec: dict[str, Any] | None = None
) -> Callable[[Session, Job], Any]:
    """Add ``model``'s row; ``spec`` (a search's final fit) replaces the job's engine spec."""

    def store(session: Session, job: Job) -> Any:
        row = models_service.create(session=session, job=job, model=model)
        if spec is not None:
            row.spec = {**spec, **_service_keys(job.spec)}
        return row

    return store


def run(*, job_id: str, database_url: str, data_dir: Path) -> str:
    """Claim and train ``job_id``; return the final status ("skipped" if the claim was refused)."""
    sessions = get_sessionmaker(database_url)
    attempt = state.claim(sessions, job_id, worker_name())
    if attempt is None:
        log.info("job %s: not queued any more, skipping", job_id)
        return "skipped"
    log.info("job %s: attempt %d started on %s", job_id, attempt, worker_name())
    started = time.monotonic()

    def fail(msg: str, code: str) -> str:
        state.fail(sessions, job_id, attempt, msg, code)
        log.info("job %s: failed (%s) after %.1f s", job_id, code, time.monotonic() - started)
        return "failed"

    try:
        with Heartbeat(sessions, job_id, attempt, settings.heartbeat_seconds):
            job, dataset = _load(sessions, job_id)
            X, y = _read_table(job, dataset, data_dir)
            spec = {k: v for k, v in job.spec.items() if k not in SERVICE_KEYS}
            history = HistoryWriter(
                sessions,
                job_id,
                attempt,
                epochs=int(spec["epochs"]),
                flush_seconds=settings.history_flush_seconds,
            )
            # The time limit covers loading too; the engine checks it before every mini-batch.
            remaining = settings.job_timeout_seconds - (time.monotonic() - started)
            if spec.get("search"):
                # A regularization path: its own body (app.paths.runner), then the same finish.
                from app.paths import runner

                with _memory_guard():
                    model, final = runner.run_search(
                        sessions=sessions,
                        job_id=job_id,
                        attempt=attempt,
                        spec=spec,
                        X=X,
                        y=y,
                        database_url=database_url,
                        max_seconds=remaining,
                    )
                store = None if model is None else _store(model, final)
                status = state.finish(
                    sessions,
                    job_id,
                    attempt,
                    cancelled=model is None or model.stopped == "cancelled",
                    store_model=store,
                )
                log.info("job %s: %s after %.1f s", job_id, status, time.monotonic() - started)
                return status
            try:
                with _memory_guard():
                    model = engine.fit(spec, X, y, callbacks=[history], max_seconds=remaining)
            finally:
                history.flush()
            status = state.finish(
                sessions,
                job_id,
                attempt,
                cancelled=model.stopped == "cancelled",
                store_model=_store(model),
            )
    except state.LostClaim:
        log.warning("job %s: attempt %d lost its claim; leaving the row alone", job_id, attempt)
        return "lost"
    except JobFailed as exc:
        return fail(exc.msg, exc.code)
    except engine.TrainingTimeout as exc:
        return fail(
            f"The job exceeded this service's time limit of {settings.job_timeout_seconds:g} "
            f"seconds (stopped during epoch {exc.epoch}).",
            "timeout",
        )
    except engine.SpecError as exc:
        if exc.code == "diverged":
            return fail(_divergence_reason(job.spec, dataset) or exc.msg, exc.code)
        return fail(exc.msg, exc.code)
    except engine.InputError as exc:
        return fail(exc.msg, exc.code)
    except MemoryError:
        return fail(
            f"The job needed more memory than this service allows per job "
            f"({settings.max_job_memory_mb:,} MB, REGULA_MAX_JOB_MEMORY_MB); use a smaller "
            "network, batch_size or dataset.",
            "out_of_memory",
        )
    except Exception:
        # Internals (SQL, paths, library messages) go to the server log only, never to the user.
        log.exception("job %s: unexpected error", job_id)
        return fail(
            "Training failed with an unexpected error; the service's log has the details.",
            "internal_error",
        )
    log.info("job %s: %s after %.1f s", job_id, status, time.monotonic() - started)
    return status
