"""Domain errors and the one handler that turns every error into FastAPI's 422 shape.

Every error body is ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``: ``type`` is a
stable machine-readable code, ``msg`` a sentence naming the field or row at fault.
"""

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("regula")


class RegulaError(Exception):
    """Base of the errors services raise; routers never build HTTP errors themselves."""

    status_code = 400
    code = "bad_request"

    def __init__(self, msg: str, *, loc: Sequence[str | int] = (), code: str | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.loc = list(loc)
        if code is not None:
            self.code = code

    def detail(self) -> list[dict[str, Any]]:
        return [{"loc": self.loc, "msg": self.msg, "type": self.code}]


class NotFound(RegulaError):
    status_code = 404
    code = "not_found"


class Conflict(RegulaError):
    status_code = 409
    code = "conflict"


class InvalidInput(RegulaError):
    status_code = 422
    code = "invalid"


# At most this many entries in one error list, plus one summary entry: a request with 300,000
# bad values gets a short answer.
MAX_ERRORS = 50


class InvalidInputs(InvalidInput):
    """Several problems reported together (every failing field, row or file), at most MAX_ERRORS.

    ``errors`` are ``{"loc", "msg", "type"}`` entries; past MAX_ERRORS one summary entry at
    ``summary_loc`` says how many more there were (``total``, when the caller counted them).
    """

    def __init__(
        self,
        errors: Sequence[dict[str, Any]],
        *,
        code: str | None = None,
        total: int | None = None,
        summary_loc: Sequence[str | int] = ("body",),
    ) -> None:
        shown = list(errors[:MAX_ERRORS])
        if total is not None and total > MAX_ERRORS:
            more = f"... and {total - MAX_ERRORS} more problem(s) of the same kind"
        elif len(errors) > MAX_ERRORS:
            more = "More problems"
        else:
            more = ""
        if more:
            shown.append(
                {
                    "loc": list(summary_loc),
                    "msg": f"{more} are not listed: only the first {MAX_ERRORS} are reported.",
                    "type": "too_many_errors",
                }
            )
        first = shown[0]
        super().__init__(first["msg"], loc=first["loc"], code=code or first["type"])
        self.errors = shown

    def detail(self) -> list[dict[str, Any]]:
        return self.errors


class PayloadTooLarge(RegulaError):
    status_code = 413
    code = "too_large"


class UnsupportedMediaType(RegulaError):
    status_code = 415
    code = "unsupported_media_type"


class TooManyJobs(RegulaError):
    """A per-key quota is exhausted; ``retry_after`` seconds is a fair time to wait."""

    status_code = 429
    code = "too_many_jobs"

    def __init__(self, msg: str, *, loc: Sequence[str | int] = (), retry_after: int) -> None:
        super().__init__(msg, loc=loc)
        self.retry_after = retry_after


class Unauthorized(RegulaError):
    status_code = 401
    code = "unauthorized"


def _error_response(
    status_code: int, detail: list[dict[str, Any]], headers: Any = None
) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"detail": detail}, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route domain errors, HTTP errors and unexpected exceptions through one JSON shape."""

    @app.exception_handler(RegulaError)
    async def _regula_error(_request: Request, exc: RegulaError) -> JSONResponse:
        headers = None
        if exc.status_code == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(exc, TooManyJobs):
            headers = {"Retry-After": str(exc.retry_after)}
        return _error_response(exc.status_code, exc.detail(), headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return _error_response(
            exc.status_code, [{"loc": [], "msg": msg, "type": code}], getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own shape, minus the echoed input (which may be a large or binary payload).
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return _error_response(422, detail)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _error_response(
            500, [{"loc": [], "msg": "Internal server error.", "type": "internal_error"}]
        )
