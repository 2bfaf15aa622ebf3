"""The job state machine: every change of a job row's status is a function of this module.

::

    queued --claim--> running --finish--> succeeded | cancelled
      |                  |  \\--fail----> failed
      |                  \\--requeue----> queued        (worker lost, attempts left)
      \\--cancel--> cancelled             failed        (worker lost, no attempts left)

The database row is the single source of truth. Every transition is one conditional
``UPDATE ... WHERE status = ...`` (plus ``attempts = <this attempt>`` for a worker's writes), so the
API, the reaper and the workers can race without ever moving a job backwards: whoever loses the
race changes nothing. Nothing outside this module updates a job's status, progress or heartbeat.

The executor (inline thread or Dask, ``app.jobs.executor``) only runs job bodies; it is passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import settings
from app.core.db import utcnow
from app.jobs.orm import FINISHED_STATUSES, EpochRecord, Job

if TYPE_CHECKING:
    from app.jobs.executor import Executor

log = logging.getLogger("regula.jobs")

WORKER_LOST = "the worker running this job was lost"


class LostClaim(Exception):
    """The row is no longer this attempt's (re-queued by the reaper, or already finished)."""


def _update(session: Session, guard: Sequence[ColumnElement[bool]], **values: Any) -> bool:
    """One guarded UPDATE of a job row; True if it matched (the transition happened)."""
    result = session.execute(
        update(Job).where(*guard).values(**values).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def attempt_guard(job_id: str, attempt: int) -> list[ColumnElement[bool]]:
    """The condition of every write by the body of attempt ``attempt`` of ``job_id``."""
    return [Job.id == job_id, Job.status == "running", Job.attempts == attempt]


# --- queue ----------------------------------------------------------------------------------------


def queue(*, session: Session, job: Job, executor: Executor | None) -> Job:
    """Insert ``job`` as queued, commit, then hand it to the executor."""
    job.status = "queued"
    session.add(job)
    session.commit()
    # Submitted only after the commit, so a worker never looks for a row that is not there yet.
    submit(session=session, job_id=job.id, executor=executor)
    return job


def priority(*, session: Session, job_id: str) -> int:
    """Fair-share priority: minus the number of the owner's unfinished jobs created before it.

    Each key's first waiting job outranks every key's second, so one key that queues hundreds of
    jobs does not starve the others (executors run higher priorities first).
    """
    job = session.get(Job, job_id)
    if job is None:
        return 0
    owner = Job.owner_id.is_(None) if job.owner_id is None else Job.owner_id == job.owner_id
    ahead = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(owner, Job.status.in_(("queued", "running")), Job.created_at < job.created_at)
    )
    return -int(ahead or 0)


def submit(*, session: Session, job_id: str, executor: Executor | None) -> None:
    """Hand a committed, queued job to ``executor`` (it stays queued when there is none)."""
    if executor is None:
        # The row stays queued; start-up recovery or the reaper of a running service submits it.
        log.warning("job %s: no executor running; it stays queued", job_id)
        return
    executor.submit(job_id, priority=priority(session=session, job_id=job_id))


def unfinished_count(*, session: Session, owner_id: str | None) -> int:
    """How many of ``owner_id``'s jobs are queued or running (the per-key quota counts these)."""
    owner = Job.owner_id.is_(None) if owner_id is None else Job.owner_id == owner_id
    stmt = select(func.count()).select_from(Job).where(owner, Job.status.in_(("queued", "running")))
    return int(session.scalar(stmt) or 0)


# --- the worker's transitions ---------------------------------------------------------------------


def claim(sessions: sessionmaker[Session], job_id: str, worker: str) -> int | None:
    """Atomically move ``job_id`` from queued to running; return this attempt's number or None.

    A single conditional UPDATE is race-free on SQLite and PostgreSQL alike: of two bodies for the
    same job only one matches, so a double submission runs once.
    """
    now = utcnow()
    with sessions() as session:
        claimed = _update(
            session,
            [Job.id == job_id, Job.status == "queued"],
            status="running",
            started_at=now,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            worker=worker[:255],
            error=None,
            error_code=None,
        )
        if not claimed:
            session.rollback()
            return None
        attempts = session.scalar(select(Job.attempts).where(Job.id == job_id))
        session.commit()
    return int(attempts or 0)


def heartbeat(sessions: sessionmaker[Session], job_id: str, attempt: int) -> None:
    """Refresh the heartbeat of a running attempt (a long epoch is not a lost worker)."""
    with sessions() as session:
        _update(session, attempt_guard(job_id, attempt), heartbeat_at=utcnow())
        session.commit()


def record_epochs(
    sessions: sessionmaker[Session],
    job_id: str,
    attempt: int,
    rows: Sequence[dict[str, Any]],
    *,
    epochs: int,
    progress: float | None = None,
) -> bool:
    """Store epoch rows and the progress they make, in one transaction; True if cancel was asked.

    ``progress`` defaults to last epoch / ``epochs``. Raises :class:`LostClaim` when the attempt
    no longer owns the row, so a late writer adds nothing.
    """
    last = int(rows[-1]["epoch"]) if rows else 0
    if progress is None:
        progress = min(last / epochs, 1.0) if epochs else 0.0
    values: dict[str, Any] = {"progress": progress, "heartbeat_at": utcnow()}
    if rows:
        values["epochs_done"] = last
    with sessions() as session:
        if not _update(session, attempt_guard(job_id, attempt), **values):
            session.rollback()
            raise LostClaim(job_id)
        session.add_all(EpochRecord(job_id=job_id, **row) for row in rows)
        cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
        session.commit()
    return bool(cancel)


def finish(
    sessions: sessionmaker[Session],
    job_id: str,
    attempt: int,
    *,
    cancelled: bool,
    store_model: Callable[[Session, Job], Any],
) -> str:
    """running -> succeeded (or cancelled, keeping its model), with the model row, in ONE commit.

    ``store_model(session, job)`` adds the Model row: a finished job always has its model.
    """
    status = "cancelled" if cancelled else "succeeded"
    now = utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now, "heartbeat_at": now}
    if status == "succeeded":
        values["progress"] = 1.0
    with sessions() as session:
        if not _update(session, attempt_guard(job_id, attempt), **values):
            session.rollback()
            raise LostClaim(job_id)
        job = session.get(Job, job_id)
        assert job is not None
        store_model(session, job)
        session.commit()
    return status


def fail(sessions: sessionmaker[Session], job_id: str, attempt: int, msg: str, code: str) -> None:
    """running -> failed, with a sentence for the user and a stable code."""
    with sessions() as session:
        _update(
            session,
            attempt_guard(job_id, attempt),
            status="failed",
            error=msg,
            error_code=code,
            finished_at=utcnow(),
        )
        session.commit()


def fail_unstarted(*, session: Session, job_id: str, msg: str, code: str) -> bool:
    """queued -> failed: the job could not even be started on a worker."""
    failed = _update(
        session,
        [Job.id == job_id, Job.status == "queued"],
        status="failed",
        error=msg,
        error_code=code,
        finished_at=utcnow(),
    )
    session.commit()
    return failed


# --- the user's transition ------------------------------------------------------------------------


def cancel(*, session: Session, job: Job, executor: Executor | None) -> str:
    """Cancel ``job``: queued -> cancelled at once; running -> asked to stop after its epoch.

    Returns "cancelled" (it was queued), "requested" (it was running; the body stops it) or
    "finished" (it had already finished: nothing to cancel).
    """
    now = utcnow()
    if _update(
        session,
        [Job.id == job.id, Job.status == "queued"],
        status="cancelled",
        cancel_requested=True,
        finished_at=now,
    ):
        session.commit()
        if executor is not None:
            executor.discard(job.id)
        outcome = "cancelled"
    elif _update(session, [Job.id == job.id, Job.status == "running"], cancel_requested=True):
        # The body may finish (as cancelled) right after this commit: the request still worked.
        session.commit()
        outcome = "requested"
    else:
        session.rollback()
        outcome = "finished"
    session.refresh(job)
    return outcome


# --- recovery and reaping -------------------------------------------------------------------------


def _stale_cutoff() -> datetime:
    return utcnow() - timedelta(seconds=settings.stale_after_seconds)


def requeue_or_fail(
    *, session: Session, job_id: str, attempts: int, only_if_stale: bool = False
) -> bool:
    """Take back a running job whose worker is gone: re-queue it (True) or fail it for good (False).

    ``attempts`` is the value seen when the job was judged lost; if the row changed since (a worker
    claimed it again, finished it, or - with ``only_if_stale`` - sent a heartbeat) nothing happens
    and False is returned.
    """
    requeue = attempts < settings.max_attempts
    guard = [Job.id == job_id, Job.status == "running", Job.attempts == attempts]
    if only_if_stale:
        guard.append(Job.heartbeat_at.is_(None) | (Job.heartbeat_at < _stale_cutoff()))
    if requeue:
        values: dict[str, Any] = {
            "status": "queued",
            "progress": 0.0,
            "epochs_done": 0,
            "started_at": None,
            "heartbeat_at": None,
            "worker": None,
        }
    else:
        values = {
            "status": "failed",
            "error": f"The job could not finish: {WORKER_LOST} (after {attempts} attempts).",
            "error_code": "worker_lost",
            "finished_at": utcnow(),
        }
    if not _update(session, guard, **values):
        session.rollback()
        return False
    if requeue:
        # The next attempt starts from epoch 1; its history must not interleave with this one's.
        session.execute(delete(EpochRecord).where(EpochRecord.job_id == job_id))
    session.commit()
    log.warning(
        "job %s: worker lost (attempt %d); %s",
        job_id,
        attempts,
        "re-queued" if requeue else "failed",
    )
    return requeue


def orphaned(*, session: Session, all_running: bool) -> list[tuple[str, int]]:
    """Running jobs whose worker is presumed gone: all of them, or those with a stale heartbeat."""
    stmt = select(Job.id, Job.attempts).where(Job.status == "running")
    if not all_running:
        stmt = stmt.where(Job.heartbeat_at.is_(None) | (Job.heartbeat_at < _stale_cutoff()))
    return [(row.id, row.attempts) for row in session.execute(stmt)]


def queued_ids(*, session: Session, older_than: datetime | None = None) -> list[str]:
    """Ids of queued jobs, oldest first (optionally only those created before ``older_than``)."""
    stmt = select(Job.id).where(Job.status == "queued")
    if older_than is not None:
        stmt = stmt.where(Job.created_at < older_than)
    return list(session.scalars(stmt.order_by(Job.created_at, Job.id)))


def recover(*, sessions: sessionmaker[Session], executor: Executor) -> dict[str, int]:
    """Start-up: take back orphaned running jobs, then (re)submit every queued job."""
    requeued = failed = 0
    with sessions() as session:
        stale_only = not executor.owns_workers
        for job_id, attempts in orphaned(session=session, all_running=not stale_only):
            if requeue_or_fail(
                session=session, job_id=job_id, attempts=attempts, only_if_stale=stale_only
            ):
                requeued += 1
            else:
                failed += 1
        queued = queued_ids(session=session)
        for job_id in queued:
            submit(session=session, job_id=job_id, executor=executor)
    if queued or failed:
        log.info(
            "recovery: %d running job(s) re-queued, %d failed, %d queued job(s) submitted",
            requeued,
            failed,
            len(queued),
        )
    return {"requeued": requeued, "failed": failed, "submitted": len(queued)}


# A queued job whose body errors this many times before it could even claim the row is failed.
MAX_SUBMIT_ERRORS = 3


def _handle_failure(session: Session, executor: Executor, job_id: str, reason: str) -> None:
    """A body ended abnormally: take back its job if the row says it is still in progress."""
    row = session.execute(select(Job.status, Job.attempts).where(Job.id == job_id)).first()
    if row is None:
        return
    if row.status == "running":
        if requeue_or_fail(session=session, job_id=job_id, attempts=row.attempts):
            submit(session=session, job_id=job_id, executor=executor)
    elif row.status == "queued":
        # The body died before it could claim the row (e.g. the task was cancelled).
        if executor.note_submit_error(job_id) >= MAX_SUBMIT_ERRORS:
            log.warning("job %s: could not be started: %s", job_id, reason)
            fail_unstarted(
                session=session,
                job_id=job_id,
                msg="The job could not be started on a worker.",
                code="worker_error",
            )
        else:
            submit(session=session, job_id=job_id, executor=executor)


def reap_once(*, sessions: sessionmaker[Session], executor: Executor) -> dict[str, int]:
    """One reaper pass: failed bodies, stale heartbeats, queued jobs nobody is running."""
    counts = {"stale": 0, "failed_futures": 0, "resubmitted": 0}
    with sessions() as session:
        for job_id, reason in executor.failures():
            counts["failed_futures"] += 1
            log.warning("job %s: its task ended abnormally: %s", job_id, reason)
            _handle_failure(session, executor, job_id, reason)
        for job_id, attempts in orphaned(session=session, all_running=False):
            counts["stale"] += 1
            if requeue_or_fail(
                session=session, job_id=job_id, attempts=attempts, only_if_stale=True
            ):
                submit(session=session, job_id=job_id, executor=executor)
        # A queued job that no executor task will pick up (its submission was lost) gets one.
        for job_id in queued_ids(session=session, older_than=_stale_cutoff()):
            if not executor.in_flight(job_id):
                counts["resubmitted"] += 1
                submit(session=session, job_id=job_id, executor=executor)
    return counts


def is_finished(status: str) -> bool:
    """Whether ``status`` is final."""
    return status in FINISHED_STATUSES
