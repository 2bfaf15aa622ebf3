"""/jobs endpoints."""

from fastapi import APIRouter

router = APIRouter(prefix="/jobs", tags=["jobs"])
