"""Strangers and limits: API keys, ownership isolation, hashed key storage, resource limits.

With ``settings.auth_required`` on, a request needs a valid unrevoked key, and every dataset, job
and model belongs to the key that created it: another key gets 404 (not 403, which would confirm
that the id exists). The limits (upload size, epochs x rows, job run time) run with auth off.
"""

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import migrate
from app.core.auth import create_key
from app.core.config import settings
from app.core.db import get_db, get_sessionmaker
from app.core.keys import ApiKey
from app.datasets.orm import Dataset
from app.jobs.orm import Job

ROOT = Path(__file__).resolve().parents[2]
FINISHED = ("succeeded", "failed", "cancelled")


def _csv(n: int = 60, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    lines = ["a,b,label"]
    for _ in range(n):
        a, b = rng.normal(size=2)
        lines.append(f"{a:.4f},{b:.4f},{int(a - b > 0)}")
    return ("\n".join(lines) + "\n").encode()


def _spec(dataset_id: str, **overrides: Any) -> dict[str, Any]:
    spec = {
        "dataset_id": dataset_id,
        "target": "label",
        "loss": "softmax_cross_entropy",
        "model": {"hidden_layers": []},
        "epochs": 2,
        "batch_size": 16,
        "seed": 0,
    }
    spec.update(overrides)
    return spec


def _wait(client: TestClient, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        response = client.get(f"/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in FINISHED:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _assert_error(response: Any, status: int, code: str | tuple[str, ...]) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail"}, body
    (item,) = body["detail"]
    assert set(item) == {"loc", "msg", "type"}, item
    codes = (code,) if isinstance(code, str) else code
    assert item["type"] in codes, item
    assert isinstance(item["msg"], str) and item["msg"], item
    return item


# --------------------------------------------------------------------------------------------
# Keys and isolation: one module-scoped world owned by "alice", visited by "mallory".


@dataclass
class World:
    client: TestClient
    db_path: Path
    url: str
    alice: str
    mallory: str
    revoked: str
    dataset_id: str
    job_id: str
    model_id: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Auth on; alice owns a dataset, a finished job and its model; mallory owns nothing."""
    from app.main import create_app

    tmp = tmp_path_factory.mktemp("auth")
    db_path = tmp / "regula.db"
    url = f"sqlite:///{db_path}"
    migrate.upgrade(url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings, "database_url", url)
        mp.setattr(settings, "data_dir", tmp / "data")
        mp.setattr(settings, "executor", "inline")
        mp.setattr(settings, "auth_required", True)
        with get_sessionmaker(url)() as s:
            _, alice = create_key(session=s, name="alice")
            _, mallory = create_key(session=s, name="mallory")
            row, revoked = create_key(session=s, name="former employee")
            row.revoked_at = datetime.now(UTC)
            s.commit()
        app = create_app()

        def _get_db() -> Iterator[Session]:
            with get_sessionmaker(url)() as s:
                yield s

        app.dependency_overrides[get_db] = _get_db
        with TestClient(app) as client:
            h = _bearer(alice)
            upload = client.post(
                "/datasets", files={"file": ("a.csv", _csv(), "text/csv")}, headers=h
            )
            assert upload.status_code == 201, upload.text
            dataset_id = upload.json()["id"]
            submitted = client.post("/jobs", json=_spec(dataset_id), headers=h)
            assert submitted.status_code == 202, submitted.text
            job = _wait(client, submitted.json()["id"], h)
            assert job["status"] == "succeeded", job
            # Warm the prediction cache: a stranger must get 404 from a cached model too.
            warm = client.post(f"/models/{job['model_id']}/predict", json=PREDICT_BODY, headers=h)
            assert warm.status_code == 200, warm.text
            yield World(
                client,
                db_path,
                url,
                alice,
                mallory,
                revoked,
                dataset_id,
                job["id"],
                job["model_id"],
            )


PREDICT_BODY = {"rows": [{"a": 0.1, "b": 0.2}]}

# (method, path template, json body): everything a stranger might try on alice's resources.
OWNED_ENDPOINTS = [
    ("GET", "/datasets/{dataset_id}", None),
    ("DELETE", "/datasets/{dataset_id}", None),
    ("GET", "/jobs/{job_id}", None),
    ("GET", "/jobs/{job_id}/history", None),
    ("POST", "/jobs/{job_id}/cancel", None),
    ("GET", "/models/{model_id}", None),
    ("POST", "/models/{model_id}/predict", PREDICT_BODY),
    ("GET", "/models/{model_id}/sparsity", None),
    ("GET", "/models/{model_id}/export", None),
    ("DELETE", "/models/{model_id}", None),
]
ENDPOINT_IDS = [f"{m} {p}" for m, p, _ in OWNED_ENDPOINTS]


def _url(world: World, template: str) -> str:
    return template.format(
        dataset_id=world.dataset_id, job_id=world.job_id, model_id=world.model_id
    )


def _row_counts(world: World) -> dict[str, int]:
    with sqlite3.connect(world.db_path) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: con.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}


@pytest.mark.parametrize(("method", "template", "body"), OWNED_ENDPOINTS, ids=ENDPOINT_IDS)
def test_no_key_is_401(world: World, method: str, template: str, body: Any) -> None:
    response = world.client.request(method, _url(world, template), json=body)
    item = _assert_error(response, 401, "missing_api_key")
    assert "authorization" in [str(p).lower() for p in item["loc"]]
    assert response.headers["www-authenticate"].lower().startswith("bearer")


@pytest.mark.parametrize(
    ("method", "url"),
    [("GET", "/datasets"), ("GET", "/jobs"), ("GET", "/models"), ("POST", "/jobs")],
)
def test_no_key_on_collections_is_401(world: World, method: str, url: str) -> None:
    before = _row_counts(world)
    body = _spec(world.dataset_id) if method == "POST" else None
    _assert_error(world.client.request(method, url, json=body), 401, "missing_api_key")
    assert _row_counts(world) == before


def test_no_key_upload_is_401_and_stores_nothing(world: World) -> None:
    before = _row_counts(world)
    data = world.db_path.parent / "data"
    files_before = sorted(data.rglob("*"))
    response = world.client.post("/datasets", files={"file": ("x.csv", _csv(), "text/csv")})
    _assert_error(response, 401, "missing_api_key")
    assert _row_counts(world) == before
    assert sorted(data.rglob("*")) == files_before


def test_predict_checks_the_key_before_reading_the_body(world: World) -> None:
    # A stranger must not get the server to parse (or even read) a body: 401 whatever follows.
    url = f"/models/{world.model_id}/predict"
    for content in (b"not json", b'{"rows": [' + b'{"a": 1},' * 20_000 + b'{"a": 1}]}'):
        response = world.client.post(
            url, content=content, headers={"content-type": "application/json"}
        )
        _assert_error(response, 401, "missing_api_key")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer rg_not-a-real-key",
        "Bearer ",
        "Basic YWxpY2U6c2VjcmV0",
        "rg_missing-scheme",
        "Bearer " + "x" * 10_000,
    ],
    ids=["unknown", "empty", "basic", "no-scheme", "huge"],
)
def test_bad_key_is_401(world: World, header: str) -> None:
    response = world.client.get("/datasets", headers={"Authorization": header})
    _assert_error(response, 401, "invalid_api_key")


def test_almost_right_key_is_401(world: World) -> None:
    # One character off must not authenticate (no prefix matching).
    last = "A" if world.alice[-1] != "A" else "B"
    response = world.client.get("/datasets", headers=_bearer(world.alice[:-1] + last))
    _assert_error(response, 401, "invalid_api_key")


def test_revoked_key_is_401(world: World) -> None:
    response = world.client.get("/datasets", headers=_bearer(world.revoked))
    _assert_error(response, 401, "invalid_api_key")


def test_health_probes_need_no_key(world: World) -> None:
    assert world.client.get("/healthz").status_code == 200
    assert world.client.get("/readyz").status_code == 200


@pytest.mark.parametrize(("method", "template", "body"), OWNED_ENDPOINTS, ids=ENDPOINT_IDS)
def test_other_key_sees_404(world: World, method: str, template: str, body: Any) -> None:
    before = _row_counts(world)
    url = _url(world, template)
    response = world.client.request(method, url, json=body, headers=_bearer(world.mallory))
    code = "dataset_not_found" if template.startswith("/datasets") else "not_found"
    item = _assert_error(response, 404, code)
    # The 404 must read exactly like one for an id that never existed (no existence oracle).
    real = {"datasets": world.dataset_id, "jobs": world.job_id, "models": world.model_id}
    real_id = next(v for k, v in real.items() if template.startswith(f"/{k}"))
    fake_id = uuid.uuid4().hex
    other = world.client.request(
        method, url.replace(real_id, fake_id), json=body, headers=_bearer(world.mallory)
    )
    assert other.status_code == 404
    (other_item,) = other.json()["detail"]
    assert other_item["msg"].replace(fake_id, "<id>") == item["msg"].replace(real_id, "<id>")
    assert (other_item["type"], other_item["loc"]) == (item["type"], item["loc"])
    assert _row_counts(world) == before
    # ...and the owner still has it (a stranger's DELETE deleted nothing).
    resource = "/".join(template.split("/")[:3])  # e.g. /models/{model_id}
    owner_view = world.client.get(_url(world, resource), headers=_bearer(world.alice))
    assert owner_view.status_code == 200, owner_view.text


def test_lists_show_only_own_resources(world: World) -> None:
    for collection, owned in (
        ("/datasets", world.dataset_id),
        ("/jobs", world.job_id),
        ("/models", world.model_id),
    ):
        mine = world.client.get(collection, headers=_bearer(world.alice))
        theirs = world.client.get(collection, headers=_bearer(world.mallory))
        assert mine.status_code == 200 and theirs.status_code == 200
        assert owned in mine.text, collection
        assert owned not in theirs.text, collection


def test_other_keys_dataset_cannot_be_trained_on(world: World) -> None:
    before = _row_counts(world)
    response = world.client.post(
        "/jobs", json=_spec(world.dataset_id), headers=_bearer(world.mallory)
    )
    assert response.status_code in (404, 422), response.text
    item = response.json()["detail"][0]
    assert item["type"] == "dataset_not_found", item
    assert "dataset_id" in item["msg"] or "dataset_id" in [str(p) for p in item["loc"]], item
    assert _row_counts(world) == before


def test_resources_record_their_owner(world: World) -> None:
    with get_sessionmaker(world.url)() as s:
        alice = s.scalar(select(ApiKey).where(ApiKey.name == "alice"))
        assert alice is not None
        assert s.get(Dataset, world.dataset_id).owner_id == alice.id
        job = s.get(Job, world.job_id)
        assert job.owner_id == alice.id
        assert job.model is not None and job.model.owner_id == alice.id


def test_keys_are_stored_hashed(world: World) -> None:
    with get_sessionmaker(world.url)() as s:
        rows = {r.name: r for r in s.scalars(select(ApiKey))}
    assert rows["alice"].key_hash == hashlib.sha256(world.alice.encode()).hexdigest()
    assert rows["alice"].prefix != world.alice and len(rows["alice"].prefix) < len(world.alice) // 2
    # No plain key anywhere in the database files (main file and write-ahead log).
    raw = b"".join(p.read_bytes() for p in world.db_path.parent.glob("regula.db*"))
    for key in (world.alice, world.mallory, world.revoked):
        assert key.encode() not in raw
        # The secret part must not be stored either (the prefix alone is fine).
        assert key[12:].encode() not in raw


@pytest.mark.integration  # a subprocess
def test_cli_keys_create_prints_a_working_key(world: World) -> None:
    env = {**os.environ, "REGULA_DATABASE_URL": world.url}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "create", "--name", "ci"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    keys = re.findall(r"rg_[A-Za-z0-9_\-]{20,}", done.stdout)
    assert len(keys) == 1, done.stdout
    response = world.client.get("/datasets", headers=_bearer(keys[0]))
    assert response.status_code == 200, response.text
    # A fresh key owns nothing yet.
    assert world.dataset_id not in response.text


def test_keyed_model_is_hidden_from_anonymous_callers_when_auth_is_off(
    client: TestClient, session: Session
) -> None:
    # Auth off: no key means the anonymous owner, who still must not see a key's resources,
    # even once the model sits in the prediction cache.
    _, key = create_key(session=session, name="alice")
    h = _bearer(key)
    upload = client.post("/datasets", files={"file": ("a.csv", _csv(), "text/csv")}, headers=h)
    assert upload.status_code == 201, upload.text
    submitted = client.post("/jobs", json=_spec(upload.json()["id"]), headers=h)
    job = _wait(client, submitted.json()["id"], h)
    assert job["status"] == "succeeded", job
    url = f"/models/{job['model_id']}"
    assert client.post(f"{url}/predict", json=PREDICT_BODY, headers=h).status_code == 200
    for method, path, body in (
        ("POST", f"{url}/predict", PREDICT_BODY),
        ("GET", url, None),
        ("GET", f"/datasets/{upload.json()['id']}", None),
        ("GET", f"/jobs/{job['id']}", None),
    ):
        assert client.request(method, path, json=body).status_code == 404, path
    assert client.get("/models").json() == []


# --------------------------------------------------------------------------------------------
# Limits (auth off; function-scoped fixtures from conftest).


def _files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.rglob("*") if p.is_file()) if data_dir.exists() else []


def test_upload_over_size_limit_is_413(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "max_upload_mb", 1)
    body = _csv(70_000)  # ~1.2 MB
    assert len(body) > settings.max_upload_bytes
    response = client.post("/datasets", files={"file": ("big.csv", body, "text/csv")})
    item = _assert_error(response, 413, "too_large")
    assert "MB" in item["msg"] or "bytes" in item["msg"], item
    assert session.scalars(select(Dataset)).all() == []
    assert _files(settings.data_dir) == []


def test_epoch_rows_limit_is_422(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = client.post("/datasets", files={"file": ("a.csv", _csv(60), "text/csv")})
    assert upload.status_code == 201, upload.text
    monkeypatch.setattr(settings, "max_epoch_rows", 1000)
    # 60 rows x 20 epochs = 1200 > 1000.
    response = client.post("/jobs", json=_spec(upload.json()["id"], epochs=20))
    assert response.status_code == 422, response.text
    item = response.json()["detail"][0]
    assert item["type"] == "limit_exceeded", item
    assert "epochs" in item["msg"], item
    assert session.scalars(select(Job)).all() == []
    # Just under the limit is accepted: 60 x 16 = 960.
    ok = client.post("/jobs", json=_spec(upload.json()["id"], epochs=16))
    assert ok.status_code == 202, ok.text


@pytest.mark.parametrize(
    ("model", "batch_size", "rows", "extra"),
    [
        ({"hidden_layers": [100_000, 100_000]}, 32, 60, {}),  # 1e10 weights: 40 GB
        # Small weights, 5 GB of activations per batch (a batch is at most the dataset's rows).
        ({"hidden_layers": [100_000]}, 65_536, 4_000, {}),
        ({"hidden_layers": [20_000] * 8}, 32, 60, {}),  # 2.8e9 weights over many layers
        # Small batches, but the validation split goes through the network in one pass each
        # epoch: 20,000 rows x 100,000 units = 8 GB.
        ({"hidden_layers": [100_000]}, 32, 40_000, {"validation_split": 0.5}),
    ],
    ids=["wide", "wide-batch", "deep", "wide-validation"],
)
def test_model_too_large_for_memory_is_rejected_before_it_runs(
    client: TestClient,
    session: Session,
    monkeypatch: pytest.MonkeyPatch,
    model: dict[str, Any],
    batch_size: int,
    rows: int,
    extra: dict[str, Any],
) -> None:
    from app.jobs.executor import get_executor

    # Never let such a job reach an executor, even if the API wrongly accepted it.
    client.app.dependency_overrides[get_executor] = lambda: None
    upload = client.post("/datasets", files={"file": ("a.csv", _csv(rows), "text/csv")})
    assert upload.status_code == 201, upload.text
    spec = _spec(upload.json()["id"], model=model, batch_size=batch_size, **extra)
    response = client.post("/jobs", json=spec)
    assert response.status_code == 422, response.text
    # Too large for a worker's memory, or (the wider ones) for the model store as well.
    codes = {item["type"] for item in response.json()["detail"]}
    assert codes & {"limit_exceeded", "model_too_large"}, response.json()
    assert session.scalars(select(Job)).all() == []
    # A model of ordinary size still passes the same check.
    ordinary = _spec(upload.json()["id"], model={"hidden_layers": [256, 128]}, **extra)
    ok = client.post("/jobs", json=ordinary)
    assert ok.status_code == 202, ok.text


def test_job_over_time_limit_fails_with_reason(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = client.post("/datasets", files={"file": ("a.csv", _csv(400), "text/csv")})
    assert upload.status_code == 201, upload.text
    monkeypatch.setattr(settings, "job_timeout_seconds", 0.5)
    spec = _spec(upload.json()["id"], epochs=5000, batch_size=4, model={"hidden_layers": [16]})
    submitted = client.post("/jobs", json=spec)
    assert submitted.status_code == 202, submitted.text
    started = time.monotonic()
    job = _wait(client, submitted.json()["id"])
    assert job["status"] == "failed", job
    assert "time" in job["error"].lower() or "timeout" in job["error"].lower(), job
    # It stopped near the limit instead of running all 5000 epochs.
    assert time.monotonic() - started < 30
    assert job["model_id"] is None
    row = session.get(Job, job["id"])
    session.refresh(row)
    assert row.finished_at is not None
    assert row.error_code == "timeout"
