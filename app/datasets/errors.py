"""Errors of the datasets domain that core does not define (all in the one error shape)."""

from app.core.errors import RegulaError

# Strings echoed back in a message (column names, file names) are cut to this many characters.
MAX_ECHO_CHARS = 80


def clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when something was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RequestTimeout(RegulaError):
    """The client stopped sending the request body (408)."""

    status_code = 408
    code = "body_timeout"


class InsufficientStorage(RegulaError):
    """The data volume is full (507); nothing was stored."""

    status_code = 507
    code = "insufficient_storage"


class StorageUnavailable(RegulaError):
    """A stored file cannot be changed right now (503); nothing was changed."""

    status_code = 503
    code = "storage_unavailable"
