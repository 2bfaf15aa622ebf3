"""Jobs: validate a TrainingSpec completely, queue it, get, list, cancel, read the history.

Every change of a job's state goes through ``app.jobs.state``; this module decides what may be
queued (the spec against the engine's rules, the dataset and the service's limits).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

import engine
import engine.footprint
from app.core.config import settings
from app.core.errors import Conflict, InvalidInputs, NotFound, TooManyJobs
from app.core.ownership import owned
from app.datasets.orm import Dataset
from app.jobs import state
from app.jobs.executor import Executor
from app.jobs.orm import EpochRecord, Job
from app.jobs.schemas import TrainingSpec
from app.models import loading

log = logging.getLogger("regula.jobs")


def _err(loc: list[str | int], msg: str, code: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": code}


def _dataset_for_spec(*, session: Session, dataset_id: str, owner_id: str | None) -> Dataset:
    stmt = owned(select(Dataset).where(Dataset.id == dataset_id), Dataset.owner_id, owner_id)
    dataset = session.scalar(stmt)
    if dataset is None:
        raise InvalidInputs(
            [
                _err(
                    ["dataset_id"],
                    f"dataset_id: no dataset {dataset_id!r} exists (or it is not yours).",
                    "dataset_not_found",
                )
            ]
        )
    return dataset


def _n_classes(column: dict[str, Any]) -> int | None:
    """The target's class count from its column summary (None when the profile does not say)."""
    distinct = column.get("distinct")
    if (
        distinct is None
        and column.get("min") is not None
        and column.get("min") == column.get("max")
    ):
        return 1  # a constant numeric column
    return None if distinct is None else int(distinct)


def _image_column(dataset: Dataset) -> dict[str, Any] | None:
    """The pixel column of an image dataset (dtype "image"), else None."""
    if dataset.kind != "images":
        return None
    return next((c for c in dataset.columns if c.get("dtype") == "image"), None)


def _check_image_columns(
    spec_in: TrainingSpec, dataset: Dataset, image: dict[str, Any]
) -> tuple[list[str], list[dict[str, Any]]]:
    """An image dataset trains on its one image column; the target is its label column."""
    errors: list[dict[str, Any]] = []
    name = image["name"]
    labels = [c["name"] for c in dataset.columns if c["name"] != name]
    if spec_in.target == name or spec_in.target not in labels:
        errors.append(
            _err(
                ["target"],
                f"target: dataset {dataset.name!r} holds images; its target is the label column "
                f"{labels[0] if labels else 'y'!r}, not {spec_in.target!r}.",
                "unknown_column" if spec_in.target != name else "target_is_image",
            )
        )
    if spec_in.features is not None and list(spec_in.features) != [name]:
        errors.append(
            _err(
                ["features"],
                f"features: dataset {dataset.name!r} holds images; a model reads its image "
                f"column, so features must be [{name!r}] or null.",
                "image_features",
            )
        )
    return [name], errors


def _check_shapes(
    normalized: dict[str, Any], dataset: Dataset, features: list[str]
) -> list[dict[str, Any]]:
    """The network's layers against the input: image shape (C, H, W) or the encoded width."""
    image = _image_column(dataset)
    if image is not None:
        shape = tuple(int(v) for v in image.get("shape") or ())
    else:
        if normalized.get("augmentation") is not None:
            return [
                _err(
                    ["augmentation"],
                    f"augmentation: it transforms images, but dataset {dataset.name!r} is a "
                    "table; set augmentation to null.",
                    "needs_images",
                )
            ]
        shape = (_n_inputs(dataset, features),)
    if not shape:
        return []
    try:
        engine.layer_shapes(normalized, shape)
    except engine.SpecError as exc:
        return [_err(list(exc.loc), exc.msg, exc.code)]
    return []


def _check_columns(
    spec_in: TrainingSpec, normalized: dict[str, Any], dataset: Dataset
) -> tuple[list[str], list[dict[str, Any]]]:
    """Resolve the feature list and check target/features against the dataset's column summaries."""
    columns = {c["name"]: c for c in dataset.columns}
    errors: list[dict[str, Any]] = []
    target = spec_in.target
    image = _image_column(dataset)
    if image is not None:
        features, errors = _check_image_columns(spec_in, dataset, image)
        if errors:
            return features, errors
    elif spec_in.features is None:
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
        features = list(spec_in.features)
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
                f"(columns: {', '.join(list(columns)[:20])}).",
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
    distinct = _n_classes(column)
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


def _footprint(
    normalized: dict[str, Any], dataset: Dataset, features: list[str], target: str
) -> engine.footprint.Footprint:
    """What this job will hold in memory and store, from the spec and the column summaries."""
    columns = {c["name"]: c for c in dataset.columns}
    image = _image_column(dataset)
    input_shape = None if image is None else tuple(int(v) for v in image.get("shape") or ())
    n_inputs = _n_inputs(dataset, features)
    n_outputs = 1
    if normalized["task"] == "classification" and normalized["loss"] != "binary_cross_entropy":
        n_outputs = _n_classes(columns.get(target, {})) or 2
    return engine.footprint.footprint(
        normalized,
        n_rows=dataset.rows,
        n_columns=len(features),
        n_inputs=n_inputs,
        n_outputs=n_outputs,
        input_shape=input_shape or None,
    )


def _n_inputs(dataset: Dataset, features: list[str]) -> int:
    """Encoded input width: a string column counts its categories, an image its pixels."""
    columns = {c["name"]: c for c in dataset.columns}
    total = 0
    for name in features:
        column = columns.get(name)
        if column is None:
            continue
        if column["dtype"] == "image":
            total += math.prod(int(v) for v in column.get("shape") or (1,))
        elif column["dtype"] == "string":
            total += column.get("distinct") or 1
        else:
            total += 1
    return total


def _check_limits(
    normalized: dict[str, Any], dataset: Dataset, features: list[str], target: str
) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    column = next((c for c in dataset.columns if c["name"] == target), {})
    classes = _n_classes(column)
    if normalized["task"] == "classification" and classes and classes > settings.max_classes:
        errors.append(
            _err(
                ["target"],
                f"target: column {target!r} has {classes:,}"
                f"{'+' if column.get('distinct_capped') else ''} distinct values, over this "
                f"service's limit of {settings.max_classes:,} classes (REGULA_MAX_CLASSES); "
                "is it an identifier or a numeric target for regression?",
                "too_many_classes",
            )
        )
    size = _footprint(normalized, dataset, features, target)
    layers_key = "hidden_layers" if normalized["model"].get("layers") is None else "layers"
    # One model must fit one database value and the prediction cache.
    limit = min(settings.max_model_mb * 2**20, loading.max_servable_bytes())
    if size.model > limit:
        errors.append(
            _err(
                ["model", layers_key],
                f"model: this network has {size.parameters:,} parameters "
                f"({size.model / 2**20:,.0f} MB), over this service's limit of "
                f"{limit / 2**20:,.0f} MB per model (REGULA_MAX_MODEL_MB, and half of "
                "REGULA_MODEL_CACHE_MB): it could be neither stored nor served.",
                "model_too_large",
            )
        )
    needed_mb = size.total / 2**20
    if needed_mb > settings.max_job_memory_mb:
        errors.append(
            _err(
                ["model", layers_key],
                f"model: this job needs about {needed_mb:,.0f} MB of memory (the data and its "
                f"encoding, weights with their gradients and optimizer state, activations and "
                f"the validation pass), over this service's limit of "
                f"{settings.max_job_memory_mb:,} MB per job (REGULA_MAX_JOB_MEMORY_MB); use "
                "fewer or narrower hidden layers, a smaller batch_size or fewer rows.",
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
        raise InvalidInputs([_err(list(exc.loc), exc.msg, exc.code)]) from exc
    dataset = _dataset_for_spec(session=session, dataset_id=spec_in.dataset_id, owner_id=owner_id)
    features, errors = _check_columns(spec_in, normalized, dataset)
    shape_errors = _check_shapes(normalized, dataset, features)
    errors += shape_errors
    if not shape_errors:  # the footprint needs a network that can be built
        errors += _check_limits(normalized, dataset, features, spec_in.target)
    if errors:
        raise InvalidInputs(errors)
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


def list_(
    *, session: Session, owner_id: str | None, status: str | None, limit: int, offset: int
) -> list[Job]:
    """The caller's jobs, newest first, optionally of one status."""
    stmt = owned(select(Job), Job.owner_id, owner_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    stmt = stmt.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    return list(session.scalars(stmt.options(selectinload(Job.model))))


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
    return list(session.scalars(stmt))
