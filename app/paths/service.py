"""Regularization paths of search jobs: store the points as workers compute them, read the path.

Writes come from job bodies and fold tasks on workers and are guarded like every write of a job
body (``app.jobs.state.attempt_guard``): a cancelled, failed or re-queued attempt stores nothing.
Rows carry their attempt, so a reader sees only the job's current attempt.

The read (``get``) is the combined result once the search has finished; before that (running,
cancelled, failed) it is combined from the stored rows with ``engine.combine``: each point's
cross-validation scores over the folds that have reached it, and the choices over the points every
fold has reached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

import engine
from app.core.errors import Conflict
from app.jobs import service as jobs
from app.jobs import state
from app.jobs.orm import Job
from app.paths.orm import FULL_PATH, PathPoint, PathResult
from engine.cv import FoldPath


def _owned(session: Session, job_id: str, attempt: int) -> bool:
    # The row lock (PostgreSQL) keeps the reaper from re-queueing the job until this commit;
    # on SQLite a re-queue can still slip in, and the attempt column hides the late rows.
    stmt = select(Job.id).where(*state.attempt_guard(job_id, attempt)).with_for_update()
    return session.scalar(stmt) is not None


# --- writes (workers) -----------------------------------------------------------------------------


def start(
    sessions: sessionmaker[Session], job_id: str, attempt: int, *, param: str, grid: Sequence[float]
) -> None:
    """A search attempt begins: drop earlier attempts' rows, record the grid."""
    with sessions() as session:
        if not _owned(session, job_id, attempt):
            session.rollback()
            raise state.LostClaim(job_id)
        session.execute(delete(PathPoint).where(PathPoint.job_id == job_id))
        session.execute(delete(PathResult).where(PathResult.job_id == job_id))
        session.add(
            PathResult(job_id=job_id, attempt=attempt, result={"param": param, "grid": list(grid)})
        )
        session.commit()


def store_points(
    sessions: sessionmaker[Session], job_id: str, attempt: int, rows: Sequence[dict[str, Any]]
) -> int:
    """Store (or replace) points of one split if ``attempt`` still runs the job.

    ``rows``: PathPoint fields (``fold``, ``index``, ``value``, ...). Returns how many points of
    the attempt are stored now; raises :class:`state.LostClaim` when the attempt lost the job.
    """
    with sessions() as session:
        if not _owned(session, job_id, attempt):
            session.rollback()
            raise state.LostClaim(job_id)
        if rows:
            session.execute(
                delete(PathPoint).where(
                    PathPoint.job_id == job_id,
                    PathPoint.attempt == attempt,
                    PathPoint.fold == rows[0]["fold"],
                    PathPoint.index.in_([row["index"] for row in rows]),
                )
            )
            session.add_all(PathPoint(job_id=job_id, attempt=attempt, **row) for row in rows)
        count = session.scalar(
            select(func.count())
            .select_from(PathPoint)
            .where(PathPoint.job_id == job_id, PathPoint.attempt == attempt)
        )
        session.commit()
    return int(count or 0)


def store_result(
    sessions: sessionmaker[Session], job_id: str, attempt: int, result: dict[str, Any]
) -> None:
    """Store the combined path (``engine.PathResult.to_dict()``) of a finished search."""
    with sessions() as session:
        if not _owned(session, job_id, attempt):
            session.rollback()
            raise state.LostClaim(job_id)
        session.merge(PathResult(job_id=job_id, attempt=attempt, result=result))
        session.commit()


def split_rows(fold_path: FoldPath, worker: str) -> list[dict[str, Any]]:
    """PathPoint fields of every point of a finished split's path."""
    fold = FULL_PATH if fold_path.fold is None else fold_path.fold
    rows = []
    for k, value in enumerate(fold_path.grid):
        row: dict[str, Any] = {
            "fold": fold,
            "index": k,
            "value": value,
            "loss": None if fold_path.loss is None else fold_path.loss[k],
            "metric": None if fold_path.metric is None else fold_path.metric[k],
            "nonzero": None if fold_path.nonzero is None else fold_path.nonzero[k],
            "worker": worker[:255],
            "stats": None,
        }
        if fold_path.fold is None:
            stats: dict[str, Any] = {
                "selected": fold_path.selected[k] if fold_path.selected else None,
                "norms": fold_path.norms[k] if fold_path.norms else None,
            }
            if fold_path.coef:
                stats["coef"] = fold_path.coef[k]
            if fold_path.intercept:
                stats["intercept"] = fold_path.intercept[k]
            if k == 0:
                stats["feature_names"] = fold_path.feature_names
                stats["coef_names"] = fold_path.coef_names
            row["stats"] = stats
        rows.append(row)
    return rows


# --- the read -------------------------------------------------------------------------------------


def _fold_path(fold: int, rows: list[PathPoint], header: dict[str, Any]) -> FoldPath:
    """Stored rows of one split (a subset of its points, in grid order) as an engine FoldPath."""
    fp = FoldPath(
        fold=None if fold == FULL_PATH else fold,
        grid=[r.value for r in rows],
        n_train=0,
        n_val=0,
    )
    if fold != FULL_PATH or any(r.loss is not None for r in rows):
        # a point stored as it finished may lack a score: NaN, then null in the read (the
        # all-rows path has scores of its own on the validation rows)
        fp.loss = [math.nan if r.loss is None else r.loss for r in rows]
        fp.metric = [math.nan if r.metric is None else r.metric for r in rows]
    if fold != FULL_PATH:
        return fp
    # A statistic a stored row lacks (the exact path stores them when its split ends) stays
    # None: combine passes it through to the point as it is.
    stats = [r.stats or {} for r in rows]
    nonzero: list[Any] = [r.nonzero for r in rows]
    selected: list[Any] = [s.get("selected") for s in stats]
    norms: list[Any] = [s.get("norms") for s in stats]
    fp.nonzero, fp.selected, fp.norms = nonzero, selected, norms
    fp.feature_names = header.get("feature_names")
    fp.coef_names = header.get("coef_names")
    if any("coef" in s for s in stats):
        coef: list[Any] = [s.get("coef") for s in stats]
        fp.coef = coef
    return fp


def _partial(
    job: Job, points: list[PathPoint], grid: list[float], param: str, select_: str
) -> dict[str, Any]:
    """What the stored points of an unfinished search say, in ``combine``'s shape."""
    by_split: dict[int, dict[int, PathPoint]] = {}
    for p in points:
        by_split.setdefault(p.fold, {})[p.index] = p
    full = by_split.pop(FULL_PATH, {})
    header = (full[0].stats or {}) if 0 in full else {}
    folds = job.spec["search"]["folds"]
    metric_name = "r2" if job.spec.get("task") == "regression" else "accuracy"
    # The splits whose held-out scores choose: the folds, or without folds the all-rows path
    # (scored on the validation rows).
    scoring = by_split if folds else {FULL_PATH: full}

    def scored(k: int) -> list[PathPoint]:
        return [rows[k] for rows in scoring.values() if k in rows and rows[k].loss is not None]

    out_points = []
    for k, value in enumerate(grid):
        held = scored(k)
        full_row = full.get(k)
        if not held and full_row is None:
            continue
        point: dict[str, Any] = {
            "value": value,
            "cv_loss": None,
            "cv_loss_se": None,
            "cv_metric": None,
            "cv_metric_se": None,
            "nonzero": None if full_row is None else full_row.nonzero,
            "selected_features": None,
            "feature_norms": None,
        }
        full_fp = _fold_path(FULL_PATH, [full_row] if full_row else [], header)
        full_fp.grid = [value]
        if not full_row:
            full_fp.nonzero = full_fp.selected = full_fp.norms = None
        if held:
            split_fps = [_fold_path(r.fold, [r], header) for r in held if r.fold != FULL_PATH]
            point = engine.combine(
                [full_fp, *split_fps], param=param, select=select_, metric_name=metric_name
            ).points[0]
            for key in ("cv_metric", "cv_metric_se"):
                if not math.isfinite(point[key]):
                    point[key] = None
        elif full_row is not None:
            stats = full_row.stats or {}
            point["selected_features"] = stats.get("selected")
            point["feature_norms"] = stats.get("norms")
            if "coef" in stats:
                point["coef"] = stats["coef"]
        point["folds_scored"] = len(held)
        out_points.append(point)
    # The choices need every fold's score: over the points all folds (and the full path) reached.
    complete_idx = [k for k in range(len(grid)) if len(scored(k)) == (folds or 1) and k in full]
    chosen: dict[str, Any] = {"min": None, "1se": None, "used": select_}
    if complete_idx:
        fps = [_fold_path(FULL_PATH, [full[k] for k in complete_idx], header)]
        for fold, rows in by_split.items():
            fps.append(_fold_path(fold, [rows[k] for k in complete_idx], header))
        chosen = engine.combine(fps, param=param, select=select_, metric_name=metric_name).chosen
    return {
        "param": param,
        "grid": grid,
        "points": out_points,
        "chosen": chosen,
        "folds": folds,
        "metric_name": metric_name,
        "feature_names": header.get("feature_names") or list(job.spec.get("features") or []),
        "coef_names": header.get("coef_names"),
    }


def _named(values: list[float] | None, names: list[str] | None) -> dict[str, float] | None:
    if values is None or names is None or len(values) != len(names):
        return None
    return dict(zip(names, values, strict=True))


def get(*, session: Session, job_id: str, owner_id: str | None) -> dict[str, Any]:
    """The caller's search job's path: the combined result, or what its stored points say so far."""
    job = jobs.get(session=session, job_id=job_id, owner_id=owner_id)
    search = (job.spec or {}).get("search")
    if not search:
        raise Conflict(
            f"Job {job.id!r} is a single fit, not a search: it has no regularization path "
            "(submit a spec with a 'search' section to get one).",
            loc=["path", "job_id"],
            code="not_a_search",
        )
    param = str(search["param"])
    stored = session.get(PathResult, job.id)
    current = stored is not None and stored.attempt == job.attempts
    result: dict[str, Any] = dict(stored.result) if current and stored else {}
    complete = "points" in result
    if not complete:
        points = list(
            session.scalars(
                select(PathPoint)
                .where(PathPoint.job_id == job.id, PathPoint.attempt == job.attempts)
                .order_by(PathPoint.fold, PathPoint.index)
            )
        )
        grid = result.get("grid") or sorted({p.value for p in points}, reverse=True)
        result = _partial(job, points, grid, param, search["select"])
    names, coef_names = result.get("feature_names"), result.get("coef_names")
    out_points = []
    for point in result["points"]:
        out = {
            "value": point["value"],
            "cv_loss": point["cv_loss"],
            "cv_loss_se": point["cv_loss_se"],
            "cv_metric": point["cv_metric"],
            "cv_metric_se": point["cv_metric_se"],
            "nonzero": point["nonzero"],
            "selected_features": point["selected_features"],
            "feature_norms": _named(point["feature_norms"], names),
            "folds_scored": point.get("folds_scored", result.get("folds")),
        }
        if point.get("coef") is not None:
            out["coef"] = _named(point["coef"], coef_names)
        if point.get("intercept") is not None:
            out["intercept"] = point["intercept"]
        out_points.append(out)
    chosen = dict(result["chosen"])
    used = chosen.get(chosen.get("used"))
    return {
        "job_id": job.id,
        "status": job.status,
        "param": param,
        "grid": result["grid"],
        "folds": result.get("folds"),
        "metric_name": result.get("metric_name"),
        "complete": complete,
        "points": out_points,
        "chosen": {**chosen, "value": used},
        "model_id": job.model_id,
    }
