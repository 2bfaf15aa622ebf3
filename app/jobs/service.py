"""Jobs: validate a TrainingSpec completely, queue it, get, list, cancel, read the history.

Every change of a job's state goes through ``app.jobs.state``; this module decides what may be
queued (the spec against the engine's rules, the dataset and the service's limits).
"""

from __future__ import annotations

import builtins
import itertools
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

import engine
from app.core.config import settings
from app.core.errors import Conflict, InvalidInput, NotFound, TooManyJobs
from app.core.ownership import owned
from app.datasets.orm import Dataset
from app.jobs import state
from app.jobs.executor import Executor
from app.jobs.orm import EpochRecord, Job
from app.jobs.schemas import TrainingSpec

log = logging.getLogger("regula.jobs")


class SpecInvalid(InvalidInput):
    """A spec that fails one or more checks; every failing field is listed in ``detail``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["msg"], loc=errors[0]["loc"], code=errors[0]["type"])
        self.errors = errors

    def detail(self) -> list[dict[str, Any]]:
        return self.errors


def _err(loc: list[str | int], msg: str, code: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": code}


def _dataset_for_spec(*, session: Session, dataset_id: str, owner_id: str | None) -> Dataset:
    stmt = owned(select(Dataset).where(Dataset.id == dataset_id), Dataset.owner_id, owner_id)
    dataset = session.scalar(stmt)
    if dataset is None:
        raise SpecInvalid(
            [
                _err(
                    ["dataset_id"],
                    f"dataset_id: no dataset {dataset_id!r} exists (or it is not yours).",
                    "dataset_not_found",
                )
            ]
        )
    return dataset


def _check_columns(
    spec_in: TrainingSpec, normalized: dict[str, Any], dataset: Dataset
) -> tuple[list[str], list[dict[str, Any]]]:
    """Resolve the feature list and check target/features against the dataset's column summaries."""
    columns = {c["name"]: c for c in dataset.columns}
    errors: list[dict[str, Any]] = []
    target = spec_in.target
    if spec_in.features is None:
        features = [name for name in columns if name != target]
        if not features:
            errors.append(
                _err(
                    ["features"],
                    f"features: dataset {dataset.name!r} has no column besides the target.",
                    "no_features",
                )
            )
    else:
        features = builtins.list(spec_in.features)
        seen: set[str] = set()
        for i, name in enumerate(features):
            if name not in columns:
                errors.append(
                    _err(
                        ["features", i],
                        f"features[{i}]: dataset {dataset.name!r} has no column {name!r}.",
                        "unknown_column",
                    )
                )
            elif name == target:
                errors.append(
                    _err(
                        ["features", i],
                        f"features[{i}]: {name!r} is the target; a model cannot take its "
                        "target as an input.",
                        "target_in_features",
                    )
                )
            elif name in seen:
                errors.append(
                    _err(
                        ["features", i],
                        f"features[{i}]: {name!r} is listed twice.",
                        "duplicate_feature",
                    )
                )
            seen.add(name)

    column = columns.get(target)
    if column is None:
        errors.append(
            _err(
                ["target"],
                f"target: dataset {dataset.name!r} has no column {target!r} "
                f"(columns: {', '.join(builtins.list(columns)[:20])}).",
                "unknown_column",
            )
        )
        return features, errors
    if column.get("missing"):
        errors.append(
            _err(
                ["target"],
                f"target: column {target!r} has {column['missing']} missing values; "
                "every training row needs a target.",
                "missing_target",
            )
        )
    task, loss = normalized["task"], normalized["loss"]
    distinct = column.get("distinct")
    if (
        distinct is None
        and column.get("min") is not None
        and column.get("min") == column.get("max")
    ):
        distinct = 1  # numeric summaries carry min/max, not a distinct count
    if task == "regression":
        if column.get("dtype") != "number":
            errors.append(
                _err(
                    ["target"],
                    f"target: column {target!r} holds strings, but {loss} regression needs a "
                    "numeric target.",
                    "target_not_numeric",
                )
            )
        elif distinct == 1:
            errors.append(
                _err(
                    ["target"],
                    f"target: column {target!r} is constant; there is nothing to regress.",
                    "constant_target",
                )
            )
    elif distinct is not None:
        if distinct < 2:
            errors.append(
                _err(
                    ["target"],
                    f"target: column {target!r} has {distinct} distinct value; classification "
                    "needs at least 2 classes.",
                    "one_class",
                )
            )
        elif loss == "binary_cross_entropy" and distinct != 2:
            errors.append(
                _err(
                    ["loss"],
                    f"loss: binary_cross_entropy needs exactly 2 classes, but target {target!r} "
                    f"has {distinct}; use softmax_cross_entropy.",
                    "not_binary",
                )
            )
    return features, errors


def _job_memory_bytes(normalized: dict[str, Any], dataset: Dataset, features: list[str]) -> int:
    """A lower bound on a job's peak memory, from the spec and the dataset's column summaries.

    Per weight: the weight, its gradient and up to two optimizer buffers; per hidden or output unit
    and batch row: the activation, its gradient and a dropout mask; plus the encoded inputs; plus
    the validation split's one-pass evaluation each epoch (a layer's input and output at once).
    """
    columns = {c["name"]: c for c in dataset.columns}
    n_inputs = sum(
        (columns[name].get("distinct") or 1) if columns[name]["dtype"] == "string" else 1
        for name in features
        if name in columns
    )
    n_outputs = 1 if normalized["task"] == "regression" else 2
    widths = [n_inputs, *normalized["model"]["hidden_layers"], n_outputs]
    n_weights = sum(a * b for a, b in itertools.pairwise(widths))
    units = sum(widths[1:])
    itemsize = 8 if normalized["dtype"] == "float64" else 4
    batch = min(normalized["batch_size"], dataset.rows)
    val_rows = int(dataset.rows * (normalized.get("validation_split") or 0.0))
    evaluation = val_rows * 2 * max(widths[1:])
    return itemsize * (4 * n_weights + 3 * batch * units + dataset.rows * n_inputs + evaluation)


def _check_limits(
    normalized: dict[str, Any], dataset: Dataset, features: list[str]
) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    needed_mb = _job_memory_bytes(normalized, dataset, features) / 2**20
    if needed_mb > settings.max_job_memory_mb:
        errors.append(
            _err(
                ["model", "hidden_layers"],
                f"model: this network and batch size need at least {needed_mb:,.0f} MB of memory "
                f"(weights, gradients and activations), over this service's limit of "
                f"{settings.max_job_memory_mb:,} MB per job; use fewer or narrower hidden layers "
                "or a smaller batch_size.",
                "limit_exceeded",
            )
        )
    epochs, batch_size = normalized["epochs"], normalized["batch_size"]
    if epochs > settings.max_epochs:
        errors.append(
            _err(
                ["epochs"],
                f"epochs: {epochs} is over this service's limit of {settings.max_epochs}.",
                "limit_exceeded",
            )
        )
    elif epochs * dataset.rows > settings.max_epoch_rows:
        errors.append(
            _err(
                ["epochs"],
                f"epochs: {epochs} epochs x {dataset.rows} rows is over this service's limit of "
                f"{settings.max_epoch_rows} epoch-rows per job.",
                "limit_exceeded",
            )
        )
    if batch_size > settings.max_batch_size:
        errors.append(
            _err(
                ["batch_size"],
                f"batch_size: {batch_size} is over this service's limit of "
                f"{settings.max_batch_size}.",
                "limit_exceeded",
            )
        )
    return errors


def validate(
    *, session: Session, spec_in: TrainingSpec, owner_id: str | None
) -> tuple[Dataset, dict[str, Any]]:
    """Check a spec completely (engine rules, dataset columns, limits); return the stored spec."""
    try:
        normalized = engine.normalize_spec(spec_in.engine_spec())
    except engine.SpecError as exc:
        raise SpecInvalid([_err(builtins.list(exc.loc), exc.msg, exc.code)]) from exc
    dataset = _dataset_for_spec(session=session, dataset_id=spec_in.dataset_id, owner_id=owner_id)
    features, errors = _check_columns(spec_in, normalized, dataset)
    errors += _check_limits(normalized, dataset, features)
    if errors:
        raise SpecInvalid(errors)
    stored = {"dataset_id": dataset.id, "target": spec_in.target, "features": features}
    return dataset, {**stored, **normalized}


def create(
    *, session: Session, spec_in: TrainingSpec, owner_id: str | None, executor: Executor | None
) -> Job:
    """Validate, check the caller's quota, queue the job and hand it to the executor."""
    dataset, spec = validate(session=session, spec_in=spec_in, owner_id=owner_id)
    unfinished = state.unfinished_count(session=session, owner_id=owner_id)
    if unfinished >= settings.max_queued_per_key:
        raise TooManyJobs(
            f"You have {unfinished} jobs queued or running, this service's limit per API key "
            f"(REGULA_MAX_QUEUED_PER_KEY = {settings.max_queued_per_key}); wait for one to "
            "finish or cancel one.",
            loc=["body"],
            retry_after=settings.quota_retry_after_seconds,
        )
    job = Job(owner_id=owner_id, dataset_id=dataset.id, spec=spec)
    return state.queue(session=session, job=job, executor=executor)


def get(*, session: Session, job_id: str, owner_id: str | None) -> Job:
    """The caller's job ``job_id``; NotFound otherwise."""
    stmt = owned(select(Job).where(Job.id == job_id), Job.owner_id, owner_id)
    job = session.scalar(stmt.options(selectinload(Job.model)))
    if job is None:
        raise NotFound(f"Job {job_id!r} does not exist.", loc=["path", "job_id"])
    return job


def list(
    *, session: Session, owner_id: str | None, status: str | None, limit: int, offset: int
) -> list[Job]:
    """The caller's jobs, newest first, optionally of one status."""
    stmt = owned(select(Job), Job.owner_id, owner_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    stmt = stmt.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    return builtins.list(session.scalars(stmt.options(selectinload(Job.model))))


def cancel(
    *, session: Session, job_id: str, owner_id: str | None, executor: Executor | None
) -> Job:
    """Cancel a queued job at once; ask a running one to stop after its current epoch."""
    job = get(session=session, job_id=job_id, owner_id=owner_id)
    if state.cancel(session=session, job=job, executor=executor) == "finished":
        raise Conflict(
            f"Job {job.id!r} has already finished ({job.status}); there is nothing to cancel.",
            loc=["path", "job_id"],
            code="job_finished",
        )
    return job


def history(*, session: Session, job_id: str, owner_id: str | None) -> list[EpochRecord]:
    """The job's epoch records, in epoch order."""
    job = get(session=session, job_id=job_id, owner_id=owner_id)
    stmt = select(EpochRecord).where(EpochRecord.job_id == job.id).order_by(EpochRecord.epoch)
    return builtins.list(session.scalars(stmt))
