"""Datasets: create from a spooled upload, list, get, delete, load for training, collect garbage.

A dataset is a Parquet file under ``<data_dir>/datasets/`` plus a row in ``datasets``. The file is
written under a temporary name, renamed, and only then the row committed; so a crash leaves at
worst a file without a row, which ``gc_orphans`` removes at start-up.

While an upload is in flight its process holds an exclusive ``flock`` on ``.<id>.lock``; the
collector skips the files of ids whose lock is held, so a restarting API process never deletes
the upload of another process sharing the data volume, yet removes a crashed one's at once.
"""

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import settings
from app.core.db import new_id
from app.core.errors import NotFound
from app.core.ownership import owned
from app.datasets import ingest
from app.datasets.orm import Dataset

log = logging.getLogger("regula.datasets")

SUBDIR = "datasets"


def storage_dir(data_dir: Path | None = None) -> Path:
    """The folder holding dataset files (created if missing)."""
    folder = Path(data_dir if data_dir is not None else settings.data_dir) / SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass(frozen=True)
class NewFiles:
    """An upload in flight: its lock (held), spool (CSV), temporary and final Parquet paths."""

    dataset_id: str
    lock: Path
    lock_fd: int
    spool: Path
    parquet: Path
    relative: str  # the final Parquet path, relative to the data folder (stored in the row)


def new_files(data_dir: Path | None = None) -> NewFiles:
    """Lock a fresh id for an upload; its paths are on the datasets' volume (rename is atomic)."""
    folder = storage_dir(data_dir)
    while True:
        dataset_id = new_id()
        lock = folder / f".{dataset_id}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # A collector may have taken and deleted the fresh, not yet locked file; then the lock
        # we hold is on an unlinked inode and protects nothing: start over with a new id.
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    return NewFiles(
        dataset_id=dataset_id,
        lock=lock,
        lock_fd=fd,
        spool=folder / f".{dataset_id}.csv.part",
        parquet=folder / f".{dataset_id}.parquet.part",
        relative=f"{SUBDIR}/{dataset_id}.parquet",
    )


def release(files: NewFiles) -> None:
    """End an upload: remove its temporary files and its lock (the committed Parquet stays)."""
    files.spool.unlink(missing_ok=True)
    files.parquet.unlink(missing_ok=True)
    files.lock.unlink(missing_ok=True)
    os.close(files.lock_fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create(
    *,
    session: Session,
    upload: ingest.Spooled,
    ingested: ingest.Ingested,
    files: NewFiles,
    owner_id: str | None,
    data_dir: Path | None = None,
) -> Dataset:
    """Rename the converted Parquet file into place, then commit the dataset's row."""
    final = Path(data_dir if data_dir is not None else settings.data_dir) / files.relative
    try:
        # The row must never point at a file a power cut could lose.
        _fsync(files.parquet)
        os.replace(files.parquet, final)
        row = Dataset(
            id=files.dataset_id,
            owner_id=owner_id,
            name=upload.name or upload.filename or "dataset",
            path=files.relative,
            rows=ingested.rows,
            size_bytes=upload.size,
            columns=ingested.columns,
        )
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        files.parquet.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        raise
    return row


def import_csv(
    *,
    session: Session,
    path: Path,
    owner_id: str | None = None,
    name: str | None = None,
    data_dir: Path | None = None,
) -> Dataset:
    """Store the CSV file at ``path`` as a dataset (no HTTP: scripts, the CLI, tests)."""
    quotes = 0
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            quotes += block.count(b'"')
    upload = ingest.Spooled(
        path=Path(path), filename=Path(path).name, name=name, size=os.stat(path).st_size
    )
    upload.quotes = quotes
    files = new_files(data_dir)
    try:
        ingested = ingest.ingest_csv(
            Path(path), files.parquet, max_columns=settings.max_columns, quotes=quotes
        )
        return create(
            session=session,
            upload=upload,
            ingested=ingested,
            files=files,
            owner_id=owner_id,
            data_dir=data_dir,
        )
    finally:
        release(files)


def get_all(
    *, session: Session, owner_id: str | None, limit: int = 100, offset: int = 0
) -> list[Dataset]:
    """The owner's datasets, newest first."""
    stmt = owned(select(Dataset), Dataset.owner_id, owner_id)
    stmt = stmt.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(stmt))


def get(*, session: Session, dataset_id: str, owner_id: str | None) -> Dataset:
    """The owner's dataset ``dataset_id``; NotFound if missing or someone else's."""
    stmt = owned(select(Dataset).where(Dataset.id == dataset_id), Dataset.owner_id, owner_id)
    row = session.scalar(stmt)
    if row is None:
        raise _not_found(dataset_id)
    return row


def _not_found(dataset_id: str) -> NotFound:
    return NotFound(
        f"Dataset {dataset_id!r} does not exist.",
        loc=["path", "dataset_id"],
        code="dataset_not_found",
    )


def delete(
    *, session: Session, dataset_id: str, owner_id: str | None, data_dir: Path | None = None
) -> None:
    """Delete the row, then the file (a crash in between leaves only a collectable orphan)."""
    path = path_of(get(session=session, dataset_id=dataset_id, owner_id=owner_id), data_dir)
    # One conditional DELETE: of concurrent deletes of the same dataset exactly one succeeds.
    stmt = owned(sql_delete(Dataset).where(Dataset.id == dataset_id), Dataset.owner_id, owner_id)
    result = session.execute(stmt.execution_options(synchronize_session=False))
    session.commit()
    if result.rowcount != 1:
        raise _not_found(dataset_id)
    path.unlink(missing_ok=True)


def path_of(dataset: Dataset, data_dir: Path | None = None) -> Path:
    """Absolute path of the dataset's Parquet file."""
    return Path(data_dir if data_dir is not None else settings.data_dir) / dataset.path


def load_table(
    dataset: Dataset, *, data_dir: Path | None = None, columns: list[str] | None = None
) -> dict[str, np.ndarray]:
    """The dataset as {column: 1-D array}: numbers float64 with NaN, strings object with None.

    ``columns`` selects (and orders) columns; names the file does not have are left out, so the
    caller can report them. Raises FileNotFoundError if the file is gone.
    """
    path = path_of(dataset, data_dir)
    if columns is not None:
        present = set(pq.read_schema(path).names)
        columns = [c for c in dict.fromkeys(columns) if c in present]
    table = pq.read_table(path, columns=columns)
    out: dict[str, np.ndarray] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            out[name] = col.to_numpy(zero_copy_only=False).astype(object, copy=False)
        else:
            filled = pc.fill_null(pc.cast(col, pa.float64()), np.nan)
            out[name] = filled.to_numpy()
    return out


def _dataset_id_of(name: str) -> str:
    # "<id>.parquet", ".<id>.parquet.part", ".<id>.csv.part", ".<id>.lock" -> "<id>"
    return name.lstrip(".").split(".", 1)[0]


def gc_orphans(*, session: Session, data_dir: Path, min_age_seconds: float = 0.0) -> list[Path]:
    """Remove files in the datasets folder that no row references; returns what was removed.

    Covers interrupted uploads (lock, spool and ``.part`` files), files whose row was never
    committed, and files whose row was deleted. Uploads in flight (lock held) are left alone.
    ``min_age_seconds`` > 0 also spares files modified more recently than that: a safety net for
    data volumes on network filesystems where ``flock`` may not reach other machines.
    """
    folder = Path(data_dir) / SUBDIR
    if not folder.is_dir():
        return []
    known = {Path(p).name for p in session.scalars(select(Dataset.path))}
    cutoff = time.time() - min_age_seconds
    groups: dict[str, list[Path]] = {}
    for path in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and path.name not in known and path.stat().st_mtime <= cutoff:
                groups.setdefault(_dataset_id_of(path.name), []).append(path)
    removed: list[Path] = []
    for dataset_id, paths in groups.items():
        lock = folder / f".{dataset_id}.lock"
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            fd = None
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process is uploading this one
            # Committed since the listing above? Then its file is no orphan.
            session.expire_all()
            if session.get(Dataset, dataset_id) is not None:
                paths = [p for p in paths if p.name != f"{dataset_id}.parquet"]
            # The lock file goes last, while still held.
            for path in sorted(paths, key=lambda p: p == lock):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
        finally:
            if fd is not None:
                os.close(fd)
    if removed:
        log.info("removed %d orphaned dataset file(s) from %s", len(removed), folder)
    return removed
