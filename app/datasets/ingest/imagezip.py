"""Zips of class folders (Keras' ``image_dataset_from_directory`` layout), decoded with Pillow.

``<class>/<file>.png|jpg|jpeg``, with one shared top folder allowed; labels are the folder names.
Files that are not PNG/JPEG (by extension), hidden files and ``__MACOSX/`` are IGNORED and
counted. ``image_size`` ("H,W") resizes (bilinear, as Keras); without it all images must have one
size. ``color_mode`` (grayscale|rgb) picks 1 or 3 channels; by default grayscale if every image
is. Corrupt images are reported together (at most 50 and a summary).
"""

import io
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import MAX_ERRORS, InvalidInput, InvalidInputs, PayloadTooLarge
from app.datasets.errors import clip
from app.datasets.ingest.archive import Limits, invalid, read_member
from app.datasets.ingest.common import FILE_LOC, Ingested, megabytes
from app.datasets.ingest.profile import image_summary, label_summary

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
COLOR_MODES = {"grayscale": 1, "rgb": 3}
IMAGE_FORMATS = ("PNG", "JPEG")


def parse_image_fields(fields: dict[str, str]) -> tuple[tuple[int, int] | None, int | None]:
    """Form fields ``image_size`` ("H,W") and ``color_mode``: ((H, W) | None, 1 | 3 | None)."""
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
        raise invalid(
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
            raise invalid(
                f"The image {clip(info.filename)!r} is not inside a class folder; put each image "
                "in a folder named after its class (<class>/<image>.png).",
                "no_class_folder",
                clip(info.filename),
            )
    members = sorted(
        ((parts[0], info) for parts, info in found), key=lambda m: (m[0], m[1].filename)
    )
    return members, ignored


def open_image(data: bytes) -> Any:
    """A lazily decoded Pillow image (headers read: ``size``, ``mode``). Only PNG and JPEG are
    opened, whatever the name says (no other Pillow decoder runs on uploaded bytes); a
    decompression bomb raises instead of warning."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except UnidentifiedImageError:
            raise ValueError("not a PNG or JPEG image") from None


def image_channels(mode: str) -> int:
    """Channels an image of Pillow ``mode`` has by default: 1 for bilevel/grayscale, else 3."""
    return 1 if mode in ("1", "L") else 3


def to_pixels(img: Any, size: tuple[int, int], channels: int) -> np.ndarray:
    """An opened image decoded as uint8 ``(C, H, W)``: converted to ``channels`` (1: L, 3: RGB)
    and resized to ``size`` (H, W) with bilinear filtering (as Keras) when it is another size."""
    height, width = size
    img.load()
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (width, height):
        img = img.resize((width, height), resample=_bilinear())
    pixels = np.asarray(img, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def from_folders(
    zf: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    dest: Path,
    limits: Limits,
    fields: dict[str, str],
) -> Ingested:
    """Decode the zip's class folders into ``dest``/x.npy (N, C, H, W) uint8 and y.npy (N,)."""
    size, channels = parse_image_fields(fields)
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
        data = read_member(zf, info, limits)
        try:
            img = open_image(data)
            w, h = img.size
            headers.append((h, w, img.mode))
        except Exception as exc:  # Pillow raises many types for bad files
            problem(info, str(exc) or type(exc).__name__)
            headers.append(None)
            continue
        if w * h > limits.max_pixels:
            raise invalid(
                f"The image {clip(info.filename)!r} is {w}x{h} pixels, more than the limit of "
                f"{limits.max_pixels} (REGULA_MAX_IMAGE_PIXELS).",
                "image_too_large",
                clip(info.filename),
            )
    if problems:
        raise InvalidInputs(
            problems, code="corrupt_image", total=found[0], summary_loc=["body", "file"]
        )
    known = [(m, hd) for m, hd in zip(members, headers, strict=True) if hd is not None]
    if size is None:
        (_, first), (h0, w0, _) = known[0]
        for (_, info), (h, w, _) in known:
            if (h, w) != (h0, w0):
                raise invalid(
                    f"The images have different sizes: {clip(first.filename)!r} is {w0}x{h0}, "
                    f"{clip(info.filename)!r} is {w}x{h}; resize them or send the 'image_size' "
                    "field (e.g. '28,28').",
                    "mixed_sizes",
                    clip(info.filename),
                )
        size = (h0, w0)
    if channels is None:
        channels = max(image_channels(hd[2]) for _, hd in known)
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
    for i, (_, info) in enumerate(members):
        try:
            with zf.open(info) as f:
                img = open_image(f.read(info.file_size + 1))
            x[i] = to_pixels(img, size, channels)
        except Exception as exc:  # Pillow raises many types for bad files
            problem(info, str(exc) or type(exc).__name__)
            continue
    if problems:
        raise InvalidInputs(
            problems, code="corrupt_image", total=found[0], summary_loc=["body", "file"]
        )
    x.flush()
    labels = [cls for cls, _ in members]
    y = np.array(labels, dtype=f"<U{max(len(c) for c in labels)}")
    np.save(dest / "y.npy", y, allow_pickle=False)
    lo, hi, total = float(x.min()), float(x.max()), float(x.sum(dtype=np.float64))
    image = image_summary("image", x, y, lo, hi, total, ignored=ignored)
    return Ingested(rows=n, columns=[image, label_summary("label", y)], kind="images")


def _bilinear() -> Any:
    from PIL import Image

    return Image.Resampling.BILINEAR
