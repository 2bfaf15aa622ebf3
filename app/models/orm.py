"""Model (ORM): a trained model's spec, metrics and weights (npz bytes from engine.serialize)."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.db import Base, new_id, utcnow
from app.core.keys import ApiKey
from app.datasets.orm import Dataset
from app.jobs.orm import Job


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
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    job: Mapped[Job | None] = relationship(back_populates="model")
