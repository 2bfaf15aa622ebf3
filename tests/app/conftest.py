"""API tests run on a temporary SQLite file migrated by Alembic, handed in through get_db."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.core import migrate
from app.core.config import settings
from app.core.db import get_db, get_sessionmaker


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite database at head, with settings pointing at it and at a temp data dir."""
    url = f"sqlite:///{tmp_path / 'regula.db'}"
    migrate.upgrade(url)
    monkeypatch.setattr(settings, "database_url", url)
    monkeypatch.setattr(settings, "data_dir", tmp_path / "data")
    monkeypatch.setattr(settings, "executor", "inline")
    monkeypatch.setattr(settings, "auth_required", False)
    return url


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    """A session on the test database, for reading rows the API wrote."""
    with get_sessionmaker(db_url)() as s:
        yield s


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    """A client of a fresh app whose get_db yields sessions on the test database."""
    from app.main import create_app

    app = create_app()

    def _get_db() -> Iterator[Session]:
        with get_sessionmaker(db_url)() as s:
            yield s

    app.dependency_overrides[get_db] = _get_db
    with TestClient(app) as c:
        yield c
