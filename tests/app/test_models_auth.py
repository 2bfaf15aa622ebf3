"""The API key in OpenAPI (a Bearer scheme Swagger UI can send, 401 documented), and
``regula keys list | revoke``."""

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app import cli
from app.core.auth import create_key
from app.core.config import settings
from app.core.keys import ApiKey

METHODS = {"get", "post", "put", "patch", "delete"}


def _operations(client: TestClient) -> dict[str, dict[str, Any]]:
    paths = client.get("/openapi.json").json()["paths"]
    return {
        f"{method.upper()} {path}": operation
        for path, item in paths.items()
        for method, operation in item.items()
        if method in METHODS
    }


def test_openapi_has_a_bearer_scheme_swagger_can_send(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `regula keys create`, sent as "
        "`Authorization: Bearer <key>`.",
    }


def test_every_keyed_operation_documents_the_key_and_its_401(client: TestClient) -> None:
    operations = _operations(client)
    keyed = {name: op for name, op in operations.items() if op.get("security")}
    assert "POST /models/{model_id}/predict" in keyed and "POST /datasets" in keyed
    for name, operation in keyed.items():
        assert operation["security"] == [{"APIKey": []}], name
        assert "401" in operation["responses"], name
    # The probes (ours and the inference protocol's) take no key and promise no 401.
    probes = {
        "GET /healthz",
        "GET /readyz",
        "GET /v2",
        "GET /v2/health/live",
        "GET /v2/health/ready",
    }
    for name in probes:
        assert name not in keyed and "401" not in operations[name]["responses"]
    # /metrics takes REGULA_METRICS_TOKEN (when set), never an API key.
    assert set(operations) - set(keyed) == {*probes, "GET /metrics"}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_list_shows_id_name_prefix_created_revoked(
    db_url: str, session: Session, capsys: pytest.CaptureFixture[str]
) -> None:
    row, plain = create_key(session=session, name="ci runner")
    code, out, _ = _run(capsys, "keys", "list", "--database-url", db_url)
    assert code == 0
    header, line = out.strip().splitlines()
    assert header.split() == ["ID", "NAME", "PREFIX", "CREATED", "REVOKED"]
    assert line.startswith(row.id) and "ci runner" in line and row.prefix in line
    assert line.rstrip().endswith("-")  # not revoked
    assert plain not in out  # the key itself is never shown again


def test_revoked_key_gets_401(
    db_url: str,
    session: Session,
    capsys: pytest.CaptureFixture[str],
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "auth_required", True)
    row, plain = create_key(session=session, name="laptop")
    headers = {"Authorization": f"Bearer {plain}"}
    assert client.get("/models", headers=headers).status_code == 200

    code, _, err = _run(capsys, "keys", "revoke", row.prefix, "--database-url", db_url)
    assert code == 0 and row.id in err
    response = client.get("/models", headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"][0]["type"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"

    session.expire_all()
    revoked = session.get(ApiKey, row.id)
    assert revoked is not None and revoked.revoked_at is not None
    code, out, _ = _run(capsys, "keys", "list", "--database-url", db_url)
    assert revoked.revoked_at.isoformat(timespec="seconds")[:16] in out
    # Revoking again (by id this time) keeps the first revocation time.
    first = revoked.revoked_at
    assert _run(capsys, "keys", "revoke", row.id, "--database-url", db_url)[0] == 0
    session.expire_all()
    assert session.get(ApiKey, row.id).revoked_at == first


def _revoke_elsewhere(db_url: str, key_id: str) -> None:
    """Revoke as another process would: straight in the database, past this process's cache."""
    from sqlalchemy import update

    from app.core.db import get_sessionmaker, utcnow

    with get_sessionmaker(db_url)() as other:
        other.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()))
        other.commit()


def test_key_revoked_by_another_process_is_refused_within_the_cache_time(
    db_url: str, session: Session, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "auth_required", True)
    monkeypatch.setattr(settings, "key_cache_seconds", 0.5)
    row, plain = create_key(session=session, name="laptop")
    headers = {"Authorization": f"Bearer {plain}"}
    assert client.get("/models", headers=headers).status_code == 200
    _revoke_elsewhere(db_url, row.id)
    # Accepted at most until its cache entry expires (0.5 s; the deadline leaves room for a
    # loaded machine), refused from then on.
    deadline = time.monotonic() + 10
    while client.get("/models", headers=headers).status_code == 200:
        assert time.monotonic() < deadline, "the revoked key is still accepted"
    response = client.get("/models", headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"][0]["type"] == "invalid_api_key"


def test_without_the_key_cache_a_revocation_applies_at_once(
    db_url: str, session: Session, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "auth_required", True)
    monkeypatch.setattr(settings, "key_cache_seconds", 0)
    row, plain = create_key(session=session, name="laptop")
    headers = {"Authorization": f"Bearer {plain}"}
    assert client.get("/models", headers=headers).status_code == 200
    _revoke_elsewhere(db_url, row.id)
    assert client.get("/models", headers=headers).status_code == 401


def test_revoke_unknown_or_ambiguous_key_fails(
    db_url: str, session: Session, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "keys", "revoke", "rg_nothing", "--database-url", db_url)
    assert code == 1 and "rg_nothing" in err
    one, _ = create_key(session=session, name="a")
    two, _ = create_key(session=session, name="b")
    two.prefix = one.prefix  # prefixes are short: two keys may share one
    session.commit()
    code, _, err = _run(capsys, "keys", "revoke", one.prefix, "--database-url", db_url)
    assert code == 1 and "revoke by id" in err
    session.expire_all()
    assert session.get(ApiKey, one.id).revoked_at is None
