"""The FastAPI application: routers, error handlers and the job executor's lifetime."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import web
from app.core.auth import document_auth
from app.core.config import settings
from app.core.db import get_sessionmaker
from app.core.errors import install_error_handlers
from app.core.metrics import MetricsMiddleware
from app.core.metrics import router as metrics
from app.datasets import router as datasets
from app.health import router as health
from app.jobs import router as jobs
from app.models import plots_router
from app.models import router as models
from app.paths import router as paths
from app.serving import mlflow, oip

log = logging.getLogger("regula")

# The order of the sections in /docs and /redoc: the order a new user works in.
OPENAPI_TAGS = [
    {
        "name": "datasets",
        "description": "Upload tables (CSV, Parquet), images; column profiles.",
    },
    {"name": "jobs", "description": "Train: submit a spec, follow its history and events, cancel."},
    {"name": "models", "description": "Predict, sparsity (what L1 switched off), export, plots."},
    {"name": "health", "description": "Liveness and readiness."},
    {
        "name": "inference protocol v2",
        "description": "KServe / Triton's Open Inference Protocol (REST), binary tensors included.",
    },
]


def _collect_orphan_files() -> None:
    from app.datasets import service as datasets

    with get_sessionmaker(settings.database_url)() as session:
        datasets.gc_orphans(session=session, data_dir=settings.data_dir)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the executor, recover jobs of a previous run, start the reaper; stop them after."""
    from app.jobs import executor as worker
    from app.models import loading

    # Files of uploads a crash interrupted; later ones are collected by the reaper's housekeeping.
    await asyncio.to_thread(_collect_orphan_files)
    # Blocking (a LocalCluster spawns processes), so off the event loop.
    executor, reaper = await asyncio.to_thread(worker.start_service, _collect_orphan_files)
    app.state.executor = executor
    try:
        yield
    finally:
        app.state.executor = None
        await asyncio.to_thread(worker.stop_service, executor, reaper)
        loading.cache.clear()


def create_app() -> FastAPI:
    """Build the application (routers, error handlers, lifespan)."""
    app = FastAPI(
        title="Regula",
        version="0.1.0",
        summary="Train regularized NumPy models over HTTP and see what they learned to ignore.",
        lifespan=lifespan,
        openapi_tags=OPENAPI_TAGS,
        # /docs and /redoc come from assets shipped in the package (app.web), not from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    # The prediction routes first: FastAPI tries routes in order, a regex match each, and a
    # single-row prediction notices every route it is tried against before its own.
    for module in (models, mlflow, oip, plots_router, datasets, jobs, paths, health):
        app.include_router(module.router)
    app.include_router(metrics)
    app.add_middleware(MetricsMiddleware)
    document_auth(app)
    web.mount(app)
    return app


app = create_app()
