"""PathPoint and PathResult (ORM): the points of a search job's regularization path, and its
combined result once the search has finished.

Rows carry the ``attempt`` that wrote them: a re-queued job's next attempt reads only its own rows,
so the points of a lost attempt never mix into the path (the job's ``attempts`` says which is
current).
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, utcnow
from app.jobs.orm import Job

FULL_PATH = -1  # ``fold`` of the path on all training rows (the engine's fold_index None)


class PathPoint(Base):
    """One point of one split's path: the held-out scores (folds) or the statistics (full path)."""

    __tablename__ = "path_points"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "fold", "index", name="uq_path_points_point"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey(Job.id, ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    fold: Mapped[int] = mapped_column(Integer)  # FULL_PATH or 0..K-1
    index: Mapped[int] = mapped_column(Integer)  # position in the descending grid
    value: Mapped[float] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float)  # held-out mean data loss (folds)
    metric: Mapped[float | None] = mapped_column(Float)  # held-out r2 / accuracy (folds)
    nonzero: Mapped[int | None] = mapped_column(Integer)  # non-zero weights (full path)
    # Full path: {"selected": [names], "norms": [per feature], "coef": [...], "intercept": x,
    # "coef_names": [...] (index 0 only)}; filled when the split's path has finished.
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    worker: Mapped[str | None] = mapped_column(String(255))  # the worker that computed it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PathResult(Base):
    """The combined path of a finished search (``engine.PathResult.to_dict()``)."""

    __tablename__ = "path_results"

    job_id: Mapped[str] = mapped_column(ForeignKey(Job.id, ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
