"""An image model's input: ``instances`` of nested pixel lists, or PNG/JPEG files, as one float64
or uint8 batch ``(N, C, H, W)`` of the model's input shape.

Image models (a CNN on an image dataset, ``engine.augment.ImagePreprocessor``) take
``instances``: one nested list per image, ``(H, W)`` or ``(C, H, W)`` of the model's input shape,
in the dataset's own pixel values (0..255 for uint8 images: the model applies its scaling). Image
files (PNG/JPEG) are decoded by the dataset upload's own code (``app.datasets.ingest.imagezip``:
``image_size`` resizes, ``color_mode`` converts), so a file becomes the pixels a zip upload of it
would have stored. Every instance or file at fault is named in one 422.
"""

from typing import Any

import numpy as np

from app.core.config import settings
from app.core.errors import MAX_ERRORS, InvalidInput, InvalidInputs
from app.datasets.ingest.imagezip import (
    COLOR_MODES,
    image_channels,
    open_image,
    parse_image_fields,
    to_pixels,
)
from app.models.loading import Loaded
from app.models.messages import key_loc, quote, short
from app.models.rows import NUMBER, check_row_count
from engine.augment import ImagePreprocessor


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _accepted(shape: tuple[int, int, int]) -> str:
    C, H, W = shape
    return _shape_text(shape) + (f" or {_shape_text((H, W))}" if C == 1 else "")


def _innermost(value: Any, depth: int) -> list[Any]:
    """The innermost lists of a nested list ``depth`` levels deep (rows of pixels)."""
    rows = [value]
    for _ in range(depth):
        rows = [part for row in rows for part in row]
    return rows


def _pixel_types(rows: list[Any]) -> set[type]:
    types: set[type] = set()
    for row in rows:
        types.update(map(type, row))
    return types


def _image_problem(
    entry: Any, i: int, shape: tuple[int, int, int]
) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """``instances[i]`` as a float64 image ``(C, H, W)``, or the error entry saying why not."""
    C, H, W = shape
    loc: list[str | int] = ["body", "instances", i]

    def bad(code: str, msg: str) -> tuple[None, dict[str, Any]]:
        return None, {"loc": loc, "msg": f"instances[{i}]: {msg}", "type": code}

    try:
        a = np.array(entry)
    except (ValueError, OverflowError):  # rows of different lengths (or depths)
        return bad(
            "ragged_image",
            f"not a rectangular array (rows of different lengths); the model takes one image of "
            f"shape {_accepted(shape)}.",
        )
    depth = a.ndim - 1  # levels of lists above a row of pixels
    if a.ndim == 2 and C == 1:
        a = a[None]
    if a.ndim != 3:
        return bad(
            "wrong_image_shape",
            f"an array of shape {_shape_text(a.shape)}; the model takes one image of shape "
            f"{_accepted(shape)}.",
        )
    if a.shape[1:] != (H, W):
        return bad(
            "wrong_image_size",
            f"the image is {a.shape[1]}x{a.shape[2]} pixels (H x W); the model takes "
            f"{H}x{W} images.",
        )
    if a.shape[0] != C:
        return bad(
            "wrong_channels",
            f"the image has {a.shape[0]} channel(s); the model takes {C} (shape "
            f"{_accepted(shape)}).",
        )
    for row in _innermost(entry, depth):
        for value in row:
            if type(value) not in NUMBER:
                if value is None:
                    return bad("missing_value", "a pixel is null; every pixel must be a number.")
                return bad("not_numeric", f"pixels must be numbers, got {quote(value)}.")
    try:
        image = a.astype(np.float64)
    except OverflowError:
        return bad("non_finite", "a pixel is too large for a 64-bit float.")
    if not np.isfinite(image).all():
        return bad("non_finite", "a pixel is NaN or infinite; pixels must be finite numbers.")
    return image, None


def image_input(item: Loaded, key: str, batch: list[Any]) -> np.ndarray:
    """Instances as float64 images ``(N, C, H, W)``; InvalidInputs names each bad instance.

    One ``np.array`` of the whole batch when every instance is well formed (the common case);
    otherwise each instance is checked on its own, so every error names its index.
    """
    assert item.input_shape is not None
    shape = item.input_shape
    if key == "rows":
        raise InvalidInput(
            "This model takes images: send 'instances', one nested list of shape "
            f"{_accepted(shape)} per image (or POST image files to "
            f"/models/{item.id}/predict/images).",
            loc=["body", "rows"],
            code="images_need_instances",
        )
    n = len(batch)
    try:
        X = np.array(batch)
    except (ValueError, OverflowError):
        X = None
    if (
        X is not None
        and X.dtype.kind in "iuf"
        and X.shape[1:] in (shape, shape[1:] if shape[0] == 1 else shape)
        and _pixel_types(_innermost(batch, X.ndim - 1)) <= NUMBER
    ):
        X = X.astype(np.float64, copy=False).reshape(n, *shape)
        if np.isfinite(X).all():
            return X
    images: list[np.ndarray] = []
    errors: list[dict[str, Any]] = []
    for i, entry in enumerate(batch):
        image, error = _image_problem(entry, i, shape)
        if error is not None:
            errors.append(error)
            if len(errors) > MAX_ERRORS:
                break
        elif image is not None:
            images.append(image)
    if errors:
        raise InvalidInputs(errors, summary_loc=["body", "instances"])
    return np.stack(images)


def _trained_on_bytes(pre: ImagePreprocessor) -> bool:
    """Whether the model's training pixels were uint8, the values a decoded PNG/JPEG holds."""
    if pre.pixel_dtype is not None:
        return pre.pixel_dtype == "uint8"
    # Saved before pixel_dtype was recorded: uint8 pixels were scaled by 1/255 unless featurewise
    # statistics were fitted (on the raw values); scale 1 without them means float pixels.
    return pre.scale != 1.0 or pre.augmenter is not None


def decode_files(
    item: Loaded, files: list[tuple[str, bytes]], fields: dict[str, str]
) -> np.ndarray:
    """Image files as uint8 ``(N, C, H, W)`` of the model's input shape (module docstring).

    ``fields`` are the dataset upload's ``image_size`` ("H,W": resize to it, bilinear) and
    ``color_mode`` (grayscale|rgb: convert); without them a file must already have the model's
    size and channels. Every file at fault is listed, by name, in one 422.
    """
    pre = item.trained.preprocessor
    if item.input_shape is None or not isinstance(pre, ImagePreprocessor):
        raise InvalidInput(
            "This model was trained on a table, not on images; send rows or instances to "
            f"POST /models/{item.id}/predict.",
            loc=["path", "model_id"],
            code="not_an_image_model",
        )
    C, H, W = item.input_shape
    if C not in COLOR_MODES.values() or not _trained_on_bytes(pre):
        why = (
            f"takes {C}-channel images"
            if C not in COLOR_MODES.values()
            else f"was trained on {pre.pixel_dtype or 'float'} pixels"
        )
        raise InvalidInput(
            f"This model {why}, which PNG/JPEG files (1 or 3 channels of 0..255) do not hold; "
            f"send the pixel values as 'instances' to POST /models/{item.id}/predict.",
            loc=["body", "files"],
            code="images_not_decodable",
        )
    if not files:
        raise InvalidInput(
            "Send at least one image file (PNG or JPEG) in the multipart field 'files'.",
            loc=["body", "files"],
            code="empty_batch",
        )
    check_row_count(len(files), "files")
    size, channels = parse_image_fields(fields)
    if size is not None and size != (H, W):
        raise InvalidInput(
            f"image_size is {size[0]},{size[1]} but the model takes {H}x{W} images; send "
            f"'{H},{W}' (or leave it out for files of that size).",
            loc=["body", "image_size"],
            code="wrong_image_size",
        )
    if channels is not None and channels != C:
        raise InvalidInput(
            f"color_mode gives {channels} channel(s) but the model takes {C}; send "
            f"{'grayscale' if C == 1 else 'rgb'!r} (or leave it out).",
            loc=["body", "color_mode"],
            code="wrong_channels",
        )
    x = np.empty((len(files), C, H, W), dtype=np.uint8)
    errors: list[dict[str, Any]] = []
    for i, (filename, data) in enumerate(files):
        name = key_loc(filename or f"files[{i}]")

        def bad(code: str, msg: str, name: str = name) -> None:
            errors.append({"loc": ["body", "files", name], "msg": f"{name!r}: {msg}", "type": code})

        try:
            img = open_image(data)
            w, h = img.size
            mode = img.mode
        except Exception as exc:  # Pillow raises many types for bad files
            bad("corrupt_image", f"cannot be decoded as PNG or JPEG: {short(str(exc))}")
            continue
        if w * h > settings.max_image_pixels:
            bad(
                "image_too_large",
                f"{w}x{h} pixels, more than the limit of {settings.max_image_pixels} "
                "(REGULA_MAX_IMAGE_PIXELS).",
            )
        elif size is None and (h, w) != (H, W):
            bad(
                "wrong_image_size",
                f"{h}x{w} pixels (H x W) but the model takes {H}x{W} images; resize it, or "
                f"send image_size={H},{W} to resize it as the dataset upload does.",
            )
        elif channels is None and image_channels(mode) != C:
            bad(
                "wrong_channels",
                f"a {mode} image ({image_channels(mode)} channel(s)) but the model takes {C}; "
                f"send color_mode={'grayscale' if C == 1 else 'rgb'} to convert it.",
            )
        else:
            try:
                x[i] = to_pixels(img, (H, W), C)
            except Exception as exc:  # truncated or corrupt pixel data
                bad("corrupt_image", f"cannot be decoded as PNG or JPEG: {short(str(exc))}")
        if len(errors) > MAX_ERRORS:
            break
    if errors:
        raise InvalidInputs(errors, summary_loc=["body", "files"])
    return x


__all__ = ["decode_files", "image_input"]
