"""Property-based fuzzing of every operation in the OpenAPI schema (schemathesis + Hypothesis).

For each operation, schemathesis generates requests from the schema (valid and invalid ones) and
checks that the app never answers 5xx and that every documented response matches its schema.
The app runs in-process on a temp SQLite file with the inline executor; one dataset and one
trained model are seeded first, and path ids are swapped for the real ones in about half of the
examples so generated bodies reach real models, not just the 404 branch. Accepted jobs are stored
but not trained (see ``seeded``).

Bounded and reproducible for CI: a fixed number of examples per operation (40;
``REGULA_FUZZ_EXAMPLES=500`` for a deeper local run) and ``derandomize=True`` (the same examples
on every run).
"""

import os
import time
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, settings
from sqlalchemy.orm import Session

from app.core import migrate
from app.core.config import settings as app_settings
from app.core.db import get_db, get_sessionmaker
from app.jobs.executor import get_executor
from app.main import create_app

# In-process, but a minute of CPU over the whole schema: it runs with the integration tests
# (`make test`, CI), not in the fast lane.
pytestmark = pytest.mark.integration

MAX_EXAMPLES = int(os.environ.get("REGULA_FUZZ_EXAMPLES", "40"))
APP = create_app()
# Loaded from the app object, not over HTTP: fetching /openapi.json would start the app's
# lifespan (and its executor) at import time with the default settings.
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.response_schema_conformance,
]
IDS: dict[str, str] = {}


def _csv(n: int = 60) -> bytes:
    rng = np.random.default_rng(0)
    lines = ["a,b,color,label"]
    for i in range(n):
        a, b = rng.normal(size=2)
        lines.append(f"{a:.3f},{b:.3f},{('red', 'blue')[i % 2]},{int(a > b)}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module", autouse=True)
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Point APP at a fresh database, seed a dataset, a finished job and its model."""
    tmp = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{tmp / 'regula.db'}"
    migrate.upgrade(url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(app_settings, "database_url", url)
        mp.setattr(app_settings, "data_dir", tmp / "data")
        mp.setattr(app_settings, "executor", "inline")
        mp.setattr(app_settings, "auth_required", False)
        # Any job a fuzzed spec manages to start stays tiny.
        mp.setattr(app_settings, "max_epoch_rows", 600)
        mp.setattr(app_settings, "job_timeout_seconds", 5.0)

        def _get_db() -> Iterator[Session]:
            with get_sessionmaker(url)() as s:
                yield s

        APP.dependency_overrides[get_db] = _get_db
        with TestClient(APP) as client:
            upload = client.post("/datasets", files={"file": ("seed.csv", _csv(), "text/csv")})
            assert upload.status_code == 201, upload.text
            dataset_id = upload.json()["id"]
            spec = {"dataset_id": dataset_id, "target": "label", "epochs": 3, "seed": 0}
            submitted = client.post("/jobs", json=spec)
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]
            deadline = time.monotonic() + 60
            while (job := client.get(f"/jobs/{job_id}").json())["status"] not in (
                "succeeded",
                "failed",
                "cancelled",
            ):
                assert time.monotonic() < deadline, job
                time.sleep(0.05)
            assert job["status"] == "succeeded", job
            IDS.update(dataset_id=dataset_id, job_id=job_id, model_id=job["model_id"])
            # Fuzzed specs are accepted and stored but never trained: a generated model can be
            # huge (up to 64 layers of 100,000 units), and running it would fuzz the host's
            # memory rather than the API.
            APP.dependency_overrides[get_executor] = lambda: None
            yield dict(IDS)
        APP.dependency_overrides.clear()


def _use_real_ids(case: Any) -> None:
    """Swap generated path ids for seeded ones in about half the cases (never for DELETE)."""
    if case.method.upper() == "DELETE" or not case.path_parameters:
        return
    for name, value in list(case.path_parameters.items()):
        # crc32, not hash(): the choice must be the same in every process (reproducible runs).
        if name in IDS and zlib.crc32(repr(value).encode()) % 2 == 0:
            case.path_parameters[name] = IDS[name]
    is_spec = case.method.upper() == "POST" and case.path == "/jobs"
    if is_spec and isinstance(case.body, dict) and zlib.crc32(repr(case.body).encode()) % 2 == 0:
        case.body["dataset_id"] = IDS["dataset_id"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Schemathesis (4.32) calls this for each operation's test. It names that test
    # `test_...[GET /path]`, but pytest 9 builds node ids from the function's name and its
    # parametrization alone, so without one all operations shared a single node id: serial pytest
    # still ran them all, pytest-xdist's file and group scheduling (which key work by node id)
    # ran one and reported success. This parametrization gives each operation's item a node id of
    # its own: `test_...[GET /path][checks]`.
    if "checks" in metafunc.fixturenames:
        metafunc.parametrize("checks", [CHECKS], ids=["checks"])


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_and_responses_match_schema(case: Any, checks: list[Any]) -> None:
    _use_real_ids(case)
    case.call_and_validate(checks=checks)


def test_schema_covers_every_route() -> None:
    # The fuzzing above is only as wide as the schema: every public route must be in it.
    operations = {
        (method.upper(), path)
        for path, item in APP.openapi()["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    expected = {
        ("POST", "/datasets"),
        ("GET", "/datasets"),
        ("GET", "/datasets/{dataset_id}"),
        ("DELETE", "/datasets/{dataset_id}"),
        ("POST", "/jobs"),
        ("GET", "/jobs"),
        ("GET", "/jobs/{job_id}"),
        ("POST", "/jobs/{job_id}/cancel"),
        ("GET", "/jobs/{job_id}/history"),
        ("GET", "/models"),
        ("GET", "/models/{model_id}"),
        ("POST", "/models/{model_id}/predict"),
        ("GET", "/models/{model_id}/sparsity"),
        ("GET", "/models/{model_id}/export"),
        ("DELETE", "/models/{model_id}"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    }
    assert expected <= operations, expected - operations
