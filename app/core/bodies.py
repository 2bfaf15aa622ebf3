"""Request bodies read with a byte cap, and JSON answers written by orjson: what the prediction
routes (``/models/{id}/predict``, OIP v2 infer, MLflow invocations) share."""

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse

from app.core.config import settings
from app.core.errors import PayloadTooLarge

# Bodies up to this size are parsed on the event loop (microseconds); larger ones in the thread
# pool, so a big body never holds the loop.
INLINE_PARSE_BYTES = 64 * 1024


class NumpyJSONResponse(JSONResponse):
    """``application/json`` written by orjson, NumPy arrays included (no ``tolist`` round trip)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


async def read_capped(request: Request, limit: int, too_large: Callable[[], Exception]) -> bytes:
    """The body, refused with ``too_large()`` past ``limit`` bytes: by Content-Length before
    reading, and while reading a body sent without one (chunked)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        if int(length) > limit:
            raise too_large()
        return await request.body()  # the server never hands over more than Content-Length
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def prediction_too_large() -> PayloadTooLarge:
    """The 413 of a prediction body past REGULA_MAX_PREDICT_MB."""
    return PayloadTooLarge(
        f"The request body is larger than the {settings.max_predict_mb} MB a prediction may "
        "send (REGULA_MAX_PREDICT_MB); send fewer rows per request.",
        loc=["body"],
    )


async def read_prediction_body(request: Request) -> bytes:
    """The raw body of a prediction request, capped at REGULA_MAX_PREDICT_MB (413 past it)."""
    return await read_capped(request, settings.max_predict_bytes, prediction_too_large)
