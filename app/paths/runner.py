"""The search job body: a regularization path with K-fold cross-validation, then the final fit.

``run_search`` runs inside a job body (a Dask task, or the inline executor's thread):

1. ``engine.path_grid`` once: the grid every split shares;
2. the path of every split - the full training rows (``fold_index`` None, stored as fold -1) and
   folds ``0..K-1`` - with ``engine.path_fold``. On Dask each split is its own task, submitted
   from the body through ``distributed.worker_client()`` (which secedes the body's thread, so the
   K + 1 tasks get the worker slots and K folds on K workers take about the time of one); inline
   they run one after the other in the body's thread;
3. ``engine.combine``, stored as the job's path result;
4. ``engine.fit`` at the chosen value on all training rows: the job's model.

Each split stores its points as they finish (``PointWriter``: batched like the loss history, at
most one commit every ``history_flush_seconds``) and reports progress = points done /
(points x (folds + 1)); the progress write answers "cancel?", checked between points. The body
has read the dataset already: on Dask it scatters ``X`` and ``y`` once (they stay on the body's
worker, and each other worker fetches them once), so a split task neither re-reads the file nor
re-parses it.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

import engine
from app.core.config import settings
from app.core.db import get_sessionmaker
from app.jobs import state
from app.paths import service
from app.paths.orm import FULL_PATH
from engine.path import FoldPath

log = logging.getLogger("regula.training")

# Split tasks outrank waiting job bodies: a started search should not wait behind new jobs.
SPLIT_PRIORITY = 1_000_000
DEFAULT_NUM = 20
DEFAULT_MIN_RATIO = 1e-3


def _worker_name() -> str:
    from app.jobs.body import worker_name

    return worker_name()


def _worker_address() -> str:
    from distributed import get_worker

    return str(get_worker().address)


def _on_dask() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


class PointWriter:
    """A split's ``path_fold`` callback: stores its points in batches and answers "cancel?"."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        plan: dict[str, Any],
        fold: int | None,
        worker: str,
    ) -> None:
        self._sessions = sessions
        self._job_id = plan["job_id"]
        self._attempt = plan["attempt"]
        self._total = plan["total"]
        self._fold = FULL_PATH if fold is None else fold
        self._worker = worker[:255]
        self._pending: list[dict[str, Any]] = []
        self._last_flush = -math.inf
        self._cancel = False

    def __call__(self, record: dict[str, Any]) -> bool:
        loss = record.get("loss")
        self._pending.append(
            {
                "fold": self._fold,
                "index": int(record["index"]),
                "value": float(record["value"]),
                "loss": None if loss is None or not math.isfinite(loss) else float(loss),
                "nonzero": record.get("nonzero"),
                "worker": self._worker,
            }
        )
        if time.monotonic() - self._last_flush >= settings.history_flush_seconds:
            self.flush()
        return self._cancel

    def discard(self) -> None:
        """Forget the pending points (the finished split's rows replace them)."""
        self._pending = []

    def flush(self, rows: list[dict[str, Any]] | None = None) -> None:
        """Store the pending points (or ``rows``: the split's finished points) and the progress."""
        if rows is None:
            rows, self._pending = self._pending, []
        if not rows:
            return
        done = service.store_points(self._sessions, self._job_id, self._attempt, rows)
        self._cancel = state.record_epochs(
            self._sessions,
            self._job_id,
            self._attempt,
            [],
            epochs=1,
            progress=min(done / self._total, 1.0),
        )
        self._last_flush = time.monotonic()


def run_split(plan: dict[str, Any], fold: int | None, X: Any, y: Any) -> FoldPath:
    """The path of one split (``fold`` None = all training rows), its points stored as it goes."""
    sessions = get_sessionmaker(plan["database_url"])
    worker = _worker_name()
    writer = PointWriter(sessions, plan, fold, worker)
    started = time.monotonic()
    try:
        fold_path = engine.path_fold(
            plan["spec"],
            X,
            y,
            fold,
            grid=plan["grid"],
            param=plan["param"],
            folds=plan["folds"],
            callbacks=[writer],
            max_seconds=plan["deadline"] - time.time(),
        )
    except engine.PathCancelled:
        writer.flush()  # the points finished before the cancel stay
        raise
    writer.discard()
    writer.flush(service.split_rows(fold_path, worker))
    log.info(
        "job %s: split %s of the path done on %s in %.1f s",
        plan["job_id"],
        "full" if fold is None else fold,
        worker,
        time.monotonic() - started,
    )
    return fold_path


def split_task(plan: dict[str, Any], fold: int | None, X: Any, y: Any) -> dict[str, Any]:
    """One split as a Dask task (on any worker): returns the FoldPath as plain data."""
    from threadpoolctl import threadpool_limits

    from app.core import logs

    logs.configure()
    with threadpool_limits(limits=1):
        fold_path = run_split(plan, fold, X, y)
    return fold_path.to_dict()


def _run_splits(plan: dict[str, Any], X: Any, y: Any) -> list[FoldPath]:
    splits: list[int | None] = [None, *range(plan["folds"])]
    if not _on_dask():
        return [run_split(plan, fold, X, y) for fold in splits]
    from distributed import worker_client

    # worker_client secedes this thread from the worker's pool: its slot runs a split meanwhile.
    with worker_client() as client:
        # One copy of the data, on this worker; a task elsewhere fetches it once per worker.
        data = client.scatter([X, y], workers=[_worker_address()], hash=False)
        futures = [
            client.submit(
                split_task,
                plan,
                fold,
                *data,
                key=f"regula-path-{plan['job_id']}-{'full' if fold is None else fold}-"
                f"{uuid.uuid4().hex[:8]}",
                pure=False,
                priority=SPLIT_PRIORITY,
            )
            for fold in splits
        ]
        try:
            results = client.gather(futures)
        finally:
            for future in [*futures, *data]:
                future.cancel()
    return [FoldPath(**result) for result in results]


def run_search(
    *,
    sessions: sessionmaker[Session],
    job_id: str,
    attempt: int,
    spec: dict[str, Any],
    X: Any,
    y: Any,
    database_url: str,
    max_seconds: float,
) -> tuple[engine.Model | None, dict[str, Any]]:
    """The path, its result stored, and the final model; ``(None, final spec)`` if cancelled.

    Raises what ``engine.path_fold`` / ``engine.fit`` raise (SpecError, InputError,
    TrainingTimeout) and :class:`state.LostClaim`.
    """
    deadline = time.time() + max_seconds
    clock = time.monotonic()
    search = spec["search"]
    param = str(search["param"])
    grid = engine.path_grid(
        spec,
        X,
        y,
        param=param,
        values=search.get("values"),
        num=search.get("num") or DEFAULT_NUM,
        min_ratio=search.get("min_ratio") or DEFAULT_MIN_RATIO,
    )
    folds = int(search["folds"])
    log.info("job %s: grid of %d values in %.2f s", job_id, len(grid), time.monotonic() - clock)
    service.start(sessions, job_id, attempt, param=param, grid=grid)
    plan = {
        "job_id": job_id,
        "attempt": attempt,
        "database_url": database_url,
        "spec": spec,
        "param": param,
        "grid": grid,
        "folds": folds,
        "total": len(grid) * (folds + 1),
        "deadline": deadline,
    }
    clock = time.monotonic()
    try:
        fold_paths = _run_splits(plan, X, y)
    except engine.PathCancelled:
        return None, spec
    log.info("job %s: %d splits in %.2f s", job_id, folds + 1, time.monotonic() - clock)
    clock = time.monotonic()
    full = next(fp for fp in fold_paths if fp.fold is None)
    result = engine.combine(
        fold_paths,
        param=param,
        select=search["select"],
        metric_name="r2" if spec["task"] == "regression" else "accuracy",
        solver="gram" if full.intercept else "fit",
    )
    service.store_result(sessions, job_id, attempt, result.to_dict())
    final = engine.final_spec(spec, param, result.chosen_value)
    progress = {"last": time.monotonic()}

    def cancel_check(_record: dict[str, Any]) -> bool:
        # The final fit's epochs are not a path's points: only heartbeat and the cancel flag.
        if time.monotonic() - progress["last"] < settings.history_flush_seconds:
            return False
        progress["last"] = time.monotonic()
        return state.record_epochs(sessions, job_id, attempt, [], epochs=1, progress=1.0)

    log.info("job %s: path combined and stored in %.2f s", job_id, time.monotonic() - clock)
    clock = time.monotonic()
    model = engine.fit(final, X, y, callbacks=[cancel_check], max_seconds=deadline - time.time())
    log.info("job %s: final fit in %.2f s", job_id, time.monotonic() - clock)
    return model, final
