"""/jobs endpoints: submit a TrainingSpec, watch it, cancel it, read its loss history."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response, status

from app.core.auth import OwnerDep
from app.core.deps import SessionDep
from app.core.routing import MAX_OFFSET, JSONBodyRoute
from app.jobs import service
from app.jobs.executor import ExecutorDep
from app.jobs.orm import Job
from app.jobs.schemas import TRAINING_SPEC_EXAMPLE, JobHistory, JobRead, JobStatus, TrainingSpec

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=JSONBodyRoute)

# Offsets reach SQL as 64-bit integers; far beyond any real listing anyway.
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such job (or not yours)."},
}


def _read(job: Job) -> JobRead:
    return JobRead.model_validate(job)


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
    return _read(job)


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
    return [_read(job) for job in found]


@router.get("/{job_id}", response_model=JobRead, summary="Get a job", responses=ERRORS)
def get_job(job_id: str, session: SessionDep, owner: OwnerDep) -> JobRead:
    """One job: status, progress, error, model_id."""
    return _read(service.get(session=session, job_id=job_id, owner_id=owner))


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    summary="Cancel a job",
    responses={**ERRORS, 409: {"description": "The job has already finished."}},
)
def cancel_job(job_id: str, session: SessionDep, owner: OwnerDep, executor: ExecutorDep) -> JobRead:
    """Cancel a queued job at once; a running job stops after its epoch and keeps its best model."""
    job = service.cancel(session=session, job_id=job_id, owner_id=owner, executor=executor)
    return _read(job)


@router.get(
    "/{job_id}/history",
    response_model=JobHistory,
    summary="Get a job's loss history",
    responses=ERRORS,
)
def job_history(job_id: str, session: SessionDep, owner: OwnerDep) -> JobHistory:
    """One row per finished epoch: loss = data_loss + penalty, metrics, sparsity, learning rate."""
    records = service.history(session=session, job_id=job_id, owner_id=owner)
    return JobHistory.model_validate({"job_id": job_id, "epochs": records}, from_attributes=True)
