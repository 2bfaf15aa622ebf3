"""The FastAPI application: routers, error handlers and the job executor's lifetime."""

from fastapi import FastAPI

from app.errors import install_error_handlers
from app.routers import datasets, health, jobs, models


def create_app() -> FastAPI:
    """Build the application (routers, error handlers)."""
    app = FastAPI(
        title="Regula",
        version="0.1.0",
        summary="Train regularized NumPy models over HTTP and see what they learned to ignore.",
    )
    install_error_handlers(app)
    for module in (datasets, jobs, models, health):
        app.include_router(module.router)
    return app


app = create_app()
