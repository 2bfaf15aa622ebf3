"""Datasets: create from an upload, list, get, delete, load for training, collect garbage.

A dataset is a file under ``<data_dir>/datasets/`` plus a row in ``datasets``: a Parquet file
``<id>.parquet`` for a table, a folder ``<id>/`` holding ``x.npy`` and ``y.npy`` for images.
``create`` is the whole upload lifecycle: spool the body, convert it to a temporary file, fsync,
rename it into place, and only then commit the row; on any failure there is no row and no file.
A crash leaves at worst a file without a row, which ``gc_orphans`` removes.

While an upload is in flight its process holds an exclusive ``flock`` on ``.<id>.lock``; the
collector skips the files of ids whose lock is held, so a restarting API process never deletes
the upload of another process sharing the data volume, yet removes a crashed one's at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
from app.core.db import new_id, rowcount
from app.core.errors import InvalidInput, NotFound
from app.core.ownership import owned
from app.datasets import ingest
from app.datasets.errors import StorageUnavailable
from app.datasets.ingest import pool
from app.datasets.ingest.common import disk_full, is_disk_full
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
    """An upload in flight: its lock (held), spool, and temporary Parquet file / image folder."""

    dataset_id: str
    lock: Path
    lock_fd: int
    spool: Path
    parquet: Path
    images: Path


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
        spool=folder / f".{dataset_id}.upload.part",
        parquet=folder / f".{dataset_id}.parquet.part",
        images=folder / f".{dataset_id}.npy.part",
    )


def _remove(path: Path) -> None:
    """Remove a file or a folder; a missing one is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def release(files: NewFiles) -> None:
    """End an upload: remove its temporary files and its lock (a committed file stays)."""
    for path in (files.spool, files.parquet, files.images):
        with contextlib.suppress(OSError):
            _remove(path)
    files.lock.unlink(missing_ok=True)
    os.close(files.lock_fd)


def _fsync(path: Path, *, contents: bool = True) -> None:
    """Flush a file, or a folder (with its files unless ``contents`` is False), to disk."""
    paths = [*sorted(path.iterdir()), path] if contents and path.is_dir() else [path]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _convert(upload: ingest.Spooled, files: NewFiles) -> ingest.Ingested:
    limits = ingest.Limits(
        settings.max_upload_bytes, settings.max_decoded_bytes, settings.max_image_pixels
    )
    return ingest.convert(
        upload,
        table=files.parquet,
        images=files.images,
        max_columns=settings.max_columns,
        limits=limits,
    )


def _commit(
    *,
    session: Session,
    upload: ingest.Spooled,
    ingested: ingest.Ingested,
    files: NewFiles,
    owner_id: str | None,
    data_dir: Path | None,
) -> Dataset:
    """fsync the converted file, rename it into place, then commit the dataset's row."""
    images = ingested.kind == "images"
    relative = f"{SUBDIR}/{files.dataset_id}" + ("" if images else ".parquet")
    temporary = files.images if images else files.parquet
    final = Path(data_dir if data_dir is not None else settings.data_dir) / relative
    try:
        # The row must never point at a file a power cut could lose.
        _fsync(temporary)
        os.replace(temporary, final)
        _fsync(final.parent, contents=False)  # the rename itself
        row = Dataset(
            id=files.dataset_id,
            owner_id=owner_id,
            name=upload.name or upload.filename or "dataset",
            path=relative,
            rows=ingested.rows,
            size_bytes=upload.size,
            columns=ingested.columns,
        )
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        _remove(final)
        raise
    return row


async def create(
    *,
    session: Session,
    body: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
    owner_id: str | None,
    disconnected: Callable[[], Awaitable[bool]] | None = None,
    data_dir: Path | None = None,
) -> Dataset:
    """Store an upload: spool -> convert to a temporary file -> fsync -> rename -> commit the row.

    Every blocking step runs in the datasets pool. On any failure (bad input, a client that went
    away or stalled, a full disk) there is no row and no file. ``disconnected`` is asked once
    more before the commit: an upload whose client is gone is not stored.
    """
    files = await pool.run(new_files, data_dir)
    try:
        upload = await ingest.spool_multipart(
            body,
            content_type=content_type,
            content_length=content_length,
            dest=files.spool,
            max_bytes=settings.max_upload_bytes,
            read_timeout=settings.body_read_timeout_seconds,
        )
        ingested = await pool.run(_convert, upload, files)
        if disconnected is not None and await disconnected():
            raise InvalidInput(
                "The client disconnected before the upload was stored; nothing was kept.",
                loc=["body"],
                code="disconnected",
            )
        return await pool.run(
            _commit,
            session=session,
            upload=upload,
            ingested=ingested,
            files=files,
            owner_id=owner_id,
            data_dir=data_dir,
        )
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full() from None
        raise
    finally:
        await pool.run(release, files)


def list_(
    *, session: Session, owner_id: str | None, limit: int = 100, offset: int = 0
) -> list[Dataset]:
    """The owner's datasets, newest first."""
    stmt = owned(select(Dataset), Dataset.owner_id, owner_id)
    stmt = stmt.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit).offset(offset)
    return [*session.scalars(stmt)]


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


def _trash(path: Path, dataset_id: str) -> Path:
    return path.with_name(f".{dataset_id}.deleted")


def delete(
    *, session: Session, dataset_id: str, owner_id: str | None, data_dir: Path | None = None
) -> None:
    """Delete a dataset: move its file aside, delete the row, then remove the file.

    If the file cannot be moved, nothing changes (503, the row stays and still works). Once the
    row is deleted, the answer is success even if removing the moved file fails: it no longer
    belongs to any row, and ``gc_orphans`` removes it later. A crash between the move and the
    commit leaves the row with its file moved aside; ``gc_orphans`` moves it back.
    """
    path = path_of(get(session=session, dataset_id=dataset_id, owner_id=owner_id), data_dir)
    trash = _trash(path, dataset_id)
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        pass  # already gone (or a concurrent delete moved it): only the row remains
    except OSError as exc:
        log.warning("cannot move dataset %s aside for deletion: %s", dataset_id, exc)
        raise StorageUnavailable(
            f"The dataset's file cannot be removed right now ({exc.strerror or 'storage error'}); "
            "nothing was deleted. Try again later.",
            loc=["path", "dataset_id"],
        ) from None
    # One conditional DELETE: of concurrent deletes of the same dataset exactly one succeeds.
    stmt = owned(sql_delete(Dataset).where(Dataset.id == dataset_id), Dataset.owner_id, owner_id)
    try:
        result = session.execute(stmt.execution_options(synchronize_session=False))
        session.commit()
    except BaseException:
        session.rollback()
        with contextlib.suppress(OSError):
            os.replace(trash, path)  # the row stays, so its file must be back in place
        raise
    if rowcount(result) != 1:
        raise _not_found(dataset_id)
    try:
        _remove(trash)
    except OSError as exc:
        log.warning("dataset %s deleted; its file is left for the collector: %s", dataset_id, exc)


def path_of(dataset: Dataset, data_dir: Path | None = None) -> Path:
    """Absolute path of the dataset's Parquet file (a table) or folder (images)."""
    return Path(data_dir if data_dir is not None else settings.data_dir) / dataset.path


def load_table(
    dataset: Dataset, *, data_dir: Path | None = None, columns: list[str] | None = None
) -> dict[str, np.ndarray]:
    """The dataset as {column: 1-D array}: numbers float64 with NaN, strings object with None.

    ``columns`` selects (and orders) columns; names the file does not have are left out, so the
    caller can report them. Raises FileNotFoundError if the file is gone, ValueError for an
    image dataset (use ``load_images``).
    """
    if dataset.kind == "images":
        raise ValueError(f"dataset {dataset.id} holds images; load it with load_images")
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
            # Casts and fills only where needed: a float64 column without nulls is read as is.
            if col.type != pa.float64():
                col = pc.cast(col, pa.float64())
            if col.null_count:
                col = pc.fill_null(col, np.nan)
            out[name] = col.to_numpy()
    return out


def load_images(dataset: Dataset, data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An image dataset as (x, y): x (N, C, H, W) memory-mapped read-only (uint8 or float),
    y (N,) labels (int64 or str). Raises FileNotFoundError if the files are gone, ValueError for
    a table dataset (use ``load_table``)."""
    if dataset.kind != "images":
        raise ValueError(f"dataset {dataset.id} is a table; load it with load_table")
    folder = path_of(dataset, data_dir)
    x = np.load(folder / "x.npy", mmap_mode="r", allow_pickle=False)
    y = np.load(folder / "y.npy", allow_pickle=False)
    return x, y


def _dataset_id_of(name: str) -> str:
    # "<id>.parquet", "<id>", ".<id>.parquet.part", ".<id>.npy.part", ".<id>.deleted" -> "<id>"
    return name.lstrip(".").split(".", 1)[0]


def gc_orphans(*, session: Session, data_dir: Path, min_age_seconds: float = 0.0) -> list[Path]:
    """Remove files in the datasets folder that no row references; returns what was removed.

    Covers interrupted uploads (lock, spool, ``.part`` files and folders), files whose row was
    never committed, and files whose row was deleted. Uploads in flight (lock held) are left
    alone; a file a crashed delete moved aside while its row survived is moved back.
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
            if path.name not in known and path.stat().st_mtime <= cutoff:
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
            row = session.get(Dataset, dataset_id)
            if row is not None:
                final = folder / Path(row.path).name
                paths = [p for p in paths if p != final]
                trash = _trash(final, dataset_id)
                if trash in paths and not final.exists():
                    os.replace(trash, final)
                    paths.remove(trash)
            # The lock file goes last, while still held.
            for path in sorted(paths, key=lambda p: p == lock):
                with contextlib.suppress(FileNotFoundError):
                    _remove(path)
                    removed.append(path)
        finally:
            if fd is not None:
                os.close(fd)
    if removed:
        log.info("removed %d orphaned dataset file(s) from %s", len(removed), folder)
    return removed
