"""The job body: claim a queued job, train it with the engine, store history and model.

Runs on a Dask worker (or the inline executor's thread), never in a request. Every write after the
claim is guarded by ``status = 'running' AND attempts = <this attempt>``: if the reaper took the job
back (the worker was presumed lost) a late writer changes nothing.
"""

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

import engine
from app.core.config import settings
from app.core.db import get_sessionmaker, utcnow
from app.datasets.orm import Dataset
from app.jobs.orm import EpochRecord, Job
from app.models.orm import Model

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


class LostClaim(Exception):
    """The row is no longer this attempt's (re-queued by the reaper or already finished)."""


def worker_name() -> str:
    """The Dask worker address running this body, else ``hostname:pid``."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def claim(sessions: sessionmaker[Session], job_id: str) -> int | None:
    """Atomically move ``job_id`` from queued to running; return this attempt's number or None.

    A single conditional UPDATE is race-free on SQLite and PostgreSQL alike: of two bodies for the
    same job only one sees rowcount 1, so a double submission runs once.
    """
    now = utcnow()
    with sessions() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(
                status="running",
                started_at=now,
                heartbeat_at=now,
                attempts=Job.attempts + 1,
                worker=worker_name()[:255],
                error=None,
                error_code=None,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            session.rollback()
            return None
        attempts = session.scalar(select(Job.attempts).where(Job.id == job_id))
        session.commit()
    return int(attempts)


class Heartbeat:
    """A daemon thread refreshing ``heartbeat_at``: a long epoch is not a lost worker."""

    def __init__(self, sessions: sessionmaker[Session], guard: list[Any], interval: float) -> None:
        self._sessions = sessions
        self._guard = guard
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
                with self._sessions() as session:
                    session.execute(
                        update(Job)
                        .where(*self._guard)
                        .values(heartbeat_at=utcnow())
                        .execution_options(synchronize_session=False)
                    )
                    session.commit()
            except Exception:  # a missed beat is harmless; the next one retries
                log.warning("heartbeat failed", exc_info=True)


def _finite(value: Any) -> float | None:
    # Diverged training can report NaN/inf; the history stores those as null (JSON has no NaN).
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _labels(y: np.ndarray) -> np.ndarray:
    """Classification labels as the dataset wrote them: integral floats (a 0/1 CSV) become ints."""
    if y.dtype.kind == "f" and np.isfinite(y).all() and np.array_equal(y, np.round(y)):
        return y.astype(np.int64)
    return y


def _load(sessions: sessionmaker[Session], job_id: str) -> tuple[Job, Dataset]:
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LostClaim(job_id)
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        session.expunge_all()
    if dataset is None:
        raise JobFailed(
            "The dataset was deleted before the job could train on it.", "dataset_deleted"
        )
    return job, dataset


def _read_table(
    job: Job, dataset: Dataset, data_dir: Path
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from app.datasets import service as datasets

    spec = job.spec
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


def _epoch_callback(
    sessions: sessionmaker[Session], job_id: str, guard: list[Any], epochs: int
) -> Callable[[dict[str, Any]], bool]:
    def on_epoch(record: dict[str, Any]) -> bool:
        epoch = int(record["epoch"])
        with sessions() as session:
            result = session.execute(
                update(Job)
                .where(*guard)
                .values(progress=min(epoch / epochs, 1.0), epochs_done=epoch, heartbeat_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                session.rollback()
                raise LostClaim(job_id)
            fields = {key: _finite(record.get(key)) for key in HISTORY_FIELDS}
            session.add(EpochRecord(job_id=job_id, epoch=epoch, **fields))
            cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
            session.commit()
        return bool(cancel)

    return on_epoch


def _store_model(sessions: sessionmaker[Session], job_id: str, guard: list[Any], model: Any) -> str:
    weights = model.to_bytes()
    status = "cancelled" if model.stopped == "cancelled" else "succeeded"
    now = utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now, "heartbeat_at": now}
    if status == "succeeded":
        values["progress"] = 1.0
    with sessions() as session:
        # Model row and final status in ONE transaction: a finished job always has its model.
        result = session.execute(
            update(Job).where(*guard).values(**values).execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            session.rollback()
            raise LostClaim(job_id)
        job = session.get(Job, job_id)
        assert job is not None
        session.add(
            Model(
                owner_id=job.owner_id,
                job_id=job.id,
                dataset_id=job.dataset_id,
                task=model.task,
                target=job.spec["target"],
                feature_names=list(model.feature_names),
                classes=model.classes,
                spec=job.spec,
                metrics=model.metrics,
                weights=weights,
            )
        )
        session.commit()
    return status


def _fail(sessions: sessionmaker[Session], guard: list[Any], msg: str, code: str) -> None:
    with sessions() as session:
        session.execute(
            update(Job)
            .where(*guard)
            .values(status="failed", error=msg, error_code=code, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.commit()


def run(job_id: str, database_url: str, data_dir: Path) -> str:
    """Claim and train ``job_id``; return the final status ("skipped" if the claim was refused)."""
    sessions = get_sessionmaker(database_url)
    attempt = claim(sessions, job_id)
    if attempt is None:
        log.info("job %s: not queued any more, skipping", job_id)
        return "skipped"
    guard = [Job.id == job_id, Job.status == "running", Job.attempts == attempt]
    log.info("job %s: attempt %d started on %s", job_id, attempt, worker_name())
    started = time.monotonic()
    try:
        with Heartbeat(sessions, guard, settings.heartbeat_seconds):
            job, dataset = _load(sessions, job_id)
            X, y = _read_table(job, dataset, data_dir)
            spec = {k: v for k, v in job.spec.items() if k not in SERVICE_KEYS}
            callback = _epoch_callback(sessions, job_id, guard, int(spec["epochs"]))
            # The time limit covers loading too; the engine checks it before every mini-batch.
            remaining = settings.job_timeout_seconds - (time.monotonic() - started)
            model = engine.fit(spec, X, y, callbacks=[callback], max_seconds=remaining)
            status = _store_model(sessions, job_id, guard, model)
    except LostClaim:
        log.warning("job %s: attempt %d lost its claim; leaving the row alone", job_id, attempt)
        return "lost"
    except JobFailed as exc:
        _fail(sessions, guard, exc.msg, exc.code)
        return "failed"
    except engine.TrainingTimeout as exc:
        msg = (
            f"The job exceeded this service's time limit of {settings.job_timeout_seconds:g} "
            f"seconds (stopped during epoch {exc.epoch})."
        )
        _fail(sessions, guard, msg, "timeout")
        return "failed"
    except (engine.InputError, engine.SpecError) as exc:
        _fail(sessions, guard, exc.msg, exc.code)
        return "failed"
    except MemoryError:
        _fail(sessions, guard, "The job ran out of memory on its worker.", "out_of_memory")
        return "failed"
    except Exception as exc:
        log.exception("job %s: unexpected error", job_id)
        _fail(
            sessions,
            guard,
            f"Training failed with an unexpected error: {type(exc).__name__}: {exc}",
            "internal_error",
        )
        return "failed"
    log.info("job %s: %s", job_id, status)
    return status
