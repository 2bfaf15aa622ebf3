"""/models endpoints: read, delete, predict, sparsity statistics, weights, export."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.core.auth import OwnerDep, sessions_for
from app.core.bodies import (
    INLINE_PARSE_BYTES,
    NumpyJSONResponse,
    read_prediction_body,
)
from app.core.config import settings
from app.core.deps import SessionDep
from app.core.errors import MAX_ERRORS, InvalidInput, UnsupportedMediaType
from app.core.routing import MAX_OFFSET, JSONBodyRoute, inline_schema
from app.models import loading, prediction, service
from app.models.rows import check_key_density
from app.models.schemas import (
    PREDICT_EXAMPLES,
    LayerWeights,
    ModelRead,
    PredictRequest,
    PredictResponse,
    SparsityRead,
)

router = APIRouter(prefix="/models", tags=["models"], route_class=JSONBodyRoute)

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such model (or not yours)."}}
# Everything that reads the stored weights.
ERRORS: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    500: {"description": "The model's stored weights are corrupt (`model_corrupt`)."},
}

NOT_AN_OBJECT: dict[str, Any] = {
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


def _parse(raw: bytes) -> PredictRequest:
    """Validate the body with pydantic's JSON parser; errors in FastAPI's codes and locs.

    Bad UTF-8 or absurd nesting become ``json_invalid`` instead of a generic 400.
    """
    try:
        return PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = []
        for error in exc.errors(include_url=False, include_input=False)[:MAX_ERRORS]:
            if error["type"] == "model_type":  # valid JSON, but not an object
                errors.append(NOT_AN_OBJECT)
                continue
            # A key of the user's may be megabytes long: locs and messages are shortened.
            loc = ["body", *(p if isinstance(p, int) else str(p)[:40] for p in error["loc"])]
            errors.append({"loc": loc, "msg": error["msg"][:300], "type": error["type"]})
        raise RequestValidationError(errors) from exc


async def read_predict_body(request: Request) -> tuple[PredictRequest, int]:
    """The predict body and its size: capped at REGULA_MAX_PREDICT_MB, validated by
    ``PredictRequest`` (off the event loop when large, after a key count). Called once the key is
    checked, so a stranger gets the server to read nothing."""
    raw = await read_prediction_body(request)
    if not raw:
        missing = {"loc": ["body"], "msg": "Field required", "type": "missing"}
        raise RequestValidationError([missing])
    if not _is_json(request.headers.get("content-type")):
        raise RequestValidationError([NOT_AN_OBJECT])
    if len(raw) <= INLINE_PARSE_BYTES:
        return _parse(raw), len(raw)
    check_key_density(raw)
    return await run_in_threadpool(_parse, raw), len(raw)


@router.post(
    "/{model_id}/predict",
    response_model=PredictResponse,
    response_class=NumpyJSONResponse,
    summary="Predict rows",
    responses={
        **ERRORS,
        413: {"description": "Too many rows, or too many bytes, in one request."},
        422: {"description": "A bad row or value; its place is in loc."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": inline_schema(PredictRequest),
                    "examples": PREDICT_EXAMPLES,
                }
            },
        }
    },
)
async def predict(model_id: str, request: Request, owner: OwnerDep) -> Response:
    """Predict a batch of raw rows: labels in the dataset's own values, probabilities per class.

    An image model takes ``instances``: one nested list (H, W) or (C, H, W) per image.

    The hot path: one dependency (the key), the body read here once the key is checked, and a
    database session (from get_db) only on a cache miss.
    """
    body, size = await read_predict_body(request)
    item = await loading.get(sessions_for(request), model_id, owner)
    result = await prediction.run(item, rows=body.rows, instances=body.instances, body_bytes=size)
    return NumpyJSONResponse(result)


# The multipart form of POST /models/{id}/predict/images: image files and the dataset upload's
# two conversion fields.
IMAGE_FIELDS = ("image_size", "color_mode")
IMAGES_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["files"],
    "properties": {
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "One or more PNG/JPEG images, one prediction each, in order.",
        },
        "image_size": {
            "type": "string",
            "example": "28,28",
            "description": "'H,W' (the model's size): resize every file to it, bilinear, as the "
            "dataset upload does. Without it each file must have the model's size.",
        },
        "color_mode": {
            "type": "string",
            "enum": ["grayscale", "rgb"],
            "description": "Convert every file to 1 (grayscale) or 3 (rgb) channels, as the "
            "dataset upload does. Without it each file must have the model's channel count.",
        },
    },
}


async def read_image_files(request: Request) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """The files and text fields of a multipart body capped at REGULA_MAX_PREDICT_MB."""
    media = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        raise UnsupportedMediaType(
            "Send the images as multipart/form-data (field 'files'), not as "
            f"{media or 'a body without a content type'}.",
            loc=["header", "content-type"],
        )
    raw = await read_prediction_body(request)

    async def body() -> Any:
        yield raw

    parser = MultiPartParser(
        request.headers,
        body(),
        max_files=settings.max_predict_rows,
        max_fields=len(IMAGE_FIELDS),
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidInput(
            f"The multipart body is malformed: {str(exc)[:200]}",
            loc=["body"],
            code="invalid_multipart",
        ) from None
    files: list[tuple[str, bytes]] = []
    fields: dict[str, str] = {}
    try:
        for key, value in form.multi_items():
            if key == "files" and isinstance(value, UploadFile):
                files.append((value.filename or "", await value.read()))
            elif key in IMAGE_FIELDS and isinstance(value, str):
                fields[key] = value
            else:
                kind = "file" if isinstance(value, UploadFile) else "text field"
                hint = " (a part without a filename is text)" if key == "files" else ""
                raise InvalidInput(
                    f"Unexpected {kind} {key[:40]!r}{hint}: send image files in 'files' and, "
                    "optionally, the text fields 'image_size' and 'color_mode'.",
                    loc=["body", key[:40]],
                    code="unknown_field",
                )
    finally:
        await form.close()
    return files, fields


@router.post(
    "/{model_id}/predict/images",
    response_model=PredictResponse,
    response_class=NumpyJSONResponse,
    summary="Predict image files",
    responses={
        **ERRORS,
        413: {"description": "Too many files, or too many bytes, in one request."},
        415: {"description": "The body is not multipart/form-data."},
        422: {
            "description": "A file that is corrupt or of the wrong size or channel count (loc "
            "names it), a table model, or a model whose pixels files cannot hold."
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": IMAGES_BODY}},
        }
    },
)
async def predict_images(model_id: str, request: Request, owner: OwnerDep) -> Response:
    """Predict PNG/JPEG files with an image model, decoded as the dataset upload decodes them."""
    files, fields = await read_image_files(request)
    item = await loading.get(sessions_for(request), model_id, owner)
    result = await run_in_threadpool(prediction.predict_files, item, files, fields)
    loading.check_not_deleted(item)
    return NumpyJSONResponse(result)


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


@router.get("/{model_id}", response_model=ModelRead, summary="Get a model", responses=NOT_FOUND)
def get_model(model_id: str, session: SessionDep, owner: OwnerDep) -> ModelRead:
    """Spec, metrics, feature names, the features a prediction reads, and classes of one model."""
    model = service.get(session=session, model_id=model_id, owner_id=owner)
    required = loading.required_features(session=session, model_id=model_id, owner_id=owner)
    return ModelRead.model_validate({**service.read(model), "required_features": required})


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a model",
    responses=NOT_FOUND,
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
    session: SessionDep,
    owner: OwnerDep,
    tolerance: Annotated[
        float,
        Query(ge=0.0, allow_inf_nan=False, description="Count |w| <= tolerance as near zero."),
    ] = 0.0,
) -> dict[str, Any]:
    """Exact zeros per layer, dropped and selected features, feature importance, dead units."""
    item = loading.load(session=session, model_id=model_id, owner_id=owner)
    return prediction.sparsity(item, tolerance)


@router.get(
    "/{model_id}/weights",
    response_model=LayerWeights,
    response_class=NumpyJSONResponse,
    summary="Get one layer's weight matrix",
    responses={
        **ERRORS,
        422: {"description": "No such layer, or a layer too large for one response."},
    },
)
def model_weights(
    model_id: str,
    session: SessionDep,
    owner: OwnerDep,
    layer: Annotated[
        int, Query(ge=0, le=10_000, description="Dense layer index, 0 = the input layer.")
    ] = 0,
) -> Response:
    """One dense layer's weights ``W (D, M)`` (for a heatmap), rows named for the input layer."""
    item = loading.load(session=session, model_id=model_id, owner_id=owner)
    return NumpyJSONResponse(prediction.layer_weights(item, layer))


@router.get(
    "/{model_id}/export",
    summary="Download the model (npz or ONNX)",
    response_class=Response,
    responses={
        **ERRORS,
        200: {
            "content": {"application/octet-stream": {}},
            "description": "npz: the bytes engine.load(data) reads. onnx: an ONNX model with "
            "one [N, 1] input per required feature (float for numbers, string for "
            "categories), outputs `label` and `probabilities` (or `scores`, or `variable` "
            "for regression).",
        },
    },
)
def export_model(
    model_id: str,
    session: SessionDep,
    owner: OwnerDep,
    format: Annotated[
        Literal["npz", "onnx"], Query(description="npz (engine.load) or onnx (ONNX Runtime).")
    ] = "npz",
) -> Response:
    """The model as npz bytes (weights, preprocessing, spec) or as a pruned ONNX graph."""
    if format == "onnx":
        item = loading.load(session=session, model_id=model_id, owner_id=owner)
        content = prediction.to_onnx(item)
    else:
        content = service.get_weights(session=session, model_id=model_id, owner_id=owner)
    return Response(
        content=content,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="model-{model_id}.{format}"'},
    )
