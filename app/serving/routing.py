"""A route class answering errors in a serving protocol's own body instead of ``{"detail"}``."""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from app.core.errors import RegulaError
from app.serving.service import error_message, error_status

ErrorBody = Callable[[int, str], dict[str, Any]]


def protocol_route(body: ErrorBody) -> type[APIRoute]:
    """An APIRoute class whose errors (auth and path checks included: dependencies run inside the
    route handler) are ``body(status, message)`` with the protocol's status codes."""

    class ProtocolRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route_handler(request: Request) -> Response:
                try:
                    return await handler(request)
                except RegulaError as exc:
                    status = error_status(exc)
                    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
                    return JSONResponse(
                        body(status, error_message(exc)), status_code=status, headers=headers
                    )
                except RequestValidationError as exc:
                    first = exc.errors()[0] if exc.errors() else {}
                    where = ".".join(str(p) for p in first.get("loc", ()))[:80]
                    msg = f"{where}: {str(first.get('msg', 'invalid request'))[:200]}."
                    return JSONResponse(body(400, msg), status_code=400)

            return route_handler

    return ProtocolRoute
