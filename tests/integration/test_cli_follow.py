"""``regula train --follow`` and ``regula jobs watch`` against a real ``regula serve``.

The CLI runs as a subprocess, as a user runs it: exit 0 with a progress bar and the dropped
features when the job trains; non-zero with the job's reason when it fails; non-zero with the
server's message on a 4xx, and with a clear line when no server answers.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import ROOT, RegulaServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(module_server: RegulaServer) -> RegulaServer:
    return module_server


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A regression CSV (y = 3a - 2b + noise; c and d are noise) and specs for it."""
    tmp = tmp_path_factory.mktemp("cli-files")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = 3 * X[:, 0] - 2 * X[:, 1] + 0.1 * rng.normal(size=300)
    table = np.column_stack([X, y])
    lines = ["a,b,c,d,y"] + [",".join(f"{v:.5f}" for v in row) for row in table]
    (tmp / "data.csv").write_text("\n".join(lines) + "\n")
    lasso = {
        "target": "y",
        "loss": "mse",
        "model": {"hidden_layers": []},
        "regularization": {"l1": 0.3},
        "optimizer": {"name": "adam", "learning_rate": 0.05},
        "epochs": 40,
        "batch_size": 32,
        "validation_split": 0.2,
    }
    (tmp / "lasso.json").write_text(json.dumps(lasso))
    diverging = {
        "target": "y",
        "loss": "mse",
        "model": {"hidden_layers": [8]},
        "optimizer": {"name": "sgd", "learning_rate": 50.0},
        "epochs": 20,
    }
    (tmp / "diverging.json").write_text(json.dumps(diverging))
    (tmp / "bad_target.json").write_text(json.dumps({**lasso, "target": "nope"}))
    names = ("data.csv", "lasso.json", "diverging.json", "bad_target.json")
    return {name: tmp / name for name in names}


def regula(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _train(server: RegulaServer, files: dict[str, Path], spec: str, *extra: str) -> Any:
    return regula(
        "train",
        "--data",
        str(files["data.csv"]),
        "--spec",
        str(files[spec]),
        "--server",
        server.url,
        *extra,
    )


def test_train_follow_exits_0_with_progress_and_dropped_features(
    server: RegulaServer, files: dict[str, Path]
) -> None:
    done = _train(server, files, "lasso.json", "--follow")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0]
    assert f"job {job_id} succeeded" in done.stdout
    # The Lasso keeps a and b and drops the two noise columns.
    assert "dropped features (2 of 4): c, d" in done.stdout
    assert "40/40" in done.stderr and "loss=" in done.stderr and "zero=" in done.stderr
    with server.client() as client:
        job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["epochs_done"] == 40


def test_jobs_watch_follows_an_existing_job(server: RegulaServer, files: dict[str, Path]) -> None:
    submitted = _train(server, files, "lasso.json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    watched = regula("jobs", "watch", job_id, "--server", server.url)
    assert watched.returncode == 0, watched.stderr
    assert f"job {job_id} succeeded" in watched.stdout
    assert "40/40" in watched.stderr


def test_train_follow_exits_1_with_the_reason_when_the_job_fails(
    server: RegulaServer, files: dict[str, Path]
) -> None:
    failed = _train(server, files, "diverging.json", "--follow")
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert "failed" in failed.stderr and "diverged" in failed.stderr
    assert "learning_rate" in failed.stderr


def test_train_exits_2_with_the_servers_message_on_a_bad_spec(
    server: RegulaServer, files: dict[str, Path]
) -> None:
    refused = _train(server, files, "bad_target.json", "--follow")
    assert refused.returncode == 2
    assert "submitting the job failed (422)" in refused.stderr
    assert "'nope'" in refused.stderr


def test_watch_of_an_unknown_job_exits_2_with_the_message(server: RegulaServer) -> None:
    missing = regula("jobs", "watch", "0" * 32, "--server", server.url)
    assert missing.returncode == 2
    assert "(404)" in missing.stderr and "does not exist" in missing.stderr


def test_train_exits_3_when_no_server_answers(files: dict[str, Path]) -> None:
    nobody = _train_url(files, f"http://127.0.0.1:{free_port()}")
    assert nobody.returncode == 3
    assert "cannot reach the server" in nobody.stderr


def _train_url(files: dict[str, Path], url: str) -> Any:
    return regula(
        "train",
        "--data",
        str(files["data.csv"]),
        "--spec",
        str(files["lasso.json"]),
        "--server",
        url,
        "--follow",
    )
