"""A real ``regula serve`` subprocess on a free port, configured only through ``REGULA_*`` env.

``regula_server`` is a factory fixture: ``regula_server(env={...})`` starts a server and waits for
/readyz; every server it started is stopped (SIGTERM, then SIGKILL) at teardown, its worker
processes too. The defaults are the embedded deployment (SQLite file and data folder in a temp
directory, a Dask LocalCluster of one worker); pass e.g. ``REGULA_DATABASE_URL=postgresql+psycopg://...``
and ``REGULA_EXECUTOR=tcp://127.0.0.1:8786`` to run against PostgreSQL and an external scheduler.
A stopped server can be started again on the same database and data folder (``server.start()``).
"""

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
FINISHED = ("succeeded", "failed", "cancelled")


# Ports for the servers the tests start come from below the kernel's ephemeral range (32768-60999
# by default on Linux), which bind(("", 0)) and outgoing connections draw from, and each
# pytest-xdist worker has a block of its own: between this check and the server's own bind, no
# client socket and no server of the other worker can take the port.
PORT_BASE, PORT_BLOCK, PORT_BLOCKS = 16384, 4096, 4
_next_port = random.randrange(PORT_BLOCK)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody uses right now, from this xdist worker's block."""
    global _next_port
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # set by pytest-xdist: gw0, gw1, ...
    index = int(worker.removeprefix("gw")) if worker.removeprefix("gw").isdigit() else 0
    base = PORT_BASE + (index % PORT_BLOCKS) * PORT_BLOCK
    for _ in range(PORT_BLOCK):
        port = base + _next_port % PORT_BLOCK
        _next_port += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {base}-{base + PORT_BLOCK - 1}")


def _alive(process: psutil.Process) -> bool:
    """Whether ``process`` still runs (not exited, not a zombie, its pid not reused)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class RegulaServer:
    """One ``regula serve`` process (restartable) with its environment and log."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env: dict[str, str] = {
            **os.environ,
            "REGULA_DATABASE_URL": f"sqlite:///{workdir / 'regula.db'}",
            "REGULA_DATA_DIR": str(workdir / "data"),
            "REGULA_EXECUTOR": "local",
            "REGULA_WORKERS": "1",
            "REGULA_HOST": "127.0.0.1",
            "REGULA_PORT": str(self.port),
            "REGULA_HEARTBEAT_SECONDS": "0.5",
            "REGULA_STALE_AFTER_SECONDS": "5",
            "REGULA_AUTH_REQUIRED": "false",
            "REGULA_LOG_LEVEL": "info",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            **(env or {}),
        }
        if "REGULA_PORT" in (env or {}):
            self.port = int(self.env["REGULA_PORT"])
            self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._children: list[psutil.Process] = []

    @property
    def log_path(self) -> Path:
        return self.workdir / f"server-{self.starts}.log"

    def start(self, timeout: float = 120.0) -> "RegulaServer":
        """Start ``python -m app.cli serve`` and wait until /readyz answers 200."""
        assert self.proc is None, "already running"
        self.starts += 1
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise AssertionError(f"regula serve exited with {code}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self._children = self._descendants()
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"regula serve did not become ready in {timeout} s:\n{self.logs()}")

    def _descendants(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _reap_children(self, children: list[psutil.Process]) -> None:
        # Worker processes of a crashed (or slow to stop) server: kill them by pid, and wait until
        # they are dead. An orphan that has exited stays a zombie until the init process reaps it,
        # which some inits do only every second or so: a zombie is dead enough.
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        deadline = time.monotonic() + 30
        while (alive := [c for c in children if _alive(c)]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive, f"server processes still alive after SIGKILL: {alive}"

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (graceful: the lifespan closes the executor); SIGKILL if it hangs."""
        if self.proc is None:
            return None
        children = self._descendants() or self._children
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=30)
        self._reap_children(children)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the server (a crash) and its worker processes."""
        if self.proc is None:
            return
        children = self._descendants() or self._children
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._reap_children(children)
        self.proc = None

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client for this server."""
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def logs(self, tail: int = 8000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""


ServerFactory = Callable[..., RegulaServer]


@pytest.fixture
def regula_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Factory: ``regula_server(env=None, workdir=None, start=True) -> RegulaServer``."""
    servers: list[RegulaServer] = []

    def make(
        env: dict[str, str] | None = None, workdir: Path | None = None, start: bool = True
    ) -> RegulaServer:
        server = RegulaServer(workdir or tmp_path_factory.mktemp("regula"), env)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.stop(timeout=30)


def wait_for_job(
    client: httpx.Client, job_id: str, timeout: float = 120.0, statuses: tuple[str, ...] = FINISHED
) -> dict[str, Any]:
    """Poll GET /jobs/{id} until its status is in ``statuses``."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in statuses:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job.get('status')!r} after {timeout} s: {job}")


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegulaServer]:
    """One embedded-default server shared by a module's tests, stopped after the module."""
    server = RegulaServer(tmp_path_factory.mktemp("regula-module"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def breast_cancer_csv() -> str:
    """scikit-learn's breast_cancer table as CSV text: 30 numeric features and a 0/1 ``label``."""
    import csv
    import io

    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*(str(n) for n in data.feature_names), "label"])
    for row, label in zip(data.data, data.target, strict=True):
        writer.writerow([*(f"{v:.6g}" for v in row), int(label)])
    return out.getvalue()
