"""Dataset (ORM): an uploaded table's metadata; its rows live in a file under the data folder."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, new_id, utcnow
from app.core.keys import ApiKey


class Dataset(Base):
    """An uploaded table. The rows live in a Parquet file under ``settings.data_dir``."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str | None] = mapped_column(
        ForeignKey(ApiKey.id, ondelete="SET NULL"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(1024))  # relative to settings.data_dir
    rows: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)  # bytes of the uploaded file
    columns: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # one summary per column
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def kind(self) -> str:
        """ "images" (x.npy and y.npy in a folder) or "table" (a Parquet file)."""
        return "images" if any(c.get("dtype") == "image" for c in self.columns) else "table"

    @property
    def images(self) -> dict[str, Any] | None:
        """An image dataset's profile (``ImageProfile`` shape), from its two column summaries."""
        image = next((c for c in self.columns if c.get("dtype") == "image"), None)
        if image is None:
            return None
        label = next(c for c in self.columns if c is not image)
        return {
            "image_column": image["name"],
            "label_column": label["name"],
            "shape": image["shape"],
            "dtype": image["pixel_dtype"],
            "min": image["min"],
            "max": image["max"],
            "mean": image["mean"],
            "classes": label.get("classes") or [],
            "thumbnails": image.get("thumbnails") or [],
            "ignored_files": image.get("ignored_files", 0),
        }
