"""/datasets endpoints."""

from fastapi import APIRouter

router = APIRouter(prefix="/datasets", tags=["datasets"])
