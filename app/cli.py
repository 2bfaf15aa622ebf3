"""The ``regula`` command: ``serve``, ``migrate``, ``keys create|list|revoke``, ``train``,
``jobs watch``.

Settings come from ``app.core.config.settings`` (``REGULA_*`` variables, ``.env``); a flag given
on the command line overrides the matching field for this process.
"""

import argparse
import json
import mimetypes
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.core.config import settings


def _migrate() -> None:
    from app.core import migrate

    if settings.database_url.startswith("sqlite:///"):
        # SQLite creates the file but not its folder.
        path = settings.database_url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.database_url)


def cmd_serve(args: argparse.Namespace) -> int:
    """Migrate the database, then serve the API (the app's lifespan starts the executor)."""
    import uvicorn

    for field in ("host", "port", "workers", "executor", "database_url", "data_dir"):
        value = getattr(args, field)
        if value is not None:
            setattr(settings, field, type(getattr(settings, field))(value))
    # Validate the overrides the way the environment would have been validated.
    try:
        type(settings).model_validate(settings.model_dump())
    except ValidationError as exc:
        print(f"regula serve: {exc}", file=sys.stderr)
        return 2
    _migrate()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    from app.core import logs

    logs.configure()
    from app.main import app

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Answer in-flight requests, then stop; the lifespan shuts the executor down.
        timeout_graceful_shutdown=10,
    )
    return 0


MLFLOW_PORT = 5000  # the default port of `mlflow models serve`


def cmd_serve_model(args: argparse.Namespace) -> int:
    """Serve one stored model with MLflow's scoring protocol (/invocations, /ping, /version)."""
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from app.core.db import get_sessionmaker
    from app.core.errors import RegulaError

    if args.database_url:
        settings.database_url = args.database_url
    host = args.host or settings.host
    from app.serving.mlflow import create_model_app
    from app.serving.service import load_any

    try:
        with get_sessionmaker(settings.database_url)() as session:
            item = load_any(session=session, model_id=args.model_id)
    except RegulaError as exc:
        print(f"regula serve-model: {exc.msg}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(
            f"regula serve-model: cannot read the database ({exc.__class__.__name__}); is "
            "--database-url right and migrated (`regula migrate`)?",
            file=sys.stderr,
        )
        return 2
    from app.core import logs

    logs.configure()
    print(
        f"serving model {item.id} ({len(item.required)} of {len(item.names)} features read) at "
        f"http://{host}:{args.port}/invocations",
        file=sys.stderr,
    )
    uvicorn.run(
        create_model_app(item),
        host=host,
        port=args.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )
    return 0


def add_serve_model_command(commands: Any) -> None:
    """``regula serve-model MODEL_ID``: ``mlflow models serve`` for one Regula model."""
    serve_model = commands.add_parser(
        "serve-model",
        help="serve one model with MLflow's scoring protocol (like `mlflow models serve`)",
        description="Loads MODEL_ID from the database and answers POST /invocations "
        "(dataframe_split, dataframe_records, instances, inputs or text/csv), GET /ping, "
        "/health and /version. No API key is asked: whoever reaches the port may score the "
        "model. Exit status 2 if the model is missing or unreadable.",
    )
    serve_model.add_argument("model_id", metavar="MODEL_ID", help="the model's id")
    serve_model.add_argument(
        "--port", type=int, default=MLFLOW_PORT, help=f"bind port (default {MLFLOW_PORT})"
    )
    serve_model.add_argument("--host", help=f"bind address (default {settings.host})")
    serve_model.add_argument("--database-url", help="SQLAlchemy URL (default REGULA_DATABASE_URL)")
    serve_model.set_defaults(func=cmd_serve_model)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the database schema to the newest revision."""
    if args.database_url:
        settings.database_url = args.database_url
    _migrate()
    print(f"database at head: {settings.database_url.split('@')[-1]}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create an API key and print it (shown once; only its hash is stored)."""
    from app.core.auth import create_key
    from app.core.db import get_sessionmaker

    if args.database_url:
        settings.database_url = args.database_url
    with get_sessionmaker(settings.database_url)() as session:
        row, plain = create_key(session=session, name=args.name)
    print(plain)
    print(
        f"key {row.prefix}... created for {args.name!r} (id {row.id}); it is shown only once.",
        file=sys.stderr,
    )
    return 0


# --- train / jobs watch: a client of a running server ---------------------------------------------

# Exit codes of the client commands.
EXIT_JOB_FAILED = 1  # the job failed or was cancelled (its reason is printed)
EXIT_REJECTED = 2  # the server refused (4xx; its message is printed), or a local file is bad
EXIT_UNREACHABLE = 3  # no server answered at --server
RECONNECTS = 5  # a dropped event stream is resumed (Last-Event-ID) this many times in a row


class ClientError(Exception):
    """A reason to stop, printed as one line, with the exit code to return."""

    def __init__(self, msg: str, code: int) -> None:
        super().__init__(msg)
        self.msg = msg
        self.code = code


def _http(args: argparse.Namespace) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    # Reads wait longer than the stream's 15 s pings, so an idle (queued) job is not a timeout.
    timeout = httpx.Timeout(30.0, read=60.0)
    return httpx.Client(base_url=args.server.rstrip("/"), headers=headers, timeout=timeout)


def _messages(response: Any) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, list) and detail:
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return str(detail or response.reason_phrase)


def _call(client: Any, method: str, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
    """One request; a ClientError naming ``what`` on 4xx/5xx or when no server answers."""
    import httpx

    try:
        response = client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise ClientError(
            f"cannot reach the server at {client.base_url} ({exc.__class__.__name__}: {exc}); "
            "is `regula serve` running? (--server URL)",
            EXIT_UNREACHABLE,
        ) from exc
    if response.status_code >= 400:
        raise ClientError(
            f"{what} failed ({response.status_code}): {_messages(response)}",
            EXIT_REJECTED,
        )
    result: dict[str, Any] = response.json()
    return result


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, str, str | None]]:
    """``(event, data, id)`` per Server-Sent Event in ``lines`` (comments skipped)."""
    event, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data), event_id
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


class Progress:
    """A Keras-Progbar-like line per job: epoch n/N, loss, val_loss, zero fraction, ETA."""

    def __init__(self, job_id: str, out: Any) -> None:
        self.job_id = job_id
        self.out = out
        self.bar: Any = None
        self.seconds: list[float] = []

    def status(self, job: dict[str, Any]) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=int(job.get("spec", {}).get("epochs") or 0) or None,
                desc=f"job {self.job_id[:8]}",
                unit="epoch",
                file=self.out,
                dynamic_ncols=True,
                mininterval=0.2,
                bar_format="{desc}: {n_fmt}/{total_fmt} |{bar:20}| [{elapsed}{postfix}]",
            )
        self.bar.set_description_str(f"job {self.job_id[:8]} {job['status']}")

    def epoch(self, record: dict[str, Any]) -> None:
        if self.bar is None:
            self.status({"status": "running"})
        if record.get("seconds") is not None:
            self.seconds.append(float(record["seconds"]))
        left = (self.bar.total or 0) - record["epoch"]
        postfix = {}
        for key in ("loss", "val_loss"):
            if record.get(key) is not None:
                postfix[key] = f"{record[key]:.4g}"
        if record.get("zero_fraction") is not None:
            postfix["zero"] = f"{record['zero_fraction']:.1%}"
        if self.seconds and left > 0:
            # From the epochs' own durations: a replay after a reconnect does not skew it.
            postfix["eta"] = f"{left * sum(self.seconds) / len(self.seconds):.1f}s"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(record["epoch"] - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def follow(client: Any, job_id: str, out: Any = sys.stderr) -> dict[str, Any]:
    """Show a job's progress from its event stream until ``end``; return the ``end`` data.

    A dropped connection is resumed with Last-Event-ID (no epoch twice), up to RECONNECTS times.
    """
    import httpx

    progress = Progress(job_id, out)
    last, failures = 0, 0
    try:
        while True:
            headers = {"Last-Event-ID": str(last)} if last else {}
            try:
                with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise ClientError(
                            f"watching job {job_id} failed ({response.status_code}): "
                            f"{_messages(response)}",
                            EXIT_REJECTED,
                        )
                    for event, data, event_id in sse_events(response.iter_lines()):
                        failures = 0
                        payload = json.loads(data)
                        if event == "status":
                            progress.status(payload)
                        elif event == "epoch":
                            progress.epoch(payload)
                            last = int(event_id or payload["epoch"])
                        elif event == "end":
                            return dict(payload)
                        elif event == "error":
                            break  # the server says resume: reconnect below
            except httpx.TransportError as exc:
                failures += 1
                if failures > RECONNECTS:
                    raise ClientError(
                        f"lost the server at {client.base_url} while watching job {job_id} "
                        f"({exc.__class__.__name__}: {exc})",
                        EXIT_UNREACHABLE,
                    ) from exc
            else:
                failures += 1  # the stream closed without an end: resume it
                if failures > RECONNECTS:
                    raise ClientError(
                        f"the event stream of job {job_id} keeps closing early", EXIT_UNREACHABLE
                    )
            time.sleep(min(0.5 * 2**failures, 10.0))
    finally:
        progress.close()


def _report(client: Any, job_id: str, end: dict[str, Any]) -> int:
    """Print how the job ended; the dropped features of a trained model. Return the exit code."""
    status = end.get("status")
    if status == "succeeded":
        model_id = end["model_id"]
        sparsity = _call(client, "GET", f"/models/{model_id}/sparsity", "reading the sparsity")
        dropped = sparsity.get("dropped_features") or []
        total = len(dropped) + len(sparsity.get("selected_features") or [])
        print(f"job {job_id} succeeded: model {model_id}")
        print(
            f"dropped features ({len(dropped)} of {total}): "
            + (", ".join(dropped) if dropped else "none")
        )
        return 0
    reason = end.get("error") or (
        "it was cancelled" if status == "cancelled" else "no reason given"
    )
    print(f"regula: job {job_id} {status}: {reason}", file=sys.stderr)
    return EXIT_JOB_FAILED


def cmd_train(args: argparse.Namespace) -> int:
    """Upload a data file, submit a job with a spec file; with --follow, watch it train."""
    try:
        try:
            spec = json.loads(Path(args.spec).read_text())
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot read the spec {args.spec}: {exc}", EXIT_REJECTED) from exc
        if not isinstance(spec, dict):
            raise ClientError(f"the spec {args.spec} must be a JSON object", EXIT_REJECTED)
        data = Path(args.data)
        try:
            content = data.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read the data {data}: {exc}", EXIT_REJECTED) from exc
        media = mimetypes.guess_type(data.name)[0] or "application/octet-stream"
        with _http(args) as client:
            dataset = _call(
                client,
                "POST",
                "/datasets",
                f"uploading {data.name}",
                files={"file": (data.name, content, media)},
            )
            print(f"dataset {dataset['id']}: {dataset.get('rows')} rows", file=sys.stderr)
            job = _call(
                client,
                "POST",
                "/jobs",
                "submitting the job",
                json={**spec, "dataset_id": dataset["id"]},
            )
            print(job["id"])
            if not args.follow:
                return 0
            return _report(client, job["id"], follow(client, job["id"]))
    except ClientError as exc:
        print(f"regula train: {exc.msg}", file=sys.stderr)
        return exc.code


def cmd_jobs_watch(args: argparse.Namespace) -> int:
    """Follow an existing job's progress until it ends."""
    try:
        with _http(args) as client:
            return _report(client, args.job_id, follow(client, args.job_id))
    except ClientError as exc:
        print(f"regula jobs watch: {exc.msg}", file=sys.stderr)
        return exc.code


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=f"http://{settings.host}:{settings.port}",
        help="the Regula server (default http://REGULA_HOST:REGULA_PORT)",
    )
    parser.add_argument("--api-key", help="an API key (sent as 'Authorization: Bearer <key>')")


def add_training_commands(commands: Any) -> None:
    """``regula train`` and ``regula jobs watch``."""
    train = commands.add_parser(
        "train",
        help="upload a data file and train on it with a spec",
        description="Exit status: 0 trained; 1 the job failed or was cancelled; 2 the server "
        "refused the data or spec (4xx); 3 no server answered.",
    )
    train.add_argument("--data", required=True, help="CSV or Parquet file to upload")
    train.add_argument("--spec", required=True, help="TrainingSpec JSON file (dataset_id is set)")
    train.add_argument("--follow", action="store_true", help="show progress until the job ends")
    _add_client_options(train)
    train.set_defaults(func=cmd_train)

    jobs = commands.add_parser("jobs", help="follow jobs on a server")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    watch = job_commands.add_parser(
        "watch",
        help="show a job's progress until it ends",
        description="Exit status as for `regula train --follow`.",
    )
    watch.add_argument("job_id", help="the job's id")
    _add_client_options(watch)
    watch.set_defaults(func=cmd_jobs_watch)


def cmd_keys_list(args: argparse.Namespace) -> int:
    """Print every key: id, name, prefix, created, revoked (never the key itself)."""
    from app.core.auth import list_keys
    from app.core.db import get_sessionmaker

    if args.database_url:
        settings.database_url = args.database_url
    with get_sessionmaker(settings.database_url)() as session:
        rows = list_keys(session=session)
    table = [("ID", "NAME", "PREFIX", "CREATED", "REVOKED")]
    for row in rows:
        revoked = row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else "-"
        created = row.created_at.isoformat(timespec="seconds")
        table.append((row.id, row.name, row.prefix, created, revoked))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke a key by id or prefix; requests with it get 401 within REGULA_KEY_CACHE_SECONDS."""
    from app.core.auth import revoke_key
    from app.core.db import get_sessionmaker
    from app.core.errors import RegulaError

    if args.database_url:
        settings.database_url = args.database_url
    with get_sessionmaker(settings.database_url)() as session:
        try:
            row = revoke_key(session=session, id_or_prefix=args.key)
        except RegulaError as exc:
            print(f"regula keys revoke: {exc.msg}", file=sys.stderr)
            return 1
    print(f"key {row.prefix}... ({row.name!r}, id {row.id}) revoked", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``regula``."""
    parser = argparse.ArgumentParser(
        prog="regula", description="Train regularized NumPy models over HTTP."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate the database and serve the API")
    serve.add_argument("--host", help=f"bind address (default {settings.host})")
    serve.add_argument("--port", type=int, help=f"bind port (default {settings.port})")
    serve.add_argument(
        "--workers", type=int, help=f"local Dask worker processes (default {settings.workers})"
    )
    serve.add_argument("--executor", help="local | tcp://scheduler:8786 | inline")
    serve.add_argument("--database-url", help="SQLAlchemy URL (default REGULA_DATABASE_URL)")
    serve.add_argument("--data-dir", help="folder for dataset files (default REGULA_DATA_DIR)")
    serve.set_defaults(func=cmd_serve)
    add_serve_model_command(commands)

    migrate = commands.add_parser("migrate", help="upgrade the database schema to head")
    migrate.add_argument("--database-url", help="SQLAlchemy URL (default REGULA_DATABASE_URL)")
    migrate.set_defaults(func=cmd_migrate)

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--database-url", help="SQLAlchemy URL (default REGULA_DATABASE_URL)")
    create.set_defaults(func=cmd_keys_create)
    add_training_commands(commands)
    listing = key_commands.add_parser("list", help="list keys: id, name, prefix, created, revoked")
    listing.add_argument("--database-url", help="SQLAlchemy URL (default REGULA_DATABASE_URL)")
    listing.set_defaults(func=cmd_keys_list)
    revoke = key_commands.add_parser("revoke", help="revoke a key (its requests then get 401)")
    revoke.add_argument("key", metavar="ID_OR_PREFIX", help="the key's id or its prefix")
    revoke.add_argument("--database-url", help="SQLAlchemy URL (default REGULA_DATABASE_URL)")
    revoke.set_defaults(func=cmd_keys_revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``regula`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
