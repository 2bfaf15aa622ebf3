"""``.npz`` uploads: arrays ``x`` (N, H, W) or (N, C, H, W), uint8 or float, and ``y`` (N,).

Arrays are read with ``allow_pickle=False`` semantics: the header of each member is read first
and an object array is refused, never unpickled. ``x`` is copied in blocks into ``x.npy`` (so it
never sits whole in memory); other arrays in the archive are ignored.
"""

import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from app.core.errors import PayloadTooLarge
from app.datasets.errors import clip
from app.datasets.ingest.archive import READ_BYTES, Limits, invalid
from app.datasets.ingest.common import FILE_LOC, Ingested, megabytes
from app.datasets.ingest.profile import image_summary, label_summary


def _npy_header(f: IO[bytes], key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)
        raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as exc:
        raise invalid(
            f"Array {key!r} is not a valid .npy member: {clip(str(exc))}", "invalid_npz", key
        ) from None


def _refuse_objects(key: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise invalid(
            f"Array {key!r} holds Python objects (dtype object); only numeric or string arrays "
            "are accepted, and object arrays are never unpickled.",
            "object_array",
            key,
        )


def from_npz(zf: zipfile.ZipFile, dest: Path, limits: Limits) -> Ingested:
    """Copy the archive's ``x`` and ``y`` into ``dest``/x.npy (N, C, H, W) and y.npy (N,)."""
    members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
    for key in ("x", "y"):
        if key not in members:
            raise invalid(
                f"The .npz has no array {key!r}; save it with np.savez(path, x=images, y=labels).",
                "missing_array",
                key,
            )
    with zf.open(members["x"]) as f:
        shape, fortran, dtype = _npy_header(f, "x")
        _refuse_objects("x", dtype)
        if dtype.kind not in "uf" or (dtype.kind == "u" and dtype.itemsize != 1):
            raise invalid(
                f"Array 'x' has dtype {dtype}; images must be uint8 or float.", "invalid_dtype", "x"
            )
        if len(shape) not in (3, 4):
            raise invalid(
                f"Array 'x' has shape {shape}; expected (N, H, W) or (N, C, H, W).",
                "invalid_shape",
                "x",
            )
        if len(shape) == 4 and shape[1] not in (1, 3, 4) and shape[3] in (1, 3, 4):
            raise invalid(
                f"Array 'x' has shape {shape}, which looks channels-last (N, H, W, C); "
                "transpose it to (N, C, H, W).",
                "invalid_shape",
                "x",
            )
        if fortran:
            raise invalid(
                "Array 'x' is stored in Fortran order; save np.ascontiguousarray(x) instead.",
                "invalid_npz",
                "x",
            )
        n = shape[0]
        nchw = (n, 1, *shape[1:]) if len(shape) == 3 else tuple(shape)
        if n == 0 or 0 in nchw:
            raise invalid(f"Array 'x' has shape {shape}: no images.", "no_rows", "x")
        out_dtype = np.dtype(np.float32) if dtype == np.float16 else dtype.newbyteorder("=")
        per_image = int(np.prod(nchw[1:]))
        if n * per_image * out_dtype.itemsize > limits.max_decoded_bytes:
            raise PayloadTooLarge(
                f"Array 'x' would take more than {megabytes(limits.max_decoded_bytes)} "
                "(REGULA_MAX_DECODED_MB).",
                loc=[*FILE_LOC, "x"],
                code="decoded_too_large",
            )
        x = np.lib.format.open_memmap(dest / "x.npy", mode="w+", dtype=out_dtype, shape=nchw)
        lo, hi, total = np.inf, -np.inf, 0.0
        step = max(1, READ_BYTES * 8 // (per_image * dtype.itemsize))
        for start in range(0, n, step):
            count = min(step, n - start)
            want = count * per_image * dtype.itemsize
            data = f.read(want)
            limits.take(len(data))
            if len(data) != want:
                raise invalid("Array 'x' is truncated.", "invalid_npz", "x")
            block = np.frombuffer(data, dtype=dtype).reshape(count, *nchw[1:]).astype(out_dtype)
            if block.dtype.kind == "f" and not np.isfinite(block).all():
                bad = start + int(np.flatnonzero(~np.isfinite(block).reshape(count, -1).all(1))[0])
                raise invalid(
                    f"Array 'x', image {bad}: NaN or infinite pixel values.", "non_finite", "x"
                )
            x[start : start + count] = block
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
            total += float(block.sum(dtype=np.float64))
        x.flush()
    with zf.open(members["y"]) as f:
        _, _, ydtype = _npy_header(f, "y")
        _refuse_objects("y", ydtype)
    limits.take(members["y"].file_size)
    with zf.open(members["y"]) as f:
        try:
            y = np.lib.format.read_array(f, allow_pickle=False)
        except ValueError as exc:
            raise invalid(
                f"Array 'y' cannot be read: {clip(str(exc))}", "invalid_npz", "y"
            ) from None
    y = _labels(y)
    if len(y) != n:
        raise invalid(
            f"Arrays 'x' and 'y' disagree: {n} images but {len(y)} labels.",
            "length_mismatch",
            "y",
        )
    np.save(dest / "y.npy", y, allow_pickle=False)
    image = image_summary("x", x, y, lo, hi, total, ignored=0)
    return Ingested(rows=n, columns=[image, label_summary("y", y)], kind="images")


def _labels(y: np.ndarray) -> np.ndarray:
    """Labels as int64 or str: integral floats become ints; anything else is refused."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise invalid(f"Array 'y' has shape {y.shape}; expected (N,).", "invalid_shape", "y")
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind == "U":
        return y
    if y.dtype.kind == "f" and np.isfinite(y).all() and np.array_equal(y, np.round(y)):
        return y.astype(np.int64)
    raise invalid(
        f"Array 'y' has dtype {y.dtype}; labels must be integers or strings.", "invalid_labels", "y"
    )
