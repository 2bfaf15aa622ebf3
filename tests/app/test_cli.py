"""The ``regula`` command: migrate, keys, and serve's flag validation."""

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from app import cli
from app.core.config import settings
from app.core.db import make_engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration  # a subprocess
def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'regula.db'}"  # the folder does not exist yet
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate", "--database-url", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    engine = make_engine(url)
    assert {"jobs", "models", "datasets", "api_keys", "epoch_records"} <= set(
        inspect(engine).get_table_names()
    )
    engine.dispose()


def test_serve_rejects_invalid_flags(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    # Flags override settings fields and are validated like environment variables.
    monkeypatch.setattr(settings, "workers", settings.workers)
    monkeypatch.setattr(settings, "executor", settings.executor)
    assert cli.main(["serve", "--workers", "0"]) == 2
    assert "workers" in capsys.readouterr().err
    assert cli.main(["serve", "--workers", "1", "--executor", "carrier-pigeon"]) == 2
    assert "executor" in capsys.readouterr().err


def test_unknown_command_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["train"])
    assert info.value.code == 2
