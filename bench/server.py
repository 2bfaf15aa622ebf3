"""Start real servers for sections 3-5: ``regula serve`` on a temp SQLite + data dir, and the floor.

Everything binds to 127.0.0.1 on a free port, runs in its own process group (so the Dask workers
that ``regula serve`` starts stop with it), and is stopped by the id of the process started here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server subprocess: its base URL, process, temp folder and log file."""

    name: str
    proc: subprocess.Popen
    port: int
    tmp: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _python_env() -> dict[str, str]:
    env = os.environ.copy()
    # The repo first on the path: the server must import this checkout's app/ and engine/.
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def _wait_ready(server: Server, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            r = httpx.get(server.url + path, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.name} not ready after {timeout:.0f} s ({last}):\n{server.log_tail()}"
    )


def _stop(server: Server) -> None:
    if server.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGTERM)  # our own process group, by its id
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)
    # Dask workers may outlive the API process by a moment: reap the rest of the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def regula_serve(
    *, workers: int = 2, env: dict[str, str] | None = None, timeout: float = 120.0
) -> Iterator[Server]:
    """``regula serve`` on a fresh temp SQLite database and data dir; yields the running server."""
    tmp = Path(tempfile.mkdtemp(prefix="regula-bench-"))
    port = free_port()
    full_env = _python_env()
    full_env.update(
        {
            "REGULA_DATABASE_URL": f"sqlite:///{tmp / 'regula.db'}",
            "REGULA_DATA_DIR": str(tmp / "data"),
            "REGULA_HOST": HOST,
            "REGULA_PORT": str(port),
            "REGULA_WORKERS": str(workers),
            "REGULA_EXECUTOR": "local",
            "REGULA_AUTH_REQUIRED": "false",
            # Section 4 uploads a ~200 MB CSV; the default limit is 200 MB.
            "REGULA_MAX_UPLOAD_MB": "2048",
        }
    )
    full_env.update(env or {})
    script = Path(sys.executable).parent / "regula"
    cmd = (
        [str(script), "serve"]
        if script.exists()
        else [
            sys.executable,
            "-c",
            "import sys; from app.cli import main; sys.exit(main())",
            "serve",
        ]
    )
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=tmp, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server("regula serve", proc, port, tmp, log, full_env)
    try:
        _wait_ready(server, "/readyz", timeout)
        yield server
    finally:
        _stop(server)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def bare_fastapi(*, log_level: str = "info", timeout: float = 30.0) -> Iterator[Server]:
    """The floor: ``bench.bare_app`` under uvicorn with ``regula serve``'s settings.

    ``regula serve`` calls ``uvicorn.run(app, host, port, log_level=...)``: one process, loop and
    HTTP parser on "auto" (uvloop and httptools when installed), access log on. Same here.
    """
    tmp = Path(tempfile.mkdtemp(prefix="regula-bench-bare-"))
    port = free_port()
    code = (
        "import uvicorn; from bench.bare_app import app; "
        f"uvicorn.run(app, host={HOST!r}, port={port}, log_level={log_level!r}, "
        "timeout_graceful_shutdown=10)"
    )
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=_python_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server("bare FastAPI", proc, port, tmp, log)
    try:
        _wait_ready(server, "/healthz", timeout)
        yield server
    finally:
        _stop(server)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def raw_server(duration: float) -> Iterator[Server]:
    """A near-zero-work HTTP responder (``bench.loadgen raw-server``): the client's ceiling."""
    tmp = Path(tempfile.mkdtemp(prefix="regula-bench-raw-"))
    port = free_port()
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                "raw-server",
                "--port",
                str(port),
                "--duration",
                str(duration),
            ],
            cwd=REPO,
            env=_python_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server("raw responder", proc, port, tmp, log)
    try:
        deadline = time.monotonic() + 15
        while "ready" not in server.log_tail() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield server
    finally:
        _stop(server)
        shutil.rmtree(tmp, ignore_errors=True)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (from /proc/<pid>/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


def status_kb(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` field in kB (VmRSS, VmHWM), 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/<pid>/clear_refs``); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


_SHARED: dict[str, object] = {}


@contextlib.contextmanager
def regula_for(*, quick: bool) -> Iterator[Server]:
    """A fresh ``regula serve`` per section in full runs; one shared server in quick mode.

    Starting the service (migrations, Dask LocalCluster) takes seconds, which would dominate a smoke
    run; full runs keep sections independent (e.g. section 4's memory figure needs a fresh process).
    Call ``close_shared()`` at the end of a run.
    """
    if not quick:
        with regula_serve() as server:
            yield server
        return
    if "server" not in _SHARED:
        stack = contextlib.ExitStack()
        _SHARED["stack"] = stack
        _SHARED["server"] = stack.enter_context(regula_serve())
    yield _SHARED["server"]  # type: ignore[misc]


def close_shared() -> None:
    """Stop the quick mode's shared server, if one was started."""
    stack = _SHARED.pop("stack", None)
    _SHARED.pop("server", None)
    if stack is not None:
        stack.close()  # type: ignore[attr-defined]
