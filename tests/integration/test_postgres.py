"""PostgreSQL: migrations from empty, down to base and up again, ORM/migration agreement, and a
race-free job claim (the same checks on SQLite where they apply).

Each PostgreSQL test runs in a database of its own (``regula_test_<random>``), created and dropped
here; the tests skip when no server answers on 127.0.0.1:5432.
"""

import multiprocessing
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, select, text
from sqlalchemy.orm import sessionmaker

from app.core import migrate
from app.core.db import Base, make_engine
from app.jobs.orm import Job

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
TABLES = {"api_keys", "datasets", "jobs", "models", "epoch_records", "path_points", "path_results"}


def _pg_admin_engine() -> Engine:
    # AUTOCOMMIT: CREATE/DROP DATABASE cannot run inside a transaction block.
    return create_engine(
        f"{PG_SERVER}/test",
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
    )


def _postgres_available() -> str | None:
    try:
        engine = _pg_admin_engine()
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means "not here"
        return f"PostgreSQL not reachable on 127.0.0.1:5432: {exc.__class__.__name__}"
    return None


def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database, yield its URL, drop it (even with connections still open)."""
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    name = f"regula_test_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database."""
    yield from fresh_postgres_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh empty database on each backend the service supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'regula.db'}"
    else:
        yield from fresh_postgres_database()


def _head() -> str:
    head = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _version(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------


def test_migrations_apply_to_an_empty_postgres_database(pg_url: str) -> None:
    assert _tables(pg_url) == set()
    migrate.upgrade(pg_url)
    assert _tables(pg_url) == TABLES | {"alembic_version"}
    assert _version(pg_url) == _head()


def test_migrations_downgrade_to_base_and_upgrade_again(any_url: str) -> None:
    migrate.upgrade(any_url)
    migrate.downgrade(any_url, "base")
    assert _tables(any_url) == {"alembic_version"}
    assert _version(any_url) is None
    migrate.upgrade(any_url)
    assert _tables(any_url) == TABLES | {"alembic_version"}
    assert _version(any_url) == _head()


def test_orm_and_migrations_agree(any_url: str) -> None:
    migrate.upgrade(any_url)
    engine = make_engine(any_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_regula_migrate_command_on_postgres(pg_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGULA_")}
    env |= {"REGULA_DATABASE_URL": pg_url, "REGULA_DATA_DIR": str(tmp_path / "artifacts")}
    regula = Path(sys.executable).parent / "regula"
    result = subprocess.run(
        [str(regula), "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert _tables(pg_url) == TABLES | {"alembic_version"}
    assert _version(pg_url) == _head()
    # Running it again on an up-to-date database is a no-op, not an error.
    again = subprocess.run(
        [str(regula), "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr


# --------------------------------------------------------------------------------------------
# The job claim
# --------------------------------------------------------------------------------------------


def _queued_jobs(url: str, count: int) -> list[str]:
    engine = make_engine(url)
    try:
        with sessionmaker(bind=engine)() as session:
            jobs = [Job(spec={"epochs": 1}, status="queued") for _ in range(count)]
            session.add_all(jobs)
            session.commit()
            return [job.id for job in jobs]
    finally:
        engine.dispose()


def _claim_in_thread(url: str, job_ids: list[str], contenders: int) -> dict[str, list[int]]:
    from app.jobs.state import claim

    engine = make_engine(url, pool_size=contenders, max_overflow=0)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    wins: dict[str, list[int]] = {job_id: [] for job_id in job_ids}
    errors: list[BaseException] = []
    lock = threading.Lock()
    for job_id in job_ids:
        barrier = threading.Barrier(contenders)

        def contend(job_id: str = job_id, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait(timeout=30)
                attempt = claim(sessions, job_id, "test:1")
            except BaseException as exc:  # surfaced below; a thread must not swallow it
                errors.append(exc)
                return
            if attempt is not None:
                with lock:
                    wins[job_id].append(attempt)

        threads = [threading.Thread(target=contend) for _ in range(contenders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    engine.dispose()
    assert errors == []
    return wins


def _claim_in_process(url: str, job_id: str, barrier: Any, results: Any) -> None:
    from app.jobs.body import worker_name
    from app.jobs.state import claim

    engine = make_engine(url)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    with sessions() as session:  # connect before the barrier so the UPDATEs really overlap
        session.execute(text("SELECT 1"))
    barrier.wait(timeout=60)
    results.put((os.getpid(), claim(sessions, job_id, worker_name())))
    engine.dispose()


def _assert_claimed_once(url: str, wins: dict[str, list[int]]) -> None:
    assert {job_id: len(attempts) for job_id, attempts in wins.items()} == dict.fromkeys(wins, 1)
    assert all(attempts == [1] for attempts in wins.values())
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Job.id, Job.status, Job.attempts, Job.worker).where(Job.id.in_(wins))
            ).all()
    finally:
        engine.dispose()
    assert len(rows) == len(wins)
    for row in rows:
        assert (row.status, row.attempts) == ("running", 1)
        assert row.worker


def test_concurrent_claims_from_threads_run_a_job_once(any_url: str) -> None:
    migrate.upgrade(any_url)
    job_ids = _queued_jobs(any_url, 5)
    wins = _claim_in_thread(any_url, job_ids, contenders=8)
    _assert_claimed_once(any_url, wins)


def test_concurrent_claims_from_processes_run_a_job_once(any_url: str) -> None:
    migrate.upgrade(any_url)
    (job_id,) = _queued_jobs(any_url, 1)
    ctx = multiprocessing.get_context("spawn")
    contenders = 3
    barrier = ctx.Barrier(contenders)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_claim_in_process, args=(any_url, job_id, barrier, results))
        for _ in range(contenders)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    winners = [pid for pid, attempt in outcomes if attempt is not None]
    assert len(winners) == 1
    _assert_claimed_once(any_url, {job_id: [a for _, a in outcomes if a is not None]})
    # The row records which process won.
    engine = make_engine(any_url)
    try:
        with engine.connect() as conn:
            worker = conn.execute(select(Job.worker).where(Job.id == job_id)).scalar_one()
    finally:
        engine.dispose()
    assert worker.endswith(f":{winners[0]}")


def test_a_claimed_job_cannot_be_claimed_again(any_url: str) -> None:
    from app.jobs.state import claim

    migrate.upgrade(any_url)
    (job_id,) = _queued_jobs(any_url, 1)
    engine = make_engine(any_url)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    try:
        assert claim(sessions, job_id, "test:1") == 1
        assert claim(sessions, job_id, "test:1") is None
        assert claim(sessions, uuid.uuid4().hex, "test:1") is None  # no such job
    finally:
        engine.dispose()
