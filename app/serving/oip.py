"""Open Inference Protocol v2 (KServe / Triton REST): health, metadata and infer under /v2.

Inputs of ``POST /v2/models/{id}/infer``: one tensor per feature, named after it, of shape
``[N]`` or ``[N, 1]`` (FP32/FP64 or an integer type for numeric features, BYTES for string ones;
features whose weights are all zero may be left out), or, for an all-numeric model, one FP32/FP64
tensor named ``input`` of shape ``[N, n_features]`` in ``feature_names`` order. Outputs:
``label`` [N] (BYTES, INT64, FP64 or BOOL, as the classes are) and ``probabilities`` [N, C]
(classifiers with a likelihood loss; classes in ``parameters.classes`` of the metadata), or
``predictions`` [N] FP64 (regression). Tensors travel as JSON ``data`` or, with the
binary_tensor_data extension, as bytes after the JSON header (``Inference-Header-Content-Length``,
``parameters.binary_data_size``; ask for binary outputs with ``parameters.binary_data`` on an
output or ``parameters.binary_data_output`` on the request).

Versions: a model has one, ``"1"`` (``versions`` of its metadata); ``/v2/models/{id}/versions/1``
(and its ``/ready`` and ``/infer``) answer as the unversioned routes, any other version is 404.

Auth: the rules of every other model route (``Authorization: Bearer <key>`` when
``REGULA_AUTH_REQUIRED``; a model is visible only to the key that trained it); the health and
server-metadata routes take no key. Errors: ``{"error": "<sentence>"}`` with 400 (bad request),
401, 404 (no such model, or not yours), 413 (too large) or 500 (corrupt weights).
"""

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import text

from app.core.auth import OwnerDep, sessions_for
from app.core.bodies import INLINE_PARSE_BYTES, NumpyJSONResponse, read_prediction_body
from app.core.routing import inline_schema
from app.models import loading, prediction
from app.models.rows import check_key_density
from app.serving import service
from app.serving.routing import protocol_route
from app.serving.schemas import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ProtocolError,
    ServerMetadata,
)


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error": message}


router = APIRouter(prefix="/v2", tags=["inference protocol v2"], route_class=protocol_route(_error))

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ProtocolError, "description": "A bad request; the sentence says what."},
    404: {"model": ProtocolError, "description": "No such model (or not yours)."},
}


# Infer first: routes are tried in order (see app.main), and infer is the hot one.
INFER: dict[str, Any] = {
    "response_model": InferResponse,
    "responses": {
        **ERRORS,
        200: {
            "content": {"application/octet-stream": {}},
            "description": "JSON, or (binary outputs) a JSON header of "
            "Inference-Header-Content-Length bytes followed by the output tensors' bytes.",
        },
        413: {
            "model": ProtocolError,
            "description": "The body is larger than "
            "REGULA_MAX_PREDICT_MB, or more rows than REGULA_MAX_PREDICT_ROWS.",
        },
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": inline_schema(InferRequest)},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                },
            },
        }
    },
}


async def _infer(item: loading.Loaded, request: Request) -> Response:
    raw = await read_prediction_body(request)
    header = request.headers.get(service.HEADER_LENGTH)
    if len(raw) <= INLINE_PARSE_BYTES:
        decoded = service.decode_infer(item, raw, header)
    else:
        # Only the JSON part counts: binary tensor data follows the header's length in bytes.
        json_part = raw[: int(header)] if header is not None and header.isdigit() else raw
        check_key_density(json_part)
        decoded = await run_in_threadpool(service.decode_infer, item, raw, header)
    result = await prediction.run(
        item, rows=decoded.rows, instances=decoded.instances, body_bytes=len(raw)
    )
    body, headers, media = service.encode_infer(item, decoded, result)
    return Response(body, headers=headers, media_type=media)


@router.post("/models/{model_id}/infer", summary="Infer", **INFER)
async def infer(model_id: str, request: Request, owner: OwnerDep) -> Response:
    """Predict a batch of tensors: labels and probabilities, or regression values."""
    return await _infer(await service.get_loaded(request, model_id, owner), request)


@router.post("/models/{model_id}/versions/{version}/infer", summary="Infer (one version)", **INFER)
async def version_infer(model_id: str, version: str, request: Request, owner: OwnerDep) -> Response:
    """``POST /v2/models/{id}/infer`` when ``version`` is one of the model's ``versions``."""
    item = await service.get_loaded(request, model_id, owner, version=version)
    return await _infer(item, request)


@router.get("", response_model=ServerMetadata, summary="Server metadata")
def server_metadata() -> dict[str, Any]:
    """Name, version and the protocol extensions supported (binary_tensor_data)."""
    return service.server_metadata()


@router.get("/health/live", summary="Server liveness")
def live() -> dict[str, Any]:
    """200 while the process serves HTTP."""
    return {"live": True}


@router.get("/health/ready", summary="Server readiness", responses={503: {"model": ProtocolError}})
def ready(request: Request) -> Response:
    """200 once the database answers; 503 otherwise."""
    try:
        with sessions_for(request)() as session:
            session.execute(text("SELECT 1"))
    except Exception:  # any database failure: not ready (the reason goes to the log only)
        service.log.warning("v2 readiness: the database does not answer", exc_info=True)
        return NumpyJSONResponse({"error": "The database does not answer."}, status_code=503)
    return NumpyJSONResponse({"ready": True})


@router.get(
    "/models/{model_id}",
    response_model=ModelMetadata,
    summary="Model metadata",
    responses=ERRORS,
)
async def model_metadata(model_id: str, request: Request, owner: OwnerDep) -> Response:
    """Inputs (one [N, 1] tensor per feature a prediction reads), outputs and classes."""
    item = await service.get_loaded(request, model_id, owner)
    return NumpyJSONResponse(service.model_metadata(item))


@router.get(
    "/models/{model_id}/versions/{version}",
    response_model=ModelMetadata,
    summary="Model metadata (one version)",
    responses=ERRORS,
)
async def version_metadata(
    model_id: str, version: str, request: Request, owner: OwnerDep
) -> Response:
    """The model's metadata when ``version`` is one of its ``versions``; 404 otherwise."""
    item = await service.get_loaded(request, model_id, owner, version=version)
    return NumpyJSONResponse(service.model_metadata(item))


@router.get("/models/{model_id}/ready", summary="Model readiness", responses=ERRORS)
async def model_ready(model_id: str, request: Request, owner: OwnerDep) -> dict[str, Any]:
    """200 when the model is loaded (it is loaded now if it was not), 404 if there is none."""
    item = await service.get_loaded(request, model_id, owner)
    return {"name": item.id, "ready": True}


@router.get(
    "/models/{model_id}/versions/{version}/ready",
    summary="Model readiness (one version)",
    responses=ERRORS,
)
async def version_ready(
    model_id: str, version: str, request: Request, owner: OwnerDep
) -> dict[str, Any]:
    """200 when the model is loaded and has ``version``; 404 otherwise."""
    item = await service.get_loaded(request, model_id, owner, version=version)
    return {"name": item.id, "version": version, "ready": True}
