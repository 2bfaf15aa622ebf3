"""Dataset (ORM): an uploaded table's metadata; its rows live in a file under the data folder."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, new_id, utcnow


class Dataset(Base):
    """An uploaded table. The rows live in a Parquet file under ``settings.data_dir``."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(1024))  # relative to settings.data_dir
    rows: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)  # bytes of the uploaded file
    columns: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # one summary per column
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
