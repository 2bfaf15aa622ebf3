"""The ``regula`` command: ``serve``, ``migrate``, ``keys create|list|revoke``.

Settings come from ``app.core.config.settings`` (``REGULA_*`` variables, ``.env``); a flag given
on the command line overrides the matching field for this process.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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
    """Revoke a key by id or prefix; requests with it get 401 from now on."""
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

    migrate = commands.add_parser("migrate", help="upgrade the database schema to head")
    migrate.add_argument("--database-url", help="SQLAlchemy URL (default REGULA_DATABASE_URL)")
    migrate.set_defaults(func=cmd_migrate)

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--database-url", help="SQLAlchemy URL (default REGULA_DATABASE_URL)")
    create.set_defaults(func=cmd_keys_create)
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
