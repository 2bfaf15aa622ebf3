"""Liveness and readiness probes."""

from fastapi import APIRouter
from sqlalchemy import text

from app.core.deps import SessionDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    """Answer as long as the process serves HTTP."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database answers")
def readyz(session: SessionDep) -> dict[str, str]:
    """Answer once the database is reachable."""
    session.execute(text("SELECT 1"))
    return {"status": "ready"}
