"""Deployment files: lint the Dockerfile, validate the compose file, and run outside a container
every command the image runs (dependency install step, ``regula migrate``, ``regula serve`` with the
image's healthcheck, ``dask scheduler`` and ``dask worker`` with the compose healthchecks).

There is no Docker engine on the test machines, so the image itself is never built here; instead
each command is taken from the Dockerfile / docker-compose.yml text and executed on loopback.
"""

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"


def _tool(name: str) -> str:
    """The console script ``name`` from this interpreter's environment (the project's .venv)."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} not found next to {sys.executable}; run `pip install -e '.[dev]'`")
    return str(path)


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = DOCKERFILE.read_text()
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    pairs = []
    for item in logical:
        keyword, _, rest = item.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _exec_form(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    (args,) = [a for k, a in stage if k == keyword]
    if keyword == "HEALTHCHECK":
        args = args[args.index("CMD") + len("CMD") :].strip()
    return json.loads(args)


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, procs: Sequence[Any] = ()
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                pytest.fail(
                    f"process exited with {proc.returncode} while waiting for {what}:\n{out}"
                )
        if predicate():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    # A new session per process so teardown can signal its whole tree (dask nanny + worker child).
    handle = log.open("w")
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGULA_")}
    env.update(
        PYTHONPATH=str(ROOT),
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        REGULA_DATA_DIR=str(tmp_path / "artifacts"),
    )
    return env


def _run_healthcheck(test: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = test[1:] if test[0] in ("CMD", "CMD-SHELL") else test
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    # Guards the lint test above against a linter that passes everything (e.g. a stub binary).
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN cd /tmp\n")
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag
    assert "DL3008" in result.stdout  # unpinned apt package


def test_dockerfile_is_multistage_on_slim_python_311() -> None:
    stages = _stages()
    assert len(stages) >= 2
    base = re.search(r"PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text())
    assert base is not None
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base.group(1))
    # The runtime stage takes only the virtualenv from the build stage, not the build context.
    runtime = stages[-1]
    copies = [a for k, a in runtime if k == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]


def test_dockerfile_installs_dependencies_before_copying_source() -> None:
    build = _stages()[0]
    order = [(k, a) for k, a in build if k in ("COPY", "RUN")]
    pyproject = order.index(("COPY", "pyproject.toml ./"))
    deps = next(i for i, (k, a) in enumerate(order) if k == "RUN" and "requirements.txt" in a)
    source = next(i for i, (k, a) in enumerate(order) if k == "COPY" and a.startswith("app "))
    install = next(i for i, (k, a) in enumerate(order) if k == "RUN" and "--no-deps ." in a)
    assert pyproject < deps < source < install
    # Nothing but pyproject.toml may be copied before the dependency layer, or every source edit
    # would invalidate the cached dependency install.
    assert [a for k, a in order[:deps] if k == "COPY"] == ["pyproject.toml ./"]


def test_dockerfile_dependency_step_lists_exactly_the_runtime_dependencies(
    tmp_path: Path,
) -> None:
    (run,) = [a for k, a in _stages()[0] if k == "RUN" and "tomllib" in a]
    command = run.split(">", 1)[0].strip()  # python -c "..." (before the redirect)
    args = shlex.split(command)
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    result = subprocess.run(
        [sys.executable, *args[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert result.stdout.splitlines() == expected
    assert not any(line.startswith(("pytest", "ruff", "hadolint")) for line in expected)


def test_dockerfile_runs_as_non_root_with_healthcheck_and_data_volume() -> None:
    runtime = _stages()[-1]
    (user,) = [a for k, a in runtime if k == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0
    assert ("VOLUME", '["/data"]') in runtime
    env = _env(runtime)
    assert env["REGULA_DATABASE_URL"] == "sqlite:////data/regula.db"
    assert env["REGULA_DATA_DIR"] == "/data/artifacts"
    health = _exec_form(runtime, "HEALTHCHECK")
    assert health[0] == "python" and "/healthz" in health[-1] and "urllib" in health[-1]
    assert _exec_form(runtime, "CMD") == ["regula", "serve", "--host", "0.0.0.0"]


def test_dockerfile_bakes_in_no_secrets() -> None:
    for stage in _stages():
        names = list(_env(stage))
        names += [a.split("=")[0] for k, a in stage if k == "ARG"]
        for name in names:
            assert not re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", name, re.I), name
    assert "postgresql" not in DOCKERFILE.read_text()


def _dockerignore_excludes(path: str) -> bool:
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [pattern, pattern.replace("**/", "")]
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, c) for p in prefixes for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_build_inputs_and_drops_local_state() -> None:
    sources = []
    for keyword, args in _stages()[0]:
        if keyword == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    assert {"pyproject.toml", "README.md", "app", "engine", "migrations"} <= set(sources)
    for source in sources:
        assert not _dockerignore_excludes(source), source
    for local in [".git", ".venv", "tests", ".env", "regula.db", "data", "app/__pycache__"]:
        assert _dockerignore_excludes(local), local


# --------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_spec() -> None:
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("healthcheck:", "healthchek:", 1))
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "healthchek" in result.stdout


def test_compose_plain_up_starts_only_the_embedded_api() -> None:
    services = _compose()["services"]
    assert [name for name, s in services.items() if not s.get("profiles")] == ["api"]
    api = services["api"]
    env = api["environment"]
    assert env["REGULA_DATABASE_URL"] == "sqlite:////data/regula.db"
    assert env["REGULA_EXECUTOR"] == "local"
    assert env["REGULA_DATA_DIR"].startswith("/data/")
    volume = api["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in _compose()["volumes"]
    assert api["ports"][0].endswith(":8000")


def test_compose_scale_profile_has_api_postgres_scheduler_and_workers() -> None:
    compose = _compose()
    services = compose["services"]
    scale = {name for name, s in services.items() if "scale" in s.get("profiles", [])}
    assert scale == {"api-scale", "postgres", "scheduler", "worker"}

    api = services["api-scale"]
    assert api["environment"]["REGULA_EXECUTOR"] == "tcp://scheduler:8786"
    assert api["environment"]["REGULA_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in api["environment"]["REGULA_DATABASE_URL"]
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The embedded api and the scale api never fight over one host port.
    assert api["ports"][0].split(":")[0] != services["api"]["ports"][0].split(":")[0]

    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["scheduler"]["command"][:2] == ["dask", "scheduler"]

    worker = services["worker"]
    command = worker["command"]
    assert command[:3] == ["dask", "worker", "tcp://scheduler:8786"]
    assert command[command.index("--nthreads") + 1] == "1"
    assert "ports" not in worker and "container_name" not in worker  # so --scale worker=N works

    # Workers read the datasets the API wrote: same named volume, same REGULA_DATA_DIR under it.
    def data_mount(service: dict[str, Any]) -> tuple[str, str]:
        source, target = service["volumes"][0].split(":")[:2]
        assert source in compose["volumes"]
        return source, target

    assert data_mount(api) == data_mount(worker)
    data_dir = api["environment"]["REGULA_DATA_DIR"]
    assert worker["environment"]["REGULA_DATA_DIR"] == data_dir
    assert data_dir.startswith(data_mount(api)[1] + "/")
    for name in scale - {"postgres"}:
        assert services[name]["image"] == services["api"]["image"]  # one image, three roles


def test_compose_api_command_is_the_image_default() -> None:
    services = _compose()["services"]
    cmd = _exec_form(_stages()[-1], "CMD")
    assert services["api"]["command"] == cmd
    assert services["api-scale"]["command"] == cmd


# --------------------------------------------------------------------------------------------
# The image's commands, run outside the container
# --------------------------------------------------------------------------------------------


def test_regula_migrate_creates_the_schema_on_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "regula.db"
    env = _base_env(tmp_path) | {"REGULA_DATABASE_URL": f"sqlite:///{db}"}
    result = subprocess.run(
        [_tool("regula"), "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"api_keys", "datasets", "jobs", "models", "epoch_records"} <= tables
    from alembic.script import ScriptDirectory

    from app.core.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config(f"sqlite:///{db}")).get_current_head()
    assert version == head


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, dict[str, str], Path]]:
    """The image's CMD, bound to loopback on a free port, with the image's SQLite layout."""
    port = free_port()
    db = tmp_path / "data" / "regula.db"
    db.parent.mkdir()
    env = _base_env(tmp_path) | {
        "REGULA_DATABASE_URL": f"sqlite:///{db}",
        "REGULA_DATA_DIR": str(tmp_path / "data" / "artifacts"),
        "REGULA_PORT": str(port),
        "REGULA_WORKERS": "1",
    }
    cmd = _exec_form(_stages()[-1], "CMD")
    cmd[cmd.index("--host") + 1] = "127.0.0.1"  # tests talk to loopback only
    proc = _start([_tool(cmd[0]), *cmd[1:]], env, tmp_path / "serve.log")
    try:
        yield port, env, db
    finally:
        _stop(proc)


def test_image_cmd_migrates_then_serves_and_the_healthcheck_passes(
    served: tuple[int, dict[str, str], Path],
) -> None:
    _port, env, db = served
    health = _exec_form(_stages()[-1], "HEALTHCHECK")

    def healthy() -> bool:
        return _run_healthcheck(["CMD", *health], env).returncode == 0

    _wait_until(healthy, 90, "the image healthcheck to pass")
    with sqlite3.connect(db) as conn:
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version  # `regula serve` applied the migrations before serving
    # The same healthcheck fails when nothing listens on REGULA_PORT (it is not vacuous).
    other = env | {"REGULA_PORT": str(free_port())}
    assert _run_healthcheck(["CMD", *health], other).returncode != 0


def _localize(command: list[str], replacements: dict[str, str]) -> list[str]:
    return [replacements.get(arg, arg) for arg in command]


def test_compose_scheduler_and_worker_commands_run_and_pass_their_healthchecks(
    tmp_path: Path,
) -> None:
    services = _compose()["services"]
    scheduler_port, dashboard, worker_dashboard = free_port(), free_port(), free_port()
    address = f"tcp://127.0.0.1:{scheduler_port}"
    env = _base_env(tmp_path)

    scheduler_cmd = _localize(
        services["scheduler"]["command"],
        {"8786": str(scheduler_port), ":8787": f"127.0.0.1:{dashboard}"},
    )
    scheduler_cmd += ["--host", "127.0.0.1"]
    worker_cmd = _localize(
        services["worker"]["command"],
        {"tcp://scheduler:8786": address, ":8789": f"127.0.0.1:{worker_dashboard}"},
    )
    worker_cmd += ["--host", "127.0.0.1"]
    scheduler_health = [
        a.replace("8787", str(dashboard)) for a in services["scheduler"]["healthcheck"]["test"]
    ]
    worker_health = [
        a.replace("8789", str(worker_dashboard)) for a in services["worker"]["healthcheck"]["test"]
    ]

    procs = [_start([_tool("dask"), *scheduler_cmd[1:]], env, tmp_path / "scheduler.log")]
    try:
        _wait_until(
            lambda: _run_healthcheck(scheduler_health, env).returncode == 0,
            60,
            "the scheduler healthcheck",
            procs,
        )
        procs.append(_start([_tool("dask"), *worker_cmd[1:]], env, tmp_path / "worker.log"))
        _wait_until(
            lambda: _run_healthcheck(worker_health, env).returncode == 0,
            60,
            "the worker healthcheck",
            procs,
        )
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(1, timeout=30)
            info = client.scheduler_info()["workers"]
            assert [w["nthreads"] for w in info.values()] == [1]
            # The worker process can import the job body the API submits.
            where = client.submit(_job_module_file, pure=False).result(timeout=60)
        assert Path(where).resolve().is_relative_to(ROOT) or "site-packages" in where
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _job_module_file() -> str:
    import app.jobs.executor

    return str(app.jobs.executor.__file__)


def test_regular_wheel_install_migrates_outside_the_source_tree(tmp_path: Path) -> None:
    # The image installs the project as a regular wheel (not editable) and runs from
    # site-packages, so the migrations must ship inside the wheel.
    # Built from a copy of what the Dockerfile copies, so the build leaves nothing in the tree.
    context = tmp_path / "context"
    context.mkdir()
    for keyword, args in _stages()[0]:
        if keyword == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                if (ROOT / source).is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                    shutil.copytree(ROOT / source, context / source, ignore=ignore)
                elif (ROOT / source).exists():
                    shutil.copy(ROOT / source, context / source)
    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels)]
    build = subprocess.run([*pip_wheel, str(context)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("regula-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)  # a pure-Python wheel installs by unpacking
    assert {
        "app/cli.py",
        "app/jobs/executor.py",
        "app/web/static/index.html",
        "engine/__init__.py",
        "migrations/env.py",
    } <= names
    assert any(re.fullmatch(r"migrations/versions/\w+\.py", n) for n in names)

    db = tmp_path / "wheel.db"
    env = _base_env(tmp_path) | {"PYTHONPATH": str(site), "REGULA_DATABASE_URL": f"sqlite:///{db}"}
    script = "import app, engine; print(app.__file__); from app.cli import main; main(['migrate'])"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(result.stdout.splitlines()[0]).is_relative_to(site)
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "models", "epoch_records", "alembic_version"} <= tables


# --------------------------------------------------------------------------------------------
# Makefile and .ci/run
# --------------------------------------------------------------------------------------------


def _make_env() -> dict[str, str]:
    # Under `make test` these tell a nested make it is a sub-make (it then prints
    # "Entering directory" lines and shares the jobserver); these tests want a top-level make.
    nested = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "PYTEST_ARGS", "VENV")
    return {k: v for k, v in os.environ.items() if k not in nested}


def _stub_bin(folder: Path, scripts: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f'#!/bin/sh\necho {name} "$@" >> {folder / "calls.log"}\n{body}\n')
        path.chmod(0o755)


@pytest.mark.parametrize(
    ("codes", "fails"),
    [
        ({}, False),
        ({"pytest": 5}, False),  # no tests collected is reported, not a failure
        ({"pytest": 1}, True),
        ({"ruff": 1}, True),
        ({"mypy": 1}, True),
    ],
)
def test_make_test_fails_when_a_check_fails_and_tolerates_no_tests(
    tmp_path: Path, codes: dict[str, int], fails: bool
) -> None:
    venv = tmp_path / "venv"
    tools = ("python", "pip", "ruff", "mypy", "pytest")
    _stub_bin(venv / "bin", {tool: f"exit {codes.get(tool, 0)}" for tool in tools})
    (venv / ".dev-installed").touch()
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "test", f"VENV={venv}", "PYTEST_ARGS="],
        cwd=ROOT,
        env=_make_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode != 0) == fails, result.stdout + result.stderr
    if not fails:
        ran = {line.split()[0] for line in (venv / "bin" / "calls.log").read_text().splitlines()}
        assert {"ruff", "mypy", "pytest"} <= ran


def test_make_test_creates_the_venv_when_missing(tmp_path: Path) -> None:
    venv = tmp_path / "fresh"
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "test", f"VENV={venv}"], cwd=ROOT,
        env=_make_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"python3 -m venv {venv}"
    assert any("pip install --quiet -e '.[dev]'" in line for line in lines)


def test_ci_run_runs_make_test_and_fails_when_it_fails(tmp_path: Path) -> None:
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    for code in (0, 3):
        stubs = tmp_path / f"bin{code}"
        _stub_bin(stubs, {"make": f"exit {code}"})
        env = os.environ | {"PATH": f"{stubs}:{os.environ['PATH']}", "CI": "true"}
        result = subprocess.run(
            ["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == code, result.stdout + result.stderr
        assert (stubs / "calls.log").read_text().splitlines() == ["make test"]
