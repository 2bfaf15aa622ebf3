"""The ORM and the Alembic head agree, and the migrations run down to base and back up."""

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.core import migrate
from app.core.db import Base, make_engine

TABLES = {
    "alembic_version",
    "api_keys",
    "datasets",
    "jobs",
    "epoch_records",
    "models",
    "path_points",
    "path_results",
}


def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_orm_metadata_matches_alembic_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'head.db'}"
    migrate.upgrade(url)
    assert _tables(url) == TABLES
    assert _diff(url) == []


def test_downgrade_to_base_and_upgrade_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    migrate.upgrade(url)
    migrate.downgrade(url, "base")
    assert _tables(url) <= {"alembic_version"}
    migrate.upgrade(url)
    assert _tables(url) == TABLES
    assert _diff(url) == []
