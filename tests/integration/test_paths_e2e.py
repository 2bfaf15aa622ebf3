"""A real ``regula serve`` with two Dask workers runs a 5-fold Lasso search: the job succeeds, its
splits ran as their own tasks on both workers, and the final model predicts."""

import io

import numpy as np
import pytest
from sqlalchemy import select

import app.tables  # noqa: F401  (every mapper, for the query below)
from app.core.db import make_engine
from app.paths.orm import FULL_PATH, PathPoint
from tests.integration.conftest import ServerFactory, wait_for_job

pytestmark = pytest.mark.integration

FOLDS = 5
NUM = 40


def _regression_csv(n: int = 3000, d: int = 120, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = np.zeros(d)
    w[:10] = rng.normal(size=10) * 3
    y = X @ w + rng.normal(size=n)
    out = io.StringIO()
    out.write(",".join([*(f"x{j}" for j in range(d)), "y"]) + "\n")
    np.savetxt(out, np.column_stack([X, y]), delimiter=",", fmt="%.10g")
    return out.getvalue().encode()


def test_search_splits_run_on_both_workers(regula_server: ServerFactory) -> None:
    server = regula_server(env={"REGULA_WORKERS": "2"})
    with server.client() as client:
        upload = client.post("/datasets", files={"file": ("r.csv", _regression_csv(), "text/csv")})
        assert upload.status_code == 201, upload.text
        spec = {
            "dataset_id": upload.json()["id"],
            "target": "y",
            "loss": "mse",
            "model": {"hidden_layers": []},
            "optimizer": {"name": "fista"},
            "epochs": 200,
            "search": {"num": NUM, "folds": FOLDS, "select": "min"},
        }
        submitted = client.post("/jobs", json=spec)
        assert submitted.status_code == 202, submitted.text
        job = wait_for_job(client, submitted.json()["id"], timeout=300)
        assert job["status"] == "succeeded", (job, server.logs())
        path = client.get(f"/jobs/{job['id']}/path").json()
        assert path["complete"] is True and len(path["points"]) == NUM
        chosen = next(p for p in path["points"] if p["value"] == path["chosen"]["value"])
        # The informative features x0..x9 are the ones the chosen Lasso keeps.
        assert {f"x{j}" for j in range(10)} <= set(chosen["selected_features"])
        row = {f"x{j}": 0.0 for j in range(120)}
        predicted = client.post(f"/models/{job['model_id']}/predict", json={"rows": [row]})
        assert predicted.status_code == 200, predicted.text

    engine = make_engine(server.env["REGULA_DATABASE_URL"])
    with engine.connect() as conn:
        rows = conn.execute(
            select(PathPoint.fold, PathPoint.worker).where(PathPoint.job_id == job["id"])
        ).all()
    engine.dispose()
    workers_by_fold: dict[int, set[str]] = {}
    for fold, worker in rows:
        workers_by_fold.setdefault(fold, set()).add(worker)
    assert set(workers_by_fold) == {FULL_PATH, *range(FOLDS)}
    assert all(len(w) == 1 for w in workers_by_fold.values())  # one task per split
    workers = set().union(*workers_by_fold.values())
    assert len(workers) == 2, workers_by_fold
    assert all(w.startswith("tcp://") for w in workers), workers
