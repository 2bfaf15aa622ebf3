"""What the JSON routers share: a route class that reports every unreadable body the same way."""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

# Bounds list offsets: SQLite integers are 64-bit, and no one pages a billion rows deep.
MAX_OFFSET = 1_000_000_000

# FastAPI answers a body json.loads cannot read for reasons other than a syntax error (bad UTF-8,
# nesting deeper than the recursion limit, an integer of more than 4300 digits) with this bare 400.
_PARSE_ERROR = "There was an error parsing the body"


def _reason(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return "it is not UTF-8"
    if isinstance(cause, RecursionError):
        return "it is nested too deeply"
    if isinstance(cause, ValueError):
        return str(cause).split(";")[0].rstrip(".")
    return "it cannot be parsed"


class JSONBodyRoute(APIRoute):
    """An APIRoute whose unreadable JSON bodies are 422 ``json_invalid`` at ``["body"]``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException as exc:
                if exc.status_code != 400 or exc.detail != _PARSE_ERROR:
                    raise
                msg = f"The body is not valid JSON: {_reason(exc.__cause__)}."
                raise RequestValidationError(
                    [{"loc": ["body"], "msg": msg, "type": "json_invalid"}]
                ) from exc

        return route_handler


def inline_schema(model: Any) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined, for an ``openapi_extra`` request body.

    A schema placed in ``openapi_extra`` is copied into the OpenAPI document as is, where local
    ``#/$defs/...`` references point nowhere (ReDoc fails to render on them).
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return dict(resolve(schema))
