"""/jobs endpoints: submit a TrainingSpec, watch it, cancel it, read its loss history."""

import csv
import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response, Security, status
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse

from app.core.auth import OwnerDep, api_key_scheme, current_owner, keyed
from app.core.deps import SessionDep
from app.core.errors import InvalidInput
from app.core.routing import MAX_OFFSET, JSONBodyRoute
from app.jobs import events, plots, service
from app.jobs.executor import ExecutorDep
from app.jobs.orm import Job
from app.jobs.schemas import (
    TRAINING_SPEC_EXAMPLE,
    EpochRead,
    EventStats,
    JobHistory,
    JobRead,
    JobStatus,
    TrainingSpec,
)

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=JSONBodyRoute)

# Offsets reach SQL as 64-bit integers; far beyond any real listing anyway.
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such job (or not yours)."},
}
PING_SECONDS = 15


def _read(job: Job, session: Session) -> JobRead:
    return events.read_jobs(session=session, jobs=[job])[0]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    summary="Submit a training job",
    responses={
        202: {"description": "Queued; poll the Location URL."},
        429: {"description": "Too many of this key's jobs are queued or running (Retry-After)."},
        422: {"description": "The spec is invalid; every failing field is named."},
    },
)
def create_job(
    spec: Annotated[
        TrainingSpec,
        Body(
            openapi_examples={
                "mlp": {
                    "summary": "An L1/L2-regularized MLP classifier (set dataset_id and target)",
                    "value": TRAINING_SPEC_EXAMPLE,
                },
                "lasso": {
                    "summary": "A linear model with L1 (the Lasso) on a numeric target",
                    "value": {
                        "dataset_id": TRAINING_SPEC_EXAMPLE["dataset_id"],
                        "target": "price",
                        "loss": "mse",
                        "model": {"hidden_layers": []},
                        "regularization": {"l1": 0.01},
                        "optimizer": {"name": "fista", "learning_rate": 0.1},
                        "epochs": 100,
                    },
                },
            }
        ),
    ],
    session: SessionDep,
    owner: OwnerDep,
    executor: ExecutorDep,
    response: Response,
) -> JobRead:
    """Validate the spec completely, queue the job and return it (202, Location header)."""
    job = service.create(session=session, spec_in=spec, owner_id=owner, executor=executor)
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobRead.model_validate(job)  # just queued: no epoch yet


@router.get("", response_model=list[JobRead], summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    owner: OwnerDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[JobRead]:
    """The caller's jobs, newest first, optionally only those of one status."""
    found = service.list_(
        session=session, owner_id=owner, status=status_, limit=limit, offset=offset
    )
    return events.read_jobs(session=session, jobs=found)


@router.get("/{job_id}", response_model=JobRead, summary="Get a job", responses=ERRORS)
def get_job(job_id: str, session: SessionDep, owner: OwnerDep) -> JobRead:
    """One job: status, progress, error, model_id."""
    return _read(service.get(session=session, job_id=job_id, owner_id=owner), session)


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    summary="Cancel a job",
    responses={**ERRORS, 409: {"description": "The job has already finished."}},
)
def cancel_job(job_id: str, session: SessionDep, owner: OwnerDep, executor: ExecutorDep) -> JobRead:
    """Cancel a queued job at once; a running job stops after its epoch and keeps its best model."""
    job = service.cancel(session=session, job_id=job_id, owner_id=owner, executor=executor)
    return _read(job, session)


HISTORY_CSV: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/csv": {"example": "epoch,loss,data_loss,...\n1,0.69,0.68,...\n"}},
        "description": "JSON, or with ?format=csv a CSV download (header = the history fields).",
    }
}


@router.get(
    "/{job_id}/history",
    response_model=JobHistory,
    summary="Get a job's loss history",
    responses={**ERRORS, **HISTORY_CSV},
)
def job_history(
    job_id: str,
    session: SessionDep,
    owner: OwnerDep,
    since: Annotated[
        int, Query(ge=0, le=MAX_OFFSET, description="Only epochs after this one.")
    ] = 0,
    format_: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> Any:
    """One row per finished epoch: loss = data_loss + penalty, metrics, sparsity, learning rate."""
    records = service.history(session=session, job_id=job_id, owner_id=owner)
    rows = [EpochRead.model_validate(r) for r in records if r.epoch > since]
    if format_ == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(events.HISTORY_FIELDS)
        for row in rows:
            writer.writerow(["" if v is None else repr(v) for v in row.model_dump().values()])
        return Response(
            content=out.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="job-{job_id}-history.csv"'},
        )
    return JobHistory(job_id=job_id, epochs=rows)


@keyed
async def _owner_with_query_key(
    request: Request,
    _documented: Annotated[Any, Security(api_key_scheme)],
    api_key: Annotated[
        str | None,
        Query(
            description="The API key, for clients that cannot send headers (a browser's "
            "EventSource); prefer 'Authorization: Bearer <key>'. Only on this route.",
        ),
    ] = None,
) -> str | None:
    """OwnerDep's rules, with ``?api_key=`` fed to the same function as a Bearer header."""
    if api_key is not None and "authorization" not in request.headers:
        headers = [*request.scope["headers"], (b"authorization", f"Bearer {api_key}".encode())]
        request = Request({**request.scope, "headers": headers})
    return await current_owner(request)


def _last_event_id(header: str | None, query: int | None) -> int:
    if query is not None:
        return query
    if header is None or not header.strip():
        return 0
    try:
        value = int(header.strip())
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_OFFSET:
        raise InvalidInput(
            "Last-Event-ID must be an epoch number (an integer >= 0), as the stream sent it.",
            loc=["header", "last-event-id"],
        )
    return value


@router.get(
    "/{job_id}/events",
    summary="Stream a job's progress (Server-Sent Events)",
    response_class=EventSourceResponse,
    responses={
        **ERRORS,
        200: {
            "content": {"text/event-stream": {}},
            "description": "event: status (the job, as GET /jobs/{id}); id: N + event: epoch (a "
            "history row); event: point (a search job's path point: fold, index, value, loss, "
            "metric, nonzero, selected_features); event: end ({status, model_id, error, "
            "error_code}); ': ping' comments every 15 s.",
        },
    },
)
def job_events(
    job_id: str,
    session: SessionDep,
    owner: Annotated[str | None, Depends(_owner_with_query_key)],
    hub: Annotated[events.EventHub, Depends(events.get_hub)],
    last_event_id_header: Annotated[str | None, Header(alias="last-event-id")] = None,
    last_event_id: Annotated[
        int | None,
        Query(ge=0, le=MAX_OFFSET, description="Resume after this epoch (as Last-Event-ID)."),
    ] = None,
) -> EventSourceResponse:
    """Status, then every epoch after Last-Event-ID, then end; resumes without gaps or repeats."""
    job = service.get(session=session, job_id=job_id, owner_id=owner)
    after = _last_event_id(last_event_id_header, last_event_id)
    # The stream reads through the hub; give the request's connection back to the pool now.
    session.close()
    return EventSourceResponse(hub.stream(job.id, after), ping=PING_SECONDS, send_timeout=60)


@router.get(
    "/{job_id}/events/stats",
    response_model=EventStats,
    summary="Event stream figures of a job",
    responses=ERRORS,
)
def job_event_stats(
    job_id: str,
    session: SessionDep,
    owner: OwnerDep,
    hub: Annotated[events.EventHub, Depends(events.get_hub)],
) -> EventStats:
    """Subscribers of the job's stream and its poller's database polls (one poller per job)."""
    job = service.get(session=session, job_id=job_id, owner_id=owner)
    return EventStats.model_validate(hub.stats(job.id))


@router.get(
    "/{job_id}/plots/loss.{fmt}",
    summary="Plot a job's loss history (SVG or PNG)",
    response_class=Response,
    responses={
        **ERRORS,
        200: {"content": {"image/svg+xml": {}, "image/png": {}}, "description": "The plot."},
    },
)
def job_loss_plot(
    job_id: str, fmt: Literal["svg", "png"], session: SessionDep, owner: OwnerDep
) -> Response:
    """Total loss, data loss, penalty and val_loss per epoch; zero fraction on a second axis."""
    records = service.history(session=session, job_id=job_id, owner_id=owner)
    rows = [EpochRead.model_validate(r).model_dump() for r in records]
    session.close()  # drawing takes a while; no reason to hold a connection
    content = plots.render(plots.loss_figure(rows, title=f"job {job_id}"), fmt)
    return Response(content=content, media_type=plots.MEDIA_TYPES[fmt])
