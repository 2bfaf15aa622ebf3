"""What every ingest module shares: where errors point, the converted result, size helpers."""

import errno
from dataclasses import dataclass, field
from typing import Any

from app.datasets.errors import InsufficientStorage

FILE_LOC = ["body", "file"]
MAX_NAME_CHARS = 255
# A column profile counts distinct values exactly up to this many, then reports "more than".
MAX_DISTINCT = 10_000
# Parquet row groups of about this many rows (statistics are folded per row group too).
ROW_GROUP_ROWS = 128 * 1024


@dataclass
class Ingested:
    """A converted upload: its kind, data rows and one summary dict per column."""

    rows: int
    columns: list[dict[str, Any]]
    kind: str = "table"  # "table" (one Parquet file) or "images" (a folder of .npy files)
    extra: dict[str, Any] = field(default_factory=dict)


def megabytes(n_bytes: int) -> str:
    """``n_bytes`` as whole megabytes, for messages ('200 MB')."""
    return f"{n_bytes // (1024 * 1024)} MB"


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the data volume is out of space (or over its quota)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # pyarrow's IO errors are OSErrors whose errno is not always set; the message is stable.
    return isinstance(exc, OSError) and "No space left on device" in str(exc)


def disk_full() -> InsufficientStorage:
    """The 507 every full-disk failure of an upload becomes."""
    return InsufficientStorage(
        "The server's data disk is full, so the upload was not stored; nothing was kept. "
        "Try again later, or ask the operator to free space under REGULA_DATA_DIR.",
        loc=FILE_LOC,
    )
