"""Image adapters: an ``.npz`` of arrays ``x``/``y``, or a ``.zip`` of one folder per class.

Both are written as two ``.npy`` files in a folder, ``x.npy`` (N, C, H, W) and ``y.npy`` (N,), so
workers memory-map the pixels (``np.load(path, mmap_mode="r")``) instead of reading them whole.

- ``.npz``: ``x`` is (N, H, W) or (N, C, H, W), uint8 or float; ``y`` is (N,) integers or strings.
  Arrays are read with ``allow_pickle=False`` semantics: an object array is refused, never
  unpickled. Other arrays in the archive are ignored.
- ``.zip``: Keras' ``image_dataset_from_directory`` layout, ``<class>/<file>.png|jpg|jpeg`` (one
  shared top folder is allowed), decoded with Pillow. Labels are the folder names. Files that
  are not PNG/JPEG images (by extension), hidden files and ``__MACOSX/`` are IGNORED and counted
  (``ignored_files`` in the profile). Form field ``image_size`` ("H,W") resizes every image
  (bilinear, as Keras); without it all images must have the same size. ``color_mode``
  (grayscale|rgb) picks 1 or 3 channels; by default grayscale if every image is, else rgb.

Archives are checked as they are read: member names with ``..`` or absolute paths are refused,
and both the declared and the actual inflated sizes must stay under the upload limit (zip bombs).
"""

import base64
import io
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from app.core.errors import InvalidInput, PayloadTooLarge
from app.datasets.errors import MAX_ERRORS, InvalidInputs, clip
from app.datasets.ingest.common import FILE_LOC, MAX_DISTINCT, Ingested, megabytes
from app.datasets.ingest.spool import Spooled

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
COLOR_MODES = {"grayscale": 1, "rgb": 3}
THUMBNAILS = 4
THUMBNAIL_PX = 64
# Classes listed (with counts) in the label column's profile; ``distinct`` counts them all.
MAX_CLASSES_LISTED = 1000
READ_BYTES = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


class Limits:
    """What one image upload may inflate to (from settings, passed in by the service)."""

    def __init__(self, max_bytes: int, max_decoded_bytes: int, max_pixels: int) -> None:
        self.max_bytes = max_bytes
        self.max_decoded_bytes = max_decoded_bytes
        self.max_pixels = max_pixels
        self.inflated = 0  # bytes read out of the archive so far

    def take(self, n: int) -> None:
        self.inflated += n
        if self.inflated > self.max_bytes:
            raise _bomb(self.max_bytes)


def _bomb(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The archive inflates to more than the upload limit of {megabytes(max_bytes)} "
        "(REGULA_MAX_UPLOAD_MB).",
        loc=FILE_LOC,
        code="archive_too_large",
    )


def _invalid(msg: str, code: str, *where: str | int) -> InvalidInput:
    return InvalidInput(msg, loc=[*FILE_LOC, *where], code=code)


def _check_member_names(infos: list[zipfile.ZipInfo], limits: Limits) -> None:
    declared = 0
    for info in infos:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts or "\\" in name:
            raise _invalid(
                f"The archive member {clip(name)!r} has an absolute path or a '..' component; "
                "refusing to unpack it.",
                "unsafe_path",
                clip(name),
            )
        declared += info.file_size
    if declared > limits.max_bytes:
        raise _bomb(limits.max_bytes)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits) -> bytes:
    """The member's bytes, counted against the limit as they inflate (not trusting the header)."""
    out = bytearray()
    with zf.open(info) as f:
        while block := f.read(READ_BYTES):
            limits.take(len(block))
            out += block
            if len(out) > info.file_size:
                raise _bomb(limits.max_bytes)
    return bytes(out)


def convert_images(upload: Spooled, dest: Path, *, limits: Limits) -> Ingested:
    """Unpack the spooled ``.npz`` or class-folder ``.zip`` into ``dest`` (a new folder)."""
    try:
        zf = zipfile.ZipFile(upload.path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _invalid(
            f"The file is not a readable zip archive (truncated or corrupt?): {clip(str(exc))}",
            "invalid_archive",
        ) from None
    with zf:
        _check_member_names(infos, limits)
        dest.mkdir()
        names = {i.filename for i in infos}
        filename = (upload.filename or "").lower()
        try:
            if filename.endswith(".npz") or any(n.endswith(".npy") for n in names):
                return _from_npz(zf, dest, limits)
            return _from_folders(zf, infos, dest, limits, upload.fields)
        except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
            raise _invalid(f"The archive is corrupt: {clip(str(exc))}", "invalid_archive") from None


# --- .npz ----------------------------------------------------------------------------------------


def _npy_header(f: BinaryIO, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)
        raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as exc:
        raise _invalid(
            f"Array {key!r} is not a valid .npy member: {clip(str(exc))}", "invalid_npz", key
        ) from None


def _refuse_objects(key: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise _invalid(
            f"Array {key!r} holds Python objects (dtype object); only numeric or string arrays "
            "are accepted, and object arrays are never unpickled.",
            "object_array",
            key,
        )


def _from_npz(zf: zipfile.ZipFile, dest: Path, limits: Limits) -> Ingested:
    members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
    for key in ("x", "y"):
        if key not in members:
            raise _invalid(
                f"The .npz has no array {key!r}; save it with np.savez(path, x=images, y=labels).",
                "missing_array",
                key,
            )
    with zf.open(members["x"]) as f:
        shape, fortran, dtype = _npy_header(f, "x")
        _refuse_objects("x", dtype)
        if dtype.kind not in "uf" or (dtype.kind == "u" and dtype.itemsize != 1):
            raise _invalid(
                f"Array 'x' has dtype {dtype}; images must be uint8 or float.", "invalid_dtype", "x"
            )
        if len(shape) not in (3, 4):
            raise _invalid(
                f"Array 'x' has shape {shape}; expected (N, H, W) or (N, C, H, W).",
                "invalid_shape",
                "x",
            )
        if len(shape) == 4 and shape[1] not in (1, 3, 4) and shape[3] in (1, 3, 4):
            raise _invalid(
                f"Array 'x' has shape {shape}, which looks channels-last (N, H, W, C); "
                "transpose it to (N, C, H, W).",
                "invalid_shape",
                "x",
            )
        if fortran:
            raise _invalid(
                "Array 'x' is stored in Fortran order; save np.ascontiguousarray(x) instead.",
                "invalid_npz",
                "x",
            )
        n = shape[0]
        nchw = (n, 1, *shape[1:]) if len(shape) == 3 else tuple(shape)
        if n == 0 or 0 in nchw:
            raise _invalid(f"Array 'x' has shape {shape}: no images.", "no_rows", "x")
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
                raise _invalid("Array 'x' is truncated.", "invalid_npz", "x")
            block = np.frombuffer(data, dtype=dtype).reshape(count, *nchw[1:]).astype(out_dtype)
            if block.dtype.kind == "f" and not np.isfinite(block).all():
                bad = start + int(np.flatnonzero(~np.isfinite(block).reshape(count, -1).all(1))[0])
                raise _invalid(
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
            raise _invalid(
                f"Array 'y' cannot be read: {clip(str(exc))}", "invalid_npz", "y"
            ) from None
    y = _labels(y)
    if len(y) != n:
        raise _invalid(
            f"Arrays 'x' and 'y' disagree: {n} images but {len(y)} labels.",
            "length_mismatch",
            "y",
        )
    np.save(dest / "y.npy", y, allow_pickle=False)
    image = _image_summary("x", x, y, lo, hi, total, ignored=0)
    return Ingested(rows=n, columns=[image, _label_summary("y", y)], kind="images")


def _labels(y: np.ndarray) -> np.ndarray:
    """Labels as int64 or str: integral floats become ints; anything else is refused."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise _invalid(f"Array 'y' has shape {y.shape}; expected (N,).", "invalid_shape", "y")
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind == "U":
        return y
    if y.dtype.kind == "f" and np.isfinite(y).all() and np.array_equal(y, np.round(y)):
        return y.astype(np.int64)
    raise _invalid(
        f"Array 'y' has dtype {y.dtype}; labels must be integers or strings.", "invalid_labels", "y"
    )


# --- .zip of class folders -----------------------------------------------------------------------


def _parse_fields(fields: dict[str, str]) -> tuple[tuple[int, int] | None, int | None]:
    size = None
    if "image_size" in fields:
        parts = fields["image_size"].replace(" ", "").split(",")
        if len(parts) != 2 or not all(p.isdigit() and 1 <= int(p) <= 4096 for p in parts):
            raise InvalidInput(
                "The 'image_size' field must be 'height,width' with each 1 to 4096, e.g. '28,28'.",
                loc=["body", "image_size"],
                code="invalid_image_size",
            )
        size = (int(parts[0]), int(parts[1]))
    channels = None
    if "color_mode" in fields:
        mode = fields["color_mode"].lower()
        if mode not in COLOR_MODES:
            raise InvalidInput(
                "The 'color_mode' field must be 'grayscale' or 'rgb'.",
                loc=["body", "color_mode"],
                code="invalid_color_mode",
            )
        channels = COLOR_MODES[mode]
    return size, channels


def _image_members(
    infos: list[zipfile.ZipInfo],
) -> tuple[list[tuple[str, zipfile.ZipInfo]], int]:
    """(class, member) of every image, sorted by class then name; and how many were ignored."""
    found: list[tuple[list[str], zipfile.ZipInfo]] = []
    ignored = 0
    for info in infos:
        if info.is_dir():
            continue
        parts = info.filename.split("/")
        hidden = any(p.startswith(".") for p in parts) or parts[0] == "__MACOSX"
        if hidden or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
            ignored += 1
            continue
        found.append((parts, info))
    if not found:
        raise _invalid(
            "The zip holds no PNG or JPEG images; expected one folder per class "
            "(<class>/<image>.png), or an .npz with arrays x and y.",
            "no_images",
        )
    # One top folder around the class folders (zipping the dataset's folder) is allowed.
    tops = {tuple(parts[:1]) for parts, _ in found}
    if len(tops) == 1 and all(len(parts) >= 3 for parts, _ in found):
        found = [(parts[1:], info) for parts, info in found]
    for parts, info in found:
        if len(parts) < 2:
            raise _invalid(
                f"The image {clip(info.filename)!r} is not inside a class folder; put each image "
                "in a folder named after its class (<class>/<image>.png).",
                "no_class_folder",
                clip(info.filename),
            )
    members = sorted(
        ((parts[0], info) for parts, info in found), key=lambda m: (m[0], m[1].filename)
    )
    return members, ignored


def _open_image(data: bytes) -> Any:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _from_folders(
    zf: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    dest: Path,
    limits: Limits,
    fields: dict[str, str],
) -> Ingested:
    size, channels = _parse_fields(fields)
    members, ignored = _image_members(infos)
    problems: list[dict[str, Any]] = []  # the first MAX_ERRORS problems found
    found = [0]  # how many there are

    def problem(info: zipfile.ZipInfo, why: str) -> None:
        found[0] += 1
        if len(problems) >= MAX_ERRORS:
            return
        problems.append(
            {
                "loc": [*FILE_LOC, clip(info.filename)],
                "msg": f"The image {clip(info.filename)!r} cannot be decoded: {clip(why)}.",
                "type": "corrupt_image",
            }
        )

    # Pass 1: headers only (size, mode), with every byte counted against the limit.
    headers: list[tuple[int, int, str] | None] = []
    for _, info in members:
        data = _read_member(zf, info, limits)
        try:
            img = _open_image(data)
            w, h = img.size
            headers.append((h, w, img.mode))
        except Exception as exc:  # Pillow raises many types for bad files
            problem(info, str(exc) or type(exc).__name__)
            headers.append(None)
            continue
        if w * h > limits.max_pixels:
            raise _invalid(
                f"The image {clip(info.filename)!r} is {w}x{h} pixels, more than the limit of "
                f"{limits.max_pixels} (REGULA_MAX_IMAGE_PIXELS).",
                "image_too_large",
                clip(info.filename),
            )
    if problems:
        raise InvalidInputs(problems, code="corrupt_image", total=found[0])
    known = [(m, hd) for m, hd in zip(members, headers, strict=True) if hd is not None]
    if size is None:
        (_, first), (h0, w0, _) = known[0]
        for (_, info), (h, w, _) in known:
            if (h, w) != (h0, w0):
                raise _invalid(
                    f"The images have different sizes: {clip(first.filename)!r} is {w0}x{h0}, "
                    f"{clip(info.filename)!r} is {w}x{h}; resize them or send the 'image_size' "
                    "field (e.g. '28,28').",
                    "mixed_sizes",
                    clip(info.filename),
                )
        size = (h0, w0)
    if channels is None:
        channels = 1 if all(hd[2] in ("1", "L") for _, hd in known) else 3
    n, (height, width) = len(members), size
    if n * channels * height * width > limits.max_decoded_bytes:
        raise PayloadTooLarge(
            f"The decoded images would take more than {megabytes(limits.max_decoded_bytes)} "
            "(REGULA_MAX_DECODED_MB).",
            loc=FILE_LOC,
            code="decoded_too_large",
        )
    # Pass 2: decode, convert, resize, store.
    x = np.lib.format.open_memmap(
        dest / "x.npy", mode="w+", dtype=np.uint8, shape=(n, channels, height, width)
    )
    mode = "L" if channels == 1 else "RGB"
    for i, (_, info) in enumerate(members):
        try:
            with zf.open(info) as f:
                img = _open_image(f.read(info.file_size + 1))
            img.load()
            img = img.convert(mode)
            if img.size != (width, height):
                img = img.resize((width, height), resample=_bilinear())
        except Exception as exc:  # Pillow raises many types for bad files
            problem(info, str(exc) or type(exc).__name__)
            continue
        pixels = np.asarray(img, dtype=np.uint8)
        x[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    if problems:
        raise InvalidInputs(problems, code="corrupt_image", total=found[0])
    x.flush()
    labels = [cls for cls, _ in members]
    y = np.array(labels, dtype=f"<U{max(len(c) for c in labels)}")
    np.save(dest / "y.npy", y, allow_pickle=False)
    lo, hi, total = float(x.min()), float(x.max()), float(x.sum(dtype=np.float64))
    image = _image_summary("image", x, y, lo, hi, total, ignored=ignored)
    return Ingested(rows=n, columns=[image, _label_summary("label", y)], kind="images")


def _bilinear() -> Any:
    from PIL import Image

    return Image.Resampling.BILINEAR


# --- profile ------------------------------------------------------------------------------


def _thumbnail_indices(y: np.ndarray) -> list[int]:
    """The first image of each class (up to THUMBNAILS), then the next images."""
    _, first = np.unique(y, return_index=True)
    picked = sorted(int(i) for i in first)[:THUMBNAILS]
    for i in range(len(y)):
        if len(picked) >= THUMBNAILS:
            break
        if i not in picked:
            picked.append(i)
    return picked


def thumbnail(image: np.ndarray, lo: float, hi: float) -> str:
    """One image (C, H, W) as a small PNG data URI, pixels scaled from [lo, hi] to 0..255."""
    from PIL import Image

    if image.dtype != np.uint8:
        span = hi - lo if hi > lo else 1.0
        image = np.clip((image.astype(np.float64) - lo) / span * 255.0, 0, 255).astype(np.uint8)
    channels = image.shape[0]
    if channels in (3, 4):
        img = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    else:
        img = Image.fromarray(np.ascontiguousarray(image[0]))
    img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_summary(
    name: str, x: np.ndarray, y: np.ndarray, lo: float, hi: float, total: float, *, ignored: int
) -> dict[str, Any]:
    return {
        "name": name,
        "dtype": "image",
        "missing": 0,
        "min": lo,
        "max": hi,
        "mean": total / x.size,
        "max_abs": max(abs(lo), abs(hi)),
        "distinct": None,
        "distinct_capped": False,
        "shape": list(x.shape[1:]),
        "pixel_dtype": str(x.dtype),
        "ignored_files": ignored,
        "thumbnails": [thumbnail(np.asarray(x[i]), lo, hi) for i in _thumbnail_indices(y)],
    }


def _label_summary(name: str, y: np.ndarray) -> dict[str, Any]:
    values, counts = np.unique(y, return_counts=True)
    number = y.dtype.kind != "U"
    summary: dict[str, Any] = {
        "name": name,
        "dtype": "number" if number else "string",
        "missing": 0,
        "min": float(values[0]) if number else None,
        "max": float(values[-1]) if number else None,
        "mean": float(y.mean()) if number else None,
        "max_abs": float(max(abs(values[0]), abs(values[-1]))) if number else None,
        "distinct": min(len(values), MAX_DISTINCT),
        "distinct_capped": len(values) > MAX_DISTINCT,
        "classes": [
            {"value": v.item(), "count": int(c)}
            for v, c in zip(values[:MAX_CLASSES_LISTED], counts[:MAX_CLASSES_LISTED], strict=True)
        ],
    }
    return summary
