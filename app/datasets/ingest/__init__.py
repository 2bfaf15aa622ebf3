"""Upload ingest, one module per concept:

- ``spool``: stream the multipart body to disk under a size limit and a read timeout; the file's
  first bytes say its format (CSV text, Parquet, zip).
- ``csvfile`` / ``parquetfile``: adapters turning a table file into typed Arrow batches;
  ``table`` writes those batches to Parquet and ``stats`` folds the column statistics.
- ``images``: an ``.npz`` (x, y) or a zip of class folders -> ``x.npy`` / ``y.npy``.
- ``pool``: the datasets domain's own small thread pool, where all blocking work runs.

``convert`` picks the adapter. The lifecycle (spool, convert, fsync, rename, commit the row) is
``app.datasets.service.create``.
"""

from pathlib import Path

from app.datasets.ingest.common import MAX_NAME_CHARS, Ingested
from app.datasets.ingest.csvfile import convert_csv
from app.datasets.ingest.images import Limits, convert_images
from app.datasets.ingest.parquetfile import convert_parquet
from app.datasets.ingest.spool import Spooled, spool_multipart

__all__ = [
    "MAX_NAME_CHARS",
    "Ingested",
    "Limits",
    "Spooled",
    "convert",
    "spool_multipart",
]


def convert(
    upload: Spooled, *, table: Path, images: Path, max_columns: int, limits: Limits
) -> Ingested:
    """Convert the upload: a table to Parquet at ``table``, images into folder ``images``."""
    if upload.kind == "parquet":
        return convert_parquet(upload, table, max_columns=max_columns)
    if upload.kind == "zip":
        return convert_images(upload, images, limits=limits)
    return convert_csv(upload, table, max_columns=max_columns)
