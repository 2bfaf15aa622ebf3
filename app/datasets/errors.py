"""Errors of the datasets domain that core does not define (all in the one error shape)."""

from collections.abc import Sequence
from typing import Any

from app.core.errors import InvalidInput, RegulaError

# At most this many entries in one error list (as predict does), plus one summary entry.
MAX_ERRORS = 50
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


class InvalidInputs(InvalidInput):
    """Several independent problems (corrupt images...), reported together, at most MAX_ERRORS."""

    def __init__(
        self, errors: Sequence[dict[str, Any]], *, code: str, total: int | None = None
    ) -> None:
        """``errors``: the problems found (only the first MAX_ERRORS are kept); ``total``: how
        many there were, if more than were passed in."""
        shown = list(errors[:MAX_ERRORS])
        total = max(total or 0, len(errors))
        if total > MAX_ERRORS:
            shown.append(
                {
                    "loc": ["body", "file"],
                    "msg": f"... and {total - MAX_ERRORS} more problem(s) of the same kind.",
                    "type": "too_many_errors",
                }
            )
        super().__init__(shown[0]["msg"], loc=shown[0]["loc"], code=code)
        self.errors = shown

    def detail(self) -> list[dict[str, Any]]:
        return self.errors
