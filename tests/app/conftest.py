"""API tests run on a temporary SQLite file migrated by Alembic, handed in through get_db.

Alembic runs once per test session into a template file; each test gets a copy of it.
"""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.core import migrate
from app.core.config import settings
from app.core.db import get_db, get_sessionmaker


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per test session."""
    path = tmp_path_factory.mktemp("template") / "regula.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def db_url(tmp_path: Path, template_db: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite database at head, with settings pointing at it and at a temp data dir."""
    shutil.copyfile(template_db, tmp_path / "regula.db")
    url = f"sqlite:///{tmp_path / 'regula.db'}"
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
