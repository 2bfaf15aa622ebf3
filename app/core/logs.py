"""Console logging for the ``regula`` loggers (the API process and every worker process)."""

import logging
import sys

from app.core.config import settings


def configure() -> None:
    """Send ``regula.*`` records of ``settings.log_level`` and above to stderr, once per process.

    Uvicorn configures only its own loggers, and Dask's worker processes start with none of the
    API process's configuration, so both call this.
    """
    logger = logging.getLogger("regula")
    if any(getattr(h, "regula", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.regula = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(settings.log_level.upper())
    logger.propagate = False
