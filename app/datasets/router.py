"""/datasets endpoints: upload a table (CSV, Parquet) or images (.npz, .zip), list, read, delete."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from app.core.auth import OwnerDep
from app.core.deps import SessionDep
from app.core.routing import MAX_OFFSET
from app.datasets import ingest, service
from app.datasets.ingest.spool import TEXT_FIELDS
from app.datasets.schemas import DatasetRead

router = APIRouter(prefix="/datasets", tags=["datasets"])

ERROR_EXAMPLE = {
    "detail": [
        {
            "loc": ["body", "file", "line", 7],
            "msg": "Line 7 has 3 fields but the header has 4 (comma-delimited): '1,2,3'.",
            "type": "ragged_row",
        }
    ]
}


def _error(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": example}}}


NOT_FOUND = _error(
    "No such dataset (or it belongs to another API key).",
    {
        "detail": [
            {
                "loc": ["path", "dataset_id"],
                "msg": "Dataset 'abc' does not exist.",
                "type": "dataset_not_found",
            }
        ]
    },
)

# The upload body is read by hand (streamed, size-limited), so /docs needs its schema spelled out.
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "One of: a UTF-8 CSV (BOM optional) with a header "
                            "line, comma, semicolon or tab delimited; a Parquet file (numbers, "
                            "strings, booleans, dates; no nested or binary columns); an .npz "
                            "with arrays x (N,H,W) or (N,C,H,W), uint8 or float, and y (N,) "
                            "integers or strings (no object arrays); a .zip with one folder per "
                            "class of PNG/JPEG images (other files are ignored). The format is "
                            "detected from the first bytes (PAR1, PK), else the file name.",
                        },
                        "name": {
                            "type": "string",
                            "maxLength": ingest.MAX_NAME_CHARS,
                            "description": "Display name; defaults to the file name.",
                        },
                        "image_size": {
                            "type": "string",
                            "maxLength": TEXT_FIELDS["image_size"],
                            "pattern": r"^\s*\d+\s*,\s*\d+\s*$",
                            "example": "28,28",
                            "description": "Zip of images only: resize every image to "
                            "'height,width' (bilinear). Without it, all images must have the "
                            "same size.",
                        },
                        "color_mode": {
                            "type": "string",
                            "enum": ["grayscale", "rgb"],
                            "description": "Zip of images only: 1 or 3 channels. Default: "
                            "grayscale if every image is, else rgb.",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    summary="Upload a table (CSV, Parquet) or images (.npz, .zip of class folders)",
    openapi_extra=UPLOAD_BODY,
    responses={
        201: {"description": "Stored; the Location header points at the new dataset."},
        408: _error(
            "The client stopped sending the body for REGULA_BODY_READ_TIMEOUT_SECONDS.",
            {
                "detail": [
                    {
                        "loc": ["body"],
                        "msg": "The client sent no data for 60 seconds; the upload was "
                        "abandoned (REGULA_BODY_READ_TIMEOUT_SECONDS).",
                        "type": "body_timeout",
                    }
                ]
            },
        ),
        413: _error(
            "The file (or an archive once inflated) is larger than REGULA_MAX_UPLOAD_MB "
            "(rejected while streaming).",
            {
                "detail": [
                    {
                        "loc": ["body", "file"],
                        "msg": "The file is larger than the upload limit of 200 MB "
                        "(REGULA_MAX_UPLOAD_MB).",
                        "type": "too_large",
                    }
                ]
            },
        ),
        415: _error(
            "The body is not multipart/form-data.",
            {
                "detail": [
                    {
                        "loc": ["header", "content-type"],
                        "msg": "Upload the file as multipart/form-data (field 'file'), not as "
                        "application/json.",
                        "type": "unsupported_media_type",
                    }
                ]
            },
        ),
        422: _error(
            "The file is not usable: empty, no data rows, not UTF-8, binary, ragged rows, "
            "duplicate or empty column names, too many columns, infinite values, unsupported "
            "Parquet types, object arrays, corrupt images, unsafe archive paths... (corrupt "
            "images are listed together, at most 50 and a summary).",
            ERROR_EXAMPLE,
        ),
        507: _error(
            "The data disk is full; nothing was stored.",
            {
                "detail": [
                    {
                        "loc": ["body", "file"],
                        "msg": "The server's data disk is full, so the upload was not stored; "
                        "nothing was kept. Try again later, or ask the operator to free space "
                        "under REGULA_DATA_DIR.",
                        "type": "insufficient_storage",
                    }
                ]
            },
        ),
    },
)
async def create_dataset(
    request: Request, response: Response, session: SessionDep, owner_id: OwnerDep
) -> Any:
    """Stream the upload to disk under the limits, convert it, store the file and the row."""
    row = await service.create(
        session=session,
        body=request.stream(),
        content_type=request.headers.get("content-type"),
        content_length=request.headers.get("content-length"),
        owner_id=owner_id,
        disconnected=request.is_disconnected,
    )
    response.headers["Location"] = str(request.url_for("get_dataset", dataset_id=row.id))
    return row


@router.get(
    "",
    response_model=list[DatasetRead],
    summary="List datasets, newest first",
)
def list_datasets(
    session: SessionDep,
    owner_id: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Datasets to skip.")] = 0,
) -> Any:
    """The caller's datasets, newest first."""
    return service.list_(session=session, owner_id=owner_id, limit=limit, offset=offset)


@router.get(
    "/{dataset_id}",
    response_model=DatasetRead,
    summary="Get a dataset's rows, columns and statistics",
    responses={404: NOT_FOUND},
)
def get_dataset(dataset_id: str, session: SessionDep, owner_id: OwnerDep) -> Any:
    """One dataset of the caller."""
    return service.get(session=session, dataset_id=dataset_id, owner_id=owner_id)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a dataset and its file",
    responses={
        404: NOT_FOUND,
        503: _error(
            "The dataset's file cannot be removed right now; nothing was deleted.",
            {
                "detail": [
                    {
                        "loc": ["path", "dataset_id"],
                        "msg": "The dataset's file cannot be removed right now (Permission "
                        "denied); nothing was deleted. Try again later.",
                        "type": "storage_unavailable",
                    }
                ]
            },
        ),
    },
)
def delete_dataset(dataset_id: str, session: SessionDep, owner_id: OwnerDep) -> None:
    """Delete the dataset: its file is moved aside, the row deleted, then the file removed."""
    service.delete(session=session, dataset_id=dataset_id, owner_id=owner_id)
