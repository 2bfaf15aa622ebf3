"""The profile of an image dataset: pixel range, classes with counts, a few PNG thumbnails."""

import base64
import io
from typing import Any

import numpy as np

from app.datasets.ingest.common import MAX_DISTINCT

THUMBNAILS = 4
THUMBNAIL_PX = 64
# Classes listed (with counts) in the label column's profile; ``distinct`` counts them all.
MAX_CLASSES_LISTED = 1000


def thumbnail_indices(y: np.ndarray) -> list[int]:
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


def image_summary(
    name: str, x: np.ndarray, y: np.ndarray, lo: float, hi: float, total: float, *, ignored: int
) -> dict[str, Any]:
    """The pixel column's summary: shape (C, H, W), pixel type and range, thumbnails."""
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
        "thumbnails": [thumbnail(np.asarray(x[i]), lo, hi) for i in thumbnail_indices(y)],
    }


def label_summary(name: str, y: np.ndarray) -> dict[str, Any]:
    """The label column's summary, with every class and its count."""
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
