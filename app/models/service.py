"""Models: create (from a trained engine model), get, list, delete, and their verified weights.

A model row holds the engine's npz bytes and their SHA-256; every read of the bytes checks it, so
a corrupted blob is refused with ``model_corrupt`` instead of being served or predicted from.
"""

from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlalchemy.orm import Session

import engine
from app.core.db import rowcount
from app.core.errors import NotFound, RegulaError
from app.core.ownership import owned
from app.jobs.orm import Job
from app.models.orm import Model, weights_checksum

# Ids are 32 hex digits; longer ones are not sent to the database at all.
MAX_ID_LENGTH = 64


class ModelCorrupt(RegulaError):
    """The stored bytes of a model fail their checksum or do not load: nothing is served."""

    status_code = 500
    code = "model_corrupt"


def not_found(model_id: str) -> NotFound:
    """The one 404 of a model that does not exist or is not the caller's."""
    shown = model_id if len(model_id) <= MAX_ID_LENGTH else model_id[:MAX_ID_LENGTH] + "..."
    return NotFound(f"Model {shown!r} does not exist.", loc=["path", "model_id"])


def corrupt(model_id: str) -> ModelCorrupt:
    return ModelCorrupt(
        f"The stored weights of model {model_id!r} are corrupt (they fail their checksum or do "
        "not load); retrain the model.",
        loc=["path", "model_id"],
    )


def create(*, session: Session, job: Job, model: engine.Model) -> Model:
    """Add the model row of a finished ``job`` (npz bytes and their checksum); the caller commits,
    so the row and the job's final status share one transaction."""
    weights = model.to_bytes()
    row = Model(
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
        weights_sha256=weights_checksum(weights),
    )
    session.add(row)
    return row


def get(*, session: Session, model_id: str, owner_id: str | None) -> Model:
    """The caller's model ``model_id`` (weights not loaded); NotFound otherwise."""
    if len(model_id) > MAX_ID_LENGTH:
        raise not_found(model_id)
    stmt = owned(select(Model).where(Model.id == model_id), Model.owner_id, owner_id)
    model = session.scalar(stmt)
    if model is None:
        raise not_found(model_id)
    return model


def list_(*, session: Session, owner_id: str | None, limit: int, offset: int) -> list[Model]:
    """The caller's models, newest first."""
    stmt = owned(select(Model), Model.owner_id, owner_id)
    stmt = stmt.order_by(Model.created_at.desc(), Model.id).limit(limit).offset(offset)
    return list(session.scalars(stmt))


def get_weights(*, session: Session, model_id: str, owner_id: str | None) -> bytes:
    """The model's npz bytes (what ``engine.load`` reads), checked against their checksum."""
    if len(model_id) > MAX_ID_LENGTH:
        raise not_found(model_id)
    stmt = owned(
        select(Model.weights, Model.weights_sha256).where(Model.id == model_id),
        Model.owner_id,
        owner_id,
    )
    row = session.execute(stmt).first()
    if row is None:
        raise not_found(model_id)
    weights, checksum = row
    if weights_checksum(weights) != checksum:
        raise corrupt(model_id)
    return weights


def delete(*, session: Session, model_id: str, owner_id: str | None) -> None:
    """Delete the caller's model; predictions stop at once, even one whose load is in flight."""
    from app.models import loading

    if len(model_id) > MAX_ID_LENGTH:
        raise not_found(model_id)
    # One conditional DELETE: of concurrent deletes of the same model exactly one removes it.
    stmt = owned(sql_delete(Model).where(Model.id == model_id), Model.owner_id, owner_id)
    result = session.execute(stmt.execution_options(synchronize_session=False))
    session.commit()
    if rowcount(result) != 1:
        raise not_found(model_id)
    loading.evict(model_id)


def read(model: Model) -> dict[str, Any]:
    """The API view of a model row (the loss comes from its spec)."""
    return {
        "id": model.id,
        "job_id": model.job_id,
        "dataset_id": model.dataset_id,
        "task": model.task,
        "target": model.target,
        "loss": model.spec.get("loss"),
        "feature_names": model.feature_names,
        "classes": model.classes,
        "spec": model.spec,
        "metrics": model.metrics,
        "created_at": model.created_at,
        "size_bytes": model.size_bytes,
    }
