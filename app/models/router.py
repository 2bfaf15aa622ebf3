"""/models endpoints: read, delete, predict, sparsity statistics, export."""

import json
import json.encoder
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from app.core.auth import OwnerDep, current_owner
from app.core.config import settings
from app.core.db import get_sessionmaker
from app.core.deps import SessionDep
from app.core.errors import PayloadTooLarge
from app.core.routing import MAX_OFFSET, JSONBodyRoute
from app.models import prediction, service
from app.models.schemas import (
    PREDICT_EXAMPLES,
    ModelRead,
    PredictRequest,
    PredictResponse,
    SparsityRead,
)

router = APIRouter(prefix="/models", tags=["models"], route_class=JSONBodyRoute)

ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "No such model (or not yours)."}}
# Batches up to this size are predicted on the event loop: they take microseconds, and a hop to
# the thread pool would cost more than the work. Larger ones go to the pool.
INLINE_ROWS = 256


# One encoder for every response: json.dumps with non-default separators builds a new one per
# call, and JSONEncoder.encode still builds a C encoder per call. The C encoder built once writes
# the same text (no circular-reference markers: results are fresh lists). Arguments: markers,
# default, string encoder, indent, key and item separators, sort_keys, skipkeys, allow_nan.
_JSON = json.JSONEncoder(separators=(",", ":"))
_C_ENCODE = (
    None
    if json.encoder.c_make_encoder is None
    else json.encoder.c_make_encoder(
        None,
        _JSON.default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        True,
    )
)


def _encode(value: Any) -> str:
    """``json.dumps(value, separators=(",", ":"))``, the same text."""
    if _C_ENCODE is None:  # pragma: no cover - CPython has the C encoder
        return _JSON.encode(value)
    return "".join(_C_ENCODE(value, 0))


def _owner_from_db(request: Request) -> str | None:
    with get_sessionmaker(settings.database_url)() as session:
        return current_owner(request, session)


async def _owner(request: Request) -> str | None:
    # No SessionDep here: without a key (and auth off) a cached prediction touches no database.
    if not settings.auth_required and "authorization" not in request.headers:
        return None
    return await run_in_threadpool(_owner_from_db, request)


NOT_AN_OBJECT = {
    "loc": ["body"],
    "msg": "Input should be a valid dictionary or object to extract fields from",
    "type": "model_attributes_type",
}


def _is_json(content_type: str | None) -> bool:
    # FastAPI's rule: no content type, application/json or any +json type is parsed as JSON.
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and "json" in media)


def _parse_predict_body(raw: bytes, content_type: str | None) -> PredictRequest:
    """Parse and validate the body in one pass with pydantic's JSON parser.

    Faster than FastAPI's json.loads + validate, and bad UTF-8 or absurd nesting become
    ``json_invalid`` instead of a generic 400. Other errors keep FastAPI's codes and locs.
    """
    if not raw:
        raise RequestValidationError(
            [{"loc": ["body"], "msg": "Field required", "type": "missing"}]
        )
    if not _is_json(content_type):
        raise RequestValidationError([NOT_AN_OBJECT])
    try:
        return PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False, include_input=False):
            if error["type"] == "model_type":  # valid JSON, but not an object
                errors.append(NOT_AN_OBJECT)
                continue
            errors.append(
                {"loc": ["body", *error["loc"]], "msg": error["msg"], "type": error["type"]}
            )
        raise RequestValidationError(errors) from exc


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than this service's limit of {settings.max_upload_mb} MB "
        "(REGULA_MAX_UPLOAD_MB); send fewer rows per request.",
        loc=["body"],
    )


async def _read_body(request: Request) -> bytes:
    """``request.body()`` without its async generator: the usual body is one message.

    Capped at the upload limit, so a stranger cannot make the JSON parser hold gigabytes.
    """
    limit = settings.max_upload_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large()
            if not message.get("more_body", False):
                body = b"".join((*chunks, chunk)) if chunks else chunk
                request._body = body  # as request.body() caches it
                return body
            chunks.append(chunk)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


class _JSONBody(Response):
    """A 200 ``application/json`` response of ready bytes, with Response's exact headers."""

    def __init__(self, body: bytes) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [
            (b"content-length", str(len(body)).encode("latin-1")),
            (b"content-type", b"application/json"),
        ]


async def predict(model_id: str, request: Request) -> Response:
    """Predict a batch of raw rows: labels in the dataset's own values, probabilities per class."""
    # The key first: a stranger must not get the server to read, let alone parse, a body.
    owner = await _owner(request)
    body = _parse_predict_body(await _read_body(request), request.headers.get("content-type"))
    item = prediction.cached(model_id, owner)
    if item is None:
        item = await run_in_threadpool(prediction.load, model_id, owner)
    n = len(body.rows if body.rows is not None else body.instances or ())
    if n <= INLINE_ROWS:
        result = prediction.predict(item, rows=body.rows, instances=body.instances)
    else:
        result = await run_in_threadpool(
            prediction.predict, item, rows=body.rows, instances=body.instances
        )
    # Serialized by hand: the result is plain lists already, and skipping the response-model
    # round trip matters for single-row latency.
    return _JSONBody(_encode(result).encode())


class PredictRoute(APIRoute):
    """The hot path's route: ``predict`` reads its own body and has no dependencies, so requests
    skip FastAPI's parameter machinery. The route still documents itself from the signature and
    ``openapi_extra``; ``model_id`` is an opaque string, so there is nothing to convert."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        async def handler(request: Request) -> Response:
            return await predict(request.path_params["model_id"], request)

        return handler

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A POST runs ``predict`` straight away: without dependencies there is nothing for
        # request_response's two exit stacks to close, and its exception wrapper would only
        # repeat the app's ExceptionMiddleware (same handlers). Other methods get FastAPI's 405.
        if scope["method"] != "POST":
            await super().handle(scope, receive, send)
            return
        await _serve_predict(scope, receive, send)


async def _serve_predict(scope: Scope, receive: Receive, send: Send) -> None:
    response = await predict(scope["path_params"]["model_id"], Request(scope, receive, send))
    await response(scope, receive, send)


class PredictFirst(Route):
    """``POST /models/{model_id}/predict`` matched before anything else (see app.main).

    The app's router would otherwise walk the included routers and their per-inclusion route
    contexts, matching the path twice, for every request. Only POST matches here; every other
    method falls through to the documented route (and its 405). Hidden from the schema: the
    ``PredictRoute`` below documents the same operation.
    """

    def __init__(self) -> None:
        super().__init__(
            f"{router.prefix}/{{model_id}}/predict",
            endpoint=predict,
            methods=["POST"],
            include_in_schema=False,
        )

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] != "POST":
            return Match.NONE, {}
        return super().matches(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _serve_predict(scope, receive, send)


router.add_api_route(
    "/{model_id}/predict",
    predict,
    methods=["POST"],
    route_class_override=PredictRoute,
    response_model=PredictResponse,
    summary="Predict rows",
    responses={
        **ERRORS,
        413: {"description": "Too many rows in one request."},
        422: {"description": "A bad row or value; its place is in loc."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": PredictRequest.model_json_schema(),
                    "examples": PREDICT_EXAMPLES,
                }
            },
        }
    },
)


@router.get("", response_model=list[ModelRead], summary="List models, newest first")
def list_models(
    session: SessionDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[ModelRead]:
    """The caller's trained models, newest first."""
    found = service.list_(session=session, owner_id=owner, limit=limit, offset=offset)
    return [ModelRead.model_validate(service.read(model)) for model in found]


@router.get("/{model_id}", response_model=ModelRead, summary="Get a model", responses=ERRORS)
def get_model(model_id: str, session: SessionDep, owner: OwnerDep) -> ModelRead:
    """Spec, metrics, feature names and classes of one model."""
    model = service.get(session=session, model_id=model_id, owner_id=owner)
    return ModelRead.model_validate(service.read(model))


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a model",
    responses=ERRORS,
)
def delete_model(model_id: str, session: SessionDep, owner: OwnerDep) -> Response:
    """Delete a model; its job and history stay."""
    service.delete(session=session, model_id=model_id, owner_id=owner)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{model_id}/sparsity",
    response_model=SparsityRead,
    summary="Get sparsity statistics",
    responses=ERRORS,
)
def model_sparsity(
    model_id: str,
    owner: OwnerDep,
    tolerance: Annotated[
        float,
        Query(ge=0.0, allow_inf_nan=False, description="Count |w| <= tolerance as near zero."),
    ] = 0.0,
) -> dict[str, Any]:
    """Exact zeros per layer, dropped and selected features, feature importance, dead units."""
    item = prediction.load(model_id, owner)
    return prediction.sparsity(item, tolerance)


@router.get(
    "/{model_id}/export",
    summary="Download the model (npz)",
    response_class=Response,
    responses={
        **ERRORS,
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The npz bytes; load them with engine.load(data).",
        },
    },
)
def export_model(model_id: str, session: SessionDep, owner: OwnerDep) -> Response:
    """The model's weights, preprocessing and spec as npz bytes, loadable by engine.load."""
    weights = service.get_weights(session=session, model_id=model_id, owner_id=owner)
    return Response(
        content=weights,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="model-{model_id}.npz"'},
    )
