"""Job and EpochRecord (ORM): a training job's row and its loss history.

Only ``app.jobs.state`` changes a job's status; everything else reads these rows.
"""

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.db import Base, new_id, utcnow
from app.core.keys import ApiKey
from app.datasets.orm import Dataset

if TYPE_CHECKING:
    from app.models.orm import Model

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")


class Job(Base):
    """A training job. The database row is the single source of truth for its state."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(
        ForeignKey(ApiKey.id, ondelete="SET NULL"), index=True
    )
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey(Dataset.id, ondelete="SET NULL"), index=True
    )
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))  # who ran (or runs) the job body
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    model: Mapped["Model | None"] = relationship(back_populates="job", uselist=False)
    epochs: Mapped[list["EpochRecord"]] = relationship(
        back_populates="job", order_by="EpochRecord.epoch", cascade="all, delete-orphan"
    )

    @property
    def model_id(self) -> str | None:
        return self.model.id if self.model is not None else None


class EpochRecord(Base):
    """One row of a job's loss history: the trainer's per-epoch record."""

    __tablename__ = "epoch_records"
    __table_args__ = (UniqueConstraint("job_id", "epoch", name="uq_epoch_records_job_epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    data_loss: Mapped[float | None] = mapped_column(Float)
    penalty: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    metric: Mapped[float | None] = mapped_column(Float)
    val_metric: Mapped[float | None] = mapped_column(Float)
    zero_fraction: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float | None] = mapped_column(Float)

    job: Mapped[Job] = relationship(back_populates="epochs")


# Job.model names the Model class: importing it with Job keeps the mappers configurable in a
# process that imports only the jobs domain (a worker's claim). Model imports Job, so this stays
# at the bottom, after Job is defined.
from app.models import orm as _models_orm  # noqa: E402,F401
