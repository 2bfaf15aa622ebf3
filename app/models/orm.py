"""Model (ORM): a trained model's spec, metrics and weights (npz bytes from engine.serialize)."""

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, LargeBinary, String, func
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import Mapped, column_property, mapped_column, relationship

from app.core.db import Base, new_id, utcnow
from app.core.keys import ApiKey
from app.datasets.orm import Dataset
from app.jobs.orm import Job


def weights_checksum(weights: bytes) -> str:
    """SHA-256 hex digest of a model's npz bytes, stored with them and verified on every read."""
    return hashlib.sha256(weights).hexdigest()


def _checksum_of_inserted_weights(context: DefaultExecutionContext) -> str:
    # However a row is inserted, its checksum is that of the bytes inserted with it.
    return weights_checksum(context.get_current_parameters()["weights"])


class Model(Base):
    """A trained model: spec, fitted preprocessing and weights (npz bytes from engine.serialize)."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(
        ForeignKey(ApiKey.id, ondelete="SET NULL"), index=True
    )
    job_id: Mapped[str | None] = mapped_column(ForeignKey(Job.id, ondelete="SET NULL"), unique=True)
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey(Dataset.id, ondelete="SET NULL"), index=True
    )
    task: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(255))
    feature_names: Mapped[list[str]] = mapped_column(JSON)
    classes: Mapped[list[Any] | None] = mapped_column(JSON)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Loaded only when asked for: listing and reading a model never need the bytes.
    weights: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    weights_sha256: Mapped[str] = mapped_column(String(64), default=_checksum_of_inserted_weights)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    # Size of the npz bytes, computed by the database (the bytes are not loaded for it).
    size_bytes: Mapped[int] = column_property(func.length(weights))

    job: Mapped[Job | None] = relationship(back_populates="model")
