"""Search jobs on the inline executor: the path against LassoCV, the final model, live points,
cancel mid-path, ownership, and the bounds of a search."""

import io
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LassoCV
from sklearn.model_selection import KFold
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import engine
from app.core.auth import create_key
from app.core.config import settings
from app.core.db import get_db, get_sessionmaker
from app.paths.orm import FULL_PATH, PathPoint
from tests.app.test_events import read_events

FINISHED = ("succeeded", "failed", "cancelled")
FOLDS = 5
NUM = 30


def _diabetes() -> tuple[np.ndarray, np.ndarray, bytes]:
    """Diabetes with its columns standardized here (mean 0, std 1), as a CSV of exact values."""
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    names = [f"f{j}" for j in range(X.shape[1])]
    out = io.StringIO()
    out.write(",".join([*names, "target"]) + "\n")
    for row, target in zip(X, y, strict=True):
        out.write(",".join(f"{v:.17g}" for v in (*row, target)) + "\n")
    return X, y, out.getvalue().encode()


def _upload(client: TestClient, content: bytes, headers: dict[str, str] | None = None) -> str:
    response = client.post(
        "/datasets", files={"file": ("d.csv", content, "text/csv")}, headers=headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _lasso_search(dataset_id: str, **search: Any) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "target": "target",
        "loss": "mse",
        "model": {"hidden_layers": []},
        "optimizer": {"name": "fista"},
        "epochs": 500,
        "standardize": False,
        "shuffle": False,
        "search": {"num": NUM, "folds": FOLDS, "select": "min", **search},
    }


def _submit(client: TestClient, spec: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    response = client.post("/jobs", json=spec, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _wait(client: TestClient, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}", headers=headers).json()
        if job["status"] in FINISHED:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.fixture
def diabetes_search(client: TestClient) -> tuple[dict[str, Any], dict[str, Any], np.ndarray, Any]:
    """A finished 5-fold Lasso search on diabetes: (job, path, X, y)."""
    X, y, content = _diabetes()
    job_id = _submit(client, _lasso_search(_upload(client, content)))
    job = _wait(client, job_id)
    assert job["status"] == "succeeded", job
    response = client.get(f"/jobs/{job_id}/path")
    assert response.status_code == 200, response.text
    return job, response.json(), X, y


def test_search_min_choice_equals_lasso_cv(diabetes_search: Any) -> None:
    job, path, X, y = diabetes_search
    grid = np.array(path["grid"])
    assert path["complete"] is True and path["param"] == "regularization.l1"
    assert len(grid) == NUM and np.all(np.diff(grid) < 0)
    # Our l1 = 2 * scikit-learn's alpha (mean squared error without the 1/2).
    reference = LassoCV(cv=KFold(FOLDS), alphas=grid / 2, tol=1e-12, max_iter=100_000).fit(X, y)
    assert path["chosen"]["min"] == pytest.approx(reference.alpha_ * 2, rel=1e-12)
    assert path["chosen"]["used"] == "min"
    assert path["chosen"]["value"] == path["chosen"]["min"]
    cv_loss = [p["cv_loss"] for p in path["points"]]
    np.testing.assert_allclose(cv_loss, reference.mse_path_.mean(axis=1), rtol=1e-6)
    assert path["chosen"]["1se"] >= path["chosen"]["min"]
    assert path["model_id"] == job["model_id"]


def test_search_points_carry_the_glmnet_picture(diabetes_search: Any) -> None:
    _, path, X, _ = diabetes_search
    first, last = path["points"][0], path["points"][-1]
    assert first["nonzero"] == 0 and first["selected_features"] == []  # lambda_max
    assert last["nonzero"] == X.shape[1]
    for point in path["points"]:
        norms = point["feature_norms"]
        assert set(norms) == {f"f{j}" for j in range(X.shape[1])}
        assert point["nonzero"] == sum(1 for v in point["coef"].values() if v != 0)
        assert sorted(point["selected_features"]) == sorted(k for k, v in norms.items() if v > 0)
        assert point["cv_loss_se"] > 0 and point["folds_scored"] == FOLDS


def test_search_model_predicts_and_drops_the_zero_coefs(
    client: TestClient, diabetes_search: Any
) -> None:
    job, path, X, _ = diabetes_search
    model_id = job["model_id"]
    rows = [{f"f{j}": float(X[i, j]) for j in range(X.shape[1])} for i in range(3)]
    predicted = client.post(f"/models/{model_id}/predict", json={"rows": rows})
    assert predicted.status_code == 200, predicted.text
    chosen = next(p for p in path["points"] if p["value"] == path["chosen"]["value"])
    # the model is the exact path's solution at the chosen value (the final fit starts there),
    # in the float32 of the spec
    coef = np.array([chosen["coef"][f"f{j}"] for j in range(X.shape[1])])
    np.testing.assert_allclose(
        predicted.json()["predictions"], X[:3] @ coef + chosen["intercept"], rtol=1e-6
    )
    zero = sorted(name for name, w in chosen["coef"].items() if w == 0)
    sparsity = client.get(f"/models/{model_id}/sparsity").json()
    assert sorted(sparsity["dropped_features"]) == zero
    model = client.get(f"/models/{model_id}").json()
    assert model["spec"]["regularization"]["l1"] == pytest.approx(path["chosen"]["value"])


def test_search_event_stream_sends_every_point_of_the_path(
    client: TestClient, diabetes_search: Any
) -> None:
    job, path, _, _ = diabetes_search
    got = read_events(client, f"/jobs/{job['id']}/events")
    assert got[0]["event"] == "status" and got[-1]["event"] == "end"
    assert {e["event"] for e in got[1:-1]} == {"point"}  # a search has no epochs
    sent = [e["data"] for e in got if e["event"] == "point"]
    latest = {(p["fold"], p["index"]): p for p in sent}  # the last event of a point wins
    assert set(latest) == {(f, k) for f in [*range(FOLDS), None] for k in range(NUM)}
    # a point rewritten unchanged is not sent again; the all-rows one comes back with its features
    assert len(sent) <= len(latest) + NUM
    for k, point in enumerate(path["points"]):
        losses = [latest[(fold, k)]["loss"] for fold in range(FOLDS)]
        assert float(np.mean(losses)) == pytest.approx(point["cv_loss"], rel=1e-12)
        full = latest[(None, k)]
        assert full["value"] == point["value"] and full["nonzero"] == point["nonzero"]
        assert sorted(full["selected_features"]) == sorted(point["selected_features"])


def test_search_without_folds_is_scored_on_the_validation_split(client: TestClient) -> None:
    # regression: a search without folds failed with an internal error in the job body
    X, y, content = _diabetes()
    spec = _lasso_search(_upload(client, content), folds=None)
    spec["validation_split"] = 0.25
    job = _wait(client, _submit(client, spec))
    assert job["status"] == "succeeded", job
    path = client.get(f"/jobs/{job['id']}/path").json()
    assert path["complete"] is True and path["folds"] is None
    names = [f"f{j}" for j in range(X.shape[1])]
    engine_spec = {k: v for k, v in spec.items() if k not in ("dataset_id", "target", "search")}
    expected = engine.path(
        engine_spec, X, y, num=NUM, select="min", feature_names=names, fit_final=False
    )
    assert path["grid"] == pytest.approx(expected.grid, rel=1e-12)
    assert path["chosen"]["min"] == pytest.approx(expected.chosen["min"], rel=1e-12)
    np.testing.assert_allclose(
        [p["cv_loss"] for p in path["points"]],
        [p["cv_loss"] for p in expected.points],
        rtol=1e-6,
    )
    assert all(p["cv_loss_se"] == 0 for p in path["points"])  # one held-out split
    predicted = client.post(
        f"/models/{job['model_id']}/predict", json={"rows": [dict(zip(names, X[0], strict=True))]}
    )
    assert predicted.status_code == 200, predicted.text


def test_a_search_with_nothing_to_score_it_is_refused(client: TestClient) -> None:
    *_, content = _diabetes()
    spec = _lasso_search(_upload(client, content), folds=None)
    response = client.post("/jobs", json=spec)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "search", "folds"]
    assert detail["type"] == "requires_validation"


def test_search_stores_every_point_and_reaches_full_progress(
    diabetes_search: Any, session: Session
) -> None:
    job, _, _, _ = diabetes_search
    assert job["progress"] == 1.0
    counts = dict(
        session.execute(
            select(PathPoint.fold, func.count())
            .where(PathPoint.job_id == job["id"])
            .group_by(PathPoint.fold)
        ).all()
    )
    assert counts == {FULL_PATH: NUM, **{k: NUM for k in range(FOLDS)}}


def _network_search(dataset_id: str) -> dict[str, Any]:
    # Each point is a network fit (the "fit" solver): slow enough to cancel between points.
    return {
        "dataset_id": dataset_id,
        "target": "target",
        "loss": "mse",
        "model": {"hidden_layers": [32]},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "epochs": 60,
        "batch_size": 16,
        "search": {"param": "regularization.l1", "num": 50, "folds": FOLDS},
    }


def test_cancel_mid_path_keeps_the_finished_points(client: TestClient) -> None:
    _, _, content = _diabetes()
    job_id = _submit(client, _network_search(_upload(client, content)))
    deadline = time.monotonic() + 120
    live: dict[str, Any] = {}
    while time.monotonic() < deadline:
        live = client.get(f"/jobs/{job_id}/path").json()
        if live.get("points"):
            break
        time.sleep(0.05)
    assert live["points"], live
    assert live["complete"] is False and len(live["grid"]) == 50
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    job = _wait(client, job_id)
    assert job["status"] == "cancelled", job
    assert 0 < job["progress"] < 1
    path = client.get(f"/jobs/{job_id}/path")
    assert path.status_code == 200, path.text
    body = path.json()
    assert body["complete"] is False and body["status"] == "cancelled"
    assert 0 < len(body["points"]) < 50
    # the folds run first (the final fit needs only their scores): the points so far are fold
    # 0's, scored on its held-out rows, and no choice is made before every fold has scored
    assert all(p["folds_scored"] == 1 and p["cv_loss"] is not None for p in body["points"])
    assert all(p["cv_metric"] is not None for p in body["points"])
    assert all(p["nonzero"] is None for p in body["points"])
    assert body["chosen"]["min"] is None


def test_single_fit_job_has_no_path(client: TestClient) -> None:
    _, _, content = _diabetes()
    spec = _lasso_search(_upload(client, content))
    del spec["search"]
    job_id = _submit(client, {**spec, "epochs": 2})
    response = client.get(f"/jobs/{job_id}/path")
    assert response.status_code == 409, response.text
    (item,) = response.json()["detail"]
    assert item["type"] == "not_a_search" and "not a search" in item["msg"]


def test_path_of_a_missing_job_is_404(client: TestClient) -> None:
    response = client.get("/jobs/0123456789abcdef0123456789abcdef/path")
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("search", "field"),
    [({"num": 201}, "num"), ({"folds": 21}, "folds"), ({"values": [1.0] * 201}, "values")],
)
def test_absurd_searches_are_refused(
    client: TestClient, search: dict[str, Any], field: str
) -> None:
    spec = _lasso_search("whatever")
    spec["search"] = {k: v for k, v in spec["search"].items() if k != "num"} | search
    response = client.post("/jobs", json=spec)
    assert response.status_code == 422, response.text
    locs = [item["loc"] for item in response.json()["detail"]]
    assert ["body", "search", field] in locs, locs


def test_search_grid_given_twice_is_refused(client: TestClient) -> None:
    _, _, content = _diabetes()
    spec = _lasso_search(_upload(client, content), values=[1.0, 0.1])
    response = client.post("/jobs", json=spec)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", "search"]


@pytest.fixture
def two_keys(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, dict[str, str], dict[str, str]]]:
    """A client with auth on, and the headers of two keys."""
    from app.main import create_app

    monkeypatch.setattr(settings, "auth_required", True)
    with get_sessionmaker(db_url)() as s:
        _, alice = create_key(session=s, name="alice")
        _, mallory = create_key(session=s, name="mallory")
    app = create_app()

    def _get_db() -> Iterator[Session]:
        with get_sessionmaker(db_url)() as s:
            yield s

    app.dependency_overrides[get_db] = _get_db
    with TestClient(app) as c:
        yield c, {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {mallory}"}


def test_another_keys_search_path_is_404(two_keys: Any) -> None:
    client, alice, mallory = two_keys
    _, _, content = _diabetes()
    job_id = _submit(client, _lasso_search(_upload(client, content, alice), num=5), alice)
    assert _wait(client, job_id, alice)["status"] == "succeeded"
    assert client.get(f"/jobs/{job_id}/path", headers=alice).status_code == 200
    response = client.get(f"/jobs/{job_id}/path", headers=mallory)
    assert response.status_code == 404, response.text
