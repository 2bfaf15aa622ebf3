"""/jobs/{id}/path: the regularization path and cross-validation scores of a search job."""

from typing import Any

from fastapi import APIRouter

from app.core.auth import OwnerDep
from app.core.deps import SessionDep
from app.core.routing import JSONBodyRoute
from app.paths import service
from app.paths.schemas import PathRead

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=JSONBodyRoute)

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such job (or not yours)."},
    409: {"description": "The job is a single fit, not a search (code not_a_search)."},
}


@router.get(
    "/{job_id}/path",
    response_model=PathRead,
    response_model_by_alias=True,
    summary="Get a search job's regularization path",
    responses=ERRORS,
)
def job_path(job_id: str, session: SessionDep, owner: OwnerDep) -> Any:
    """Per value: CV loss and metric with standard errors, non-zero count, feature norms; the
    min and 1se choices. Live while the job runs (``complete`` false)."""
    return service.get(session=session, job_id=job_id, owner_id=owner)
