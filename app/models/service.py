"""Models: list, read, delete, export. A model row holds the engine's npz bytes."""

from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from app.core.errors import NotFound
from app.core.ownership import owned
from app.models.orm import Model

# The listing never needs the weights themselves, only their size.
_SIZE = func.length(Model.weights).label("size_bytes")


def _not_found(model_id: str) -> NotFound:
    return NotFound(f"Model {model_id!r} does not exist.", loc=["path", "model_id"])


def _with_size(model: Model, size: int) -> Model:
    model.size_bytes = int(size or 0)  # type: ignore[attr-defined]
    return model


def get(*, session: Session, model_id: str, owner_id: str | None) -> Model:
    """The caller's model ``model_id`` (weights not loaded); NotFound otherwise."""
    stmt = owned(
        select(Model, _SIZE).options(defer(Model.weights)).where(Model.id == model_id),
        Model.owner_id,
        owner_id,
    )
    row = session.execute(stmt).first()
    if row is None:
        raise _not_found(model_id)
    return _with_size(row[0], row[1])


def list_(*, session: Session, owner_id: str | None, limit: int, offset: int) -> list[Model]:
    """The caller's models, newest first."""
    stmt = owned(select(Model, _SIZE).options(defer(Model.weights)), Model.owner_id, owner_id)
    stmt = stmt.order_by(Model.created_at.desc(), Model.id).limit(limit).offset(offset)
    return [_with_size(model, size) for model, size in session.execute(stmt)]


def get_weights(*, session: Session, model_id: str, owner_id: str | None) -> bytes:
    """The model's npz bytes (what ``engine.load`` reads)."""
    stmt = owned(select(Model.weights).where(Model.id == model_id), Model.owner_id, owner_id)
    weights = session.scalar(stmt)
    if weights is None:
        raise _not_found(model_id)
    return weights


def delete(*, session: Session, model_id: str, owner_id: str | None) -> None:
    """Delete the caller's model (and drop it from the prediction cache)."""
    from app.models import prediction

    # One conditional DELETE: of concurrent deletes of the same model exactly one removes it.
    stmt = owned(sql_delete(Model).where(Model.id == model_id), Model.owner_id, owner_id)
    result = session.execute(stmt.execution_options(synchronize_session=False))
    session.commit()
    prediction.evict(model_id)
    if result.rowcount != 1:
        raise _not_found(model_id)


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
        "size_bytes": getattr(model, "size_bytes", 0),
    }
