"""/datasets endpoints: upload a CSV, list, read and delete datasets."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from app.core.auth import OwnerDep
from app.core.config import settings
from app.core.deps import SessionDep
from app.core.errors import InvalidInput
from app.core.routing import MAX_OFFSET
from app.datasets import ingest, service
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
                            "description": "A UTF-8 CSV (BOM optional) with a header line; comma, "
                            "semicolon or tab delimited.",
                        },
                        "name": {
                            "type": "string",
                            "maxLength": ingest.MAX_NAME_CHARS,
                            "description": "Display name; defaults to the file name.",
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
    summary="Upload a CSV file as a dataset",
    openapi_extra=UPLOAD_BODY,
    responses={
        201: {"description": "Stored; the Location header points at the new dataset."},
        413: _error(
            "The file is larger than REGULA_MAX_UPLOAD_MB (rejected while streaming).",
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
                        "msg": "Upload the CSV as multipart/form-data (field 'file'), not as "
                        "application/json.",
                        "type": "unsupported_media_type",
                    }
                ]
            },
        ),
        422: _error(
            "The file is not a usable CSV: empty, no data rows, not UTF-8, binary, ragged "
            "rows, duplicate or empty column names, too many columns, infinite values...",
            ERROR_EXAMPLE,
        ),
    },
)
async def create_dataset(
    request: Request, response: Response, session: SessionDep, owner_id: OwnerDep
) -> Any:
    """Stream the upload to disk under the size limit, convert it to Parquet, store the row."""
    files = service.new_files()
    try:
        try:
            upload, ingested = await ingest.receive_csv(
                request.stream(),
                content_type=request.headers.get("content-type"),
                content_length=request.headers.get("content-length"),
                spool=files.spool,
                dest=files.parquet,
                max_bytes=settings.max_upload_bytes,
                max_columns=settings.max_columns,
            )
        except ClientDisconnect:
            raise InvalidInput(
                "The client disconnected during the upload.", loc=["body"], code="disconnected"
            ) from None
        row = await run_in_threadpool(
            service.create,
            session=session,
            upload=upload,
            ingested=ingested,
            files=files,
            owner_id=owner_id,
        )
    finally:
        service.release(files)
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
    return service.get_all(session=session, owner_id=owner_id, limit=limit, offset=offset)


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
    responses={404: NOT_FOUND},
)
def delete_dataset(dataset_id: str, session: SessionDep, owner_id: OwnerDep) -> None:
    """Delete the row, then the Parquet file."""
    service.delete(session=session, dataset_id=dataset_id, owner_id=owner_id)
