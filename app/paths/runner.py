"""The search job body: a regularization path with K-fold cross-validation, then the final fit.

``run_search`` runs inside a job body (a Dask task, or the inline executor's thread):

1. ``engine.path_grid`` once: the grid every split shares;
2. ``engine.path_gram_block`` of each fold ``0..K-1``: the Gram statistics of its rows, which
   every split of an exact path sums (the split's own fold left out) instead of computing a Gram
   over its own rows; None for the other searches, whose splits then read only the data;
3. the path of every split - folds ``0..K-1`` and the full training rows (``fold_index`` None,
   stored as fold -1) - with ``engine.path_fold``;
4. ``engine.final_model`` at the chosen value on all training rows (the job's model): the choice
   reads only the K folds' held-out scores; after an exact path the fit starts from the all-rows
   path's solution there, any other starts as soon as the folds are done;
5. ``engine.combine`` of every split, stored as the job's path result while the final fit trains.

On Dask each block, each split and the final fit are their own tasks, submitted from the body
through ``distributed.worker_client()`` (which secedes the body's thread, so the tasks get the
worker slots): the blocks, the folds, then the all-rows path, which on two or more workers runs
beside the final fit unless that fit starts from it (an exact path). Inline they run one after
the other in the body's thread.

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
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

import engine
from app.core.config import settings
from app.core.db import get_sessionmaker
from app.jobs import state
from app.paths import service
from app.paths.orm import FULL_PATH
from engine.cv import FoldPath
from engine.gram import GramBlock
from engine.path_setup import base_spec, is_exact
from engine.spec_search import DEFAULT_MIN_RATIO, DEFAULT_NUM
from engine.table import read_table

log = logging.getLogger("regula.training")

# Split tasks outrank waiting job bodies: a started search should not wait behind new jobs.
SPLIT_PRIORITY = 1_000_000


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


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


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
        self._pending.append(
            {
                "fold": self._fold,
                "index": int(record["index"]),
                "value": float(record["value"]),
                "loss": _finite(record.get("loss")),
                "metric": _finite(record.get("metric")),
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


def _one_matrix(X: Any) -> tuple[Any, list[str] | None]:
    """``(matrix (N, D), names)`` of an all-numeric table, else ``(X, None)``.

    Read by the engine's one table adapter, once: the grid, every split task and the final fit
    then take the matrix as it is, instead of each stacking the D columns again (and a split task
    on another worker receives one array, not D).
    """
    table = read_table(X)
    if table.matrix is None:
        return X, None
    return table.matrix, table.names


def gram_block(plan: dict[str, Any], fold: int, X: Any, y: Any) -> GramBlock | None:
    """Fold ``fold``'s share of the Gram statistics the splits sum (None: they share none)."""
    return engine.path_gram_block(
        plan["spec"],
        X,
        y,
        fold,
        folds=plan["folds"],
        param=plan["param"],
        feature_names=plan["feature_names"],
    )


def gram_task(plan: dict[str, Any], fold: int, X: Any, y: Any) -> GramBlock | None:
    """One fold's Gram block as a Dask task (on any worker)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return gram_block(plan, fold, X, y)


def _shared(blocks: list[GramBlock | None]) -> list[GramBlock] | None:
    """The blocks when every fold gave one, else None (each split computes its own Gram)."""
    if not blocks or any(b is None for b in blocks):
        return None
    return [b for b in blocks if b is not None]


def run_split(
    plan: dict[str, Any],
    fold: int | None,
    X: Any,
    y: Any,
    blocks: list[GramBlock | None] | None = None,
) -> FoldPath:
    """The path of one split (``fold`` None = all training rows), its points stored as it goes."""
    sessions = get_sessionmaker(plan["database_url"])
    worker = _worker_name()
    writer = PointWriter(sessions, plan, fold, worker)
    started = time.monotonic()
    cpu = time.thread_time()
    try:
        fold_path = engine.path_fold(
            plan["spec"],
            X,
            y,
            fold,
            grid=plan["grid"],
            param=plan["param"],
            folds=plan["folds"],
            feature_names=plan["feature_names"],
            callbacks=[writer],
            max_seconds=plan["deadline"] - time.time(),
            gram_blocks=None if blocks is None else _shared(blocks),
        )
    except engine.PathCancelled:
        writer.flush()  # the points finished before the cancel stay
        raise
    writer.discard()
    writer.flush(service.split_rows(fold_path, worker))
    log.info(
        "job %s: split %s of the path done on %s in %.2f s (%.2f s in the engine, %.2f s CPU)",
        plan["job_id"],
        "full" if fold is None else fold,
        worker,
        time.monotonic() - started,
        fold_path.seconds,
        time.thread_time() - cpu,
    )
    return fold_path


def split_task(
    plan: dict[str, Any],
    fold: int | None,
    X: Any,
    y: Any,
    blocks: list[GramBlock | None],
) -> dict[str, Any]:
    """One split as a Dask task (on any worker): returns the FoldPath as plain data."""
    from threadpoolctl import threadpool_limits

    from app.core import logs

    logs.configure()
    with threadpool_limits(limits=1):
        fold_path = run_split(plan, fold, X, y, blocks)
    return fold_path.to_dict()


def final_fit(
    plan: dict[str, Any], value: float, X: Any, y: Any, full: FoldPath | None
) -> engine.Model:
    """``engine.final_model`` at ``value`` on every row (started from the all-rows path ``full``
    when it is exact); heartbeat and "cancel?" as it trains."""
    sessions = get_sessionmaker(plan["database_url"])
    job_id, attempt = plan["job_id"], plan["attempt"]
    progress = {"last": time.monotonic()}

    def cancel_check(_record: dict[str, Any]) -> bool:
        # The final fit's epochs are not a path's points: only heartbeat and the cancel flag.
        if time.monotonic() - progress["last"] < settings.history_flush_seconds:
            return False
        progress["last"] = time.monotonic()
        return state.record_epochs(sessions, job_id, attempt, [], epochs=1, progress=1.0)

    started = time.monotonic()
    model = engine.final_model(
        plan["spec"],
        X,
        y,
        param=plan["param"],
        value=value,
        full=full,
        feature_names=plan["feature_names"],
        callbacks=[cancel_check],
        max_seconds=plan["deadline"] - time.time(),
    )
    log.info(
        "job %s: final fit on %s in %.2f s", job_id, _worker_name(), time.monotonic() - started
    )
    return model


def final_task(
    plan: dict[str, Any], value: float, X: Any, y: Any, full: dict[str, Any] | None
) -> engine.Model:
    """The final fit as a Dask task (on any worker); ``full``: the all-rows split's task result."""
    from threadpoolctl import threadpool_limits

    from app.core import logs

    logs.configure()
    with threadpool_limits(limits=1):
        return final_fit(plan, value, X, y, None if full is None else FoldPath(**full))


def _chosen_value(plan: dict[str, Any], splits: list[FoldPath]) -> float:
    """The value the held-out scores choose: the K folds' (the all-rows path adds statistics, not
    scores, so it need not be among ``splits``), or without folds the all-rows path's own, on the
    validation rows."""
    if plan["folds"]:
        scores_only = FoldPath(fold=None, grid=list(plan["grid"]), n_train=0, n_val=0)
        splits = [scores_only, *(fp for fp in splits if fp.fold is not None)]
    chosen = engine.combine(splits, param=plan["param"], select=plan["spec"]["search"]["select"])
    return chosen.chosen_value


def _run_path(
    plan: dict[str, Any], X: Any, y: Any, store: Callable[[list[FoldPath]], None]
) -> tuple[list[FoldPath], dict[str, Any], engine.Model]:
    """Every split, then the final fit at the folds' choice: ``(fold paths, final spec, model)``.

    ``store(fold_paths)`` (combine and store the path) runs once every split is done, while the
    final fit trains. On Dask each split and the final fit are tasks: the K folds first, then the
    all-rows path. After an exact path the final fit starts from the all-rows path's solution, so
    it waits for that path and then only confirms the optimum; any other final fit trains from
    scratch as soon as the folds are done, so that on two or more workers it trains beside the
    all-rows path instead of after it.
    """
    folds = range(plan["folds"] or 0)
    spec, param = plan["spec"], plan["param"]
    if not _on_dask():
        blocks = [gram_block(plan, fold, X, y) for fold in folds]
        fold_paths = [run_split(plan, fold, X, y, blocks) for fold in folds]
        fold_paths.append(run_split(plan, None, X, y, blocks))
        store(fold_paths)
        value = _chosen_value(plan, fold_paths)
        model = final_fit(plan, value, X, y, fold_paths[-1])
        return fold_paths, engine.final_spec(spec, param, value), model
    from distributed import worker_client

    def key(name: str) -> str:
        return f"regula-path-{plan['job_id']}-{name}-{uuid.uuid4().hex[:8]}"

    # worker_client secedes this thread from the worker's pool: its slot runs a task meanwhile.
    with worker_client() as client:
        # One copy of the data, on this worker; a task elsewhere fetches it once per worker.
        data = client.scatter([X, y], workers=[_worker_address()], hash=False)
        # The folds' Gram blocks first (each split sums them), then the splits.
        blocks = [
            client.submit(
                gram_task,
                plan,
                fold,
                *data,
                key=key(f"gram-{fold}"),
                pure=False,
                priority=SPLIT_PRIORITY + 2,
            )
            for fold in folds
        ]
        futures = [
            client.submit(
                split_task,
                plan,
                fold,
                *data,
                blocks,
                key=key(str(fold)),
                pure=False,
                priority=SPLIT_PRIORITY + 1,  # the folds before the all-rows path
            )
            for fold in folds
        ]
        futures.append(
            client.submit(
                split_task,
                plan,
                None,
                *data,
                blocks,
                key=key("full"),
                pure=False,
                priority=SPLIT_PRIORITY,
            )
        )
        full = futures[-1]
        try:
            fold_paths = [FoldPath(**result) for result in client.gather(futures[:-1])]
            # Without folds the validation rows score the all-rows path itself: the choice waits.
            full_path = None if plan["folds"] else FoldPath(**full.result())
            value = _chosen_value(plan, fold_paths if full_path is None else [full_path])
            futures.append(
                client.submit(
                    final_task,
                    plan,
                    value,
                    *data,
                    full if is_exact(base_spec(spec), param) else None,
                    key=key("final"),
                    pure=False,
                    priority=SPLIT_PRIORITY,
                )
            )
            fold_paths.append(full_path or FoldPath(**full.result()))
            store(fold_paths)
            model = futures[-1].result()
        finally:
            for future in [*futures, *blocks, *data]:
                future.cancel()
    return fold_paths, engine.final_spec(spec, param, value), model


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
    X, names = _one_matrix(X)
    grid = engine.path_grid(
        spec,
        X,
        y,
        feature_names=names,
        param=param,
        values=search.get("values"),
        # null when the spec gives the values (and then not read)
        num=search["num"] or DEFAULT_NUM,
        min_ratio=search["min_ratio"] or DEFAULT_MIN_RATIO,
    )
    folds = search["folds"]  # None: the validation split scores each point
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
        "feature_names": names,
        "total": len(grid) * ((folds or 0) + 1),
        "deadline": deadline,
    }

    def store(fold_paths: list[FoldPath]) -> None:
        started = time.monotonic()
        full = next(fp for fp in fold_paths if fp.fold is None)
        result = engine.combine(
            fold_paths,
            param=param,
            select=search["select"],
            metric_name="r2" if spec["task"] == "regression" else "accuracy",
            solver="gram" if full.intercept else "fit",
        )
        service.store_result(sessions, job_id, attempt, result.to_dict())
        log.info(
            "job %s: %d splits in %.2f s; path combined and stored in %.2f s",
            job_id,
            len(fold_paths),
            started - clock,
            time.monotonic() - started,
        )

    clock = time.monotonic()
    try:
        _, final, model = _run_path(plan, X, y, store)
    except engine.PathCancelled:
        return None, spec
    log.info("job %s: path and final fit in %.2f s", job_id, time.monotonic() - clock)
    return model, final
