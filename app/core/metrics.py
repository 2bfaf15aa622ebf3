"""Prometheus metrics at ``GET /metrics`` (prometheus-client's text format).

- ``regula_http_requests_total{method, route, status}`` and
  ``regula_http_request_duration_seconds{method, route}`` (histogram): counted by a small ASGI
  middleware, labelled by the route's path *template* (``/models/{model_id}/predict``, never the
  raw path; ``<unmatched>`` for paths no route serves), so the label set stays bounded. Durations
  run until the response's last byte (an event stream counts its whole life).
- At scrape time, from the database: ``regula_jobs{status}`` (one GROUP BY),
  ``regula_jobs_queue_depth`` (queued jobs) and ``regula_epochs_trained_total`` (epoch records
  stored, every job's); from the process: ``regula_workers`` (the executor's workers),
  ``regula_model_cache_bytes``, ``regula_model_cache_entries``, ``regula_model_cache_hits_total``
  and ``regula_model_cache_misses_total`` (the prediction cache); plus prometheus-client's process
  and Python collectors.

Auth suited to a scraper: no key unless ``REGULA_METRICS_TOKEN`` is set; then the scrape needs
``Authorization: Bearer <that token>`` (API keys are not accepted: a scraper should not hold a key
that can read models).
"""

import hmac
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import settings
from app.core.deps import SessionDep
from app.core.errors import Unauthorized

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED = "<unmatched>"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "regula_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "regula_http_request_duration_seconds",
    "Time from a request's arrival to its response's last byte, by method and route template.",
    ["method", "route"],
    buckets=BUCKETS,
    registry=REGISTRY,
)


def route_template(scope: Scope) -> str:
    """The path template of the route that served ``scope`` (FastAPI records it in the scope), or
    ``<prefix>/{path}`` for the mounted static files, whose match leaves only their prefix."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if template:
        return str(template)
    if isinstance(scope.get("endpoint"), StaticFiles):
        return f"{scope.get('root_path', '')}/{{path}}"
    return UNMATCHED


class MetricsMiddleware:
    """Count and time every HTTP request by its route template (pure ASGI: no body buffering).

    The labelled children are looked up once per (method, route, status): ``labels()`` validates
    and locks on every call, a few microseconds that a single-row prediction notices. The label
    set is bounded (route templates, METHODS, status codes), and so is ``_children``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless a response starts

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self._record(method, route_template(scope), status, time.perf_counter() - start)


def _workers(executor: Any) -> int | None:
    """Workers of the app's executor: a Dask client's, 1 for the inline thread, None unknown."""
    if executor is None:
        return None
    client = getattr(executor, "client", None)
    if client is None:
        return 1 if not hasattr(executor, "cluster") else None
    try:
        return len(client.scheduler_info().get("workers", {}))
    except Exception:  # a scheduler that does not answer: the gauge is left out
        return None


class StateCollector:
    """Gauges computed at scrape time: jobs from the database, workers, the prediction cache."""

    def __init__(self, session: Session, executor: Any) -> None:
        self.session = session
        self.executor = executor

    def describe(self) -> list[Metric]:
        return []  # registering must not query the database

    def collect(self) -> Iterator[Metric]:
        from app.jobs.orm import JOB_STATUSES, EpochRecord, Job
        from app.models import loading

        counts = dict(
            self.session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        )
        jobs = GaugeMetricFamily("regula_jobs", "Jobs by status.", labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily(
            "regula_jobs_queue_depth", "Jobs queued and not yet running.", counts.get("queued", 0)
        )
        epochs = self.session.scalar(select(func.count()).select_from(EpochRecord)) or 0
        yield CounterMetricFamily(
            "regula_epochs_trained", "Epochs trained (epoch records stored), all jobs.", epochs
        )
        workers = _workers(self.executor)
        if workers is not None:
            yield GaugeMetricFamily("regula_workers", "Workers of the job executor.", workers)
        cache = loading.cache
        yield GaugeMetricFamily(
            "regula_model_cache_bytes", "Bytes of the models in the prediction cache.", cache.nbytes
        )
        yield GaugeMetricFamily(
            "regula_model_cache_entries", "Models in the prediction cache.", len(cache)
        )
        yield CounterMetricFamily(
            "regula_model_cache_hits", "Model lookups answered from the cache.", cache.hits
        )
        yield CounterMetricFamily(
            "regula_model_cache_misses", "Model lookups that had to load the model.", cache.misses
        )


def _check_token(request: Request) -> None:
    token = settings.metrics_token
    if not token:
        return
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
        raise Unauthorized(
            "This server's metrics need 'Authorization: Bearer <REGULA_METRICS_TOKEN>'.",
            loc=["header", "authorization"],
            code="invalid_metrics_token",
        )


router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
        401: {"description": "REGULA_METRICS_TOKEN is set and the Bearer token is not it."},
    },
)
def metrics(request: Request, session: SessionDep) -> Response:
    """Request counts and latency per route, jobs by status, queue depth, epochs trained, workers,
    and the model cache. No key unless ``REGULA_METRICS_TOKEN`` is set: then send
    ``Authorization: Bearer <REGULA_METRICS_TOKEN>``."""
    _check_token(request)
    state = CollectorRegistry()
    state.register(StateCollector(session, getattr(request.app.state, "executor", None)))
    body = generate_latest(REGISTRY) + generate_latest(state)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
