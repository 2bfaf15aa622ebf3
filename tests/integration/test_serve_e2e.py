"""End to end on a real ``regula serve`` with real Dask LocalCluster worker processes.

Upload breast cancer as CSV, train an L1 logistic regression, watch its history, predict held-out
rows, read which features L1 dropped; cancel a long job; see a job fail with a reason; stop the
server while a job is queued and see it finish after a restart.
"""

import csv
import io
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from tests.integration.conftest import RegulaServer, ServerFactory, wait_for_job

pytestmark = pytest.mark.integration


def _csv(X: np.ndarray, y: np.ndarray, names: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*names, "label"])
    for row, label in zip(X, y, strict=True):
        writer.writerow([*(f"{v:.6g}" for v in row), int(label)])
    return out.getvalue().encode()


@pytest.fixture(scope="module")
def cancer() -> dict[str, Any]:
    data = load_breast_cancer()
    names = [str(n) for n in data.feature_names]  # "mean radius", ...: spaces on purpose
    perm = np.random.default_rng(0).permutation(len(data.target))
    cut = int(0.8 * len(perm))
    train, test = perm[:cut], perm[cut:]
    return {
        "names": names,
        "train_csv": _csv(data.data[train], data.target[train], names),
        "X_test": data.data[test],
        "y_test": data.target[test],
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegulaServer]:
    """One server with two worker processes for the tests that need no restart."""
    srv = RegulaServer(tmp_path_factory.mktemp("e2e"), {"REGULA_WORKERS": "2"})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _upload(client: Any, content: bytes, name: str = "data.csv") -> dict[str, Any]:
    response = client.post("/datasets", files={"file": (name, content, "text/csv")})
    assert response.status_code == 201, response.text
    return response.json()


def _submit(client: Any, spec: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/jobs", json=spec)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/jobs/{response.json()['id']}"
    return response.json()


def _long_spec(dataset_id: str) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "target": "label",
        "loss": "softmax_cross_entropy",
        "model": {"hidden_layers": [64, 64]},
        "epochs": 2000,
        "batch_size": 1,
        "seed": 0,
    }


def _wait_epochs(client: Any, job_id: str, epochs: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] == "running" and job["epochs_done"] >= epochs:
            return
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach epoch {epochs}")


def test_l1_logistic_regression_on_breast_cancer(
    server: RegulaServer, cancer: dict[str, Any]
) -> None:
    with server.client() as client:
        dataset = _upload(client, cancer["train_csv"], "breast_cancer.csv")
        assert dataset["rows"] == len(cancer["train_csv"].splitlines()) - 1
        epochs = 30
        job = _submit(
            client,
            {
                "dataset_id": dataset["id"],
                "target": "label",
                "loss": "binary_cross_entropy",
                "model": {"hidden_layers": []},
                "regularization": {"l1": 0.01},
                "optimizer": {"name": "sgd", "learning_rate": 0.1},
                "epochs": epochs,
                "batch_size": 32,
                "seed": 0,
            },
        )
        done = wait_for_job(client, job["id"], timeout=120)
        assert done["status"] == "succeeded", done
        assert done["epochs_done"] == epochs and done["progress"] == 1.0
        assert done["attempts"] == 1

        history = client.get(f"/jobs/{job['id']}/history").json()["epochs"]
        assert [e["epoch"] for e in history] == list(range(1, epochs + 1))
        losses = [e["loss"] for e in history]
        assert losses[-1] < 0.5 * losses[0]
        falling = sum(b < a for a, b in itertools.pairwise(losses))
        assert falling >= 0.75 * (epochs - 1), losses
        assert all(e["loss"] == pytest.approx(e["data_loss"] + e["penalty"]) for e in history)

        model_id = done["model_id"]
        model = client.get(f"/models/{model_id}").json()
        assert model["feature_names"] == cancer["names"] and model["classes"] == [0, 1]

        rows = [dict(zip(cancer["names"], map(float, x), strict=True)) for x in cancer["X_test"]]
        predicted = client.post(f"/models/{model_id}/predict", json={"rows": rows})
        assert predicted.status_code == 200, predicted.text
        body = predicted.json()
        accuracy = np.mean(np.array(body["predictions"]) == cancer["y_test"])
        assert accuracy >= 0.95, accuracy
        assert np.array(body["probabilities"]).shape == (len(rows), 2)

        stats = client.get(f"/models/{model_id}/sparsity").json()
        assert stats["total_weights"] == len(cancer["names"])
        assert stats["zero_weights"] >= 1
        assert len(stats["dropped_features"]) == stats["zero_weights"]
        assert set(stats["dropped_features"]) | set(stats["selected_features"]) == set(
            cancer["names"]
        )
        assert all(stats["feature_importance"][f] == 0.0 for f in stats["dropped_features"])


def test_cancel_a_long_job_keeps_a_model(server: RegulaServer, cancer: dict[str, Any]) -> None:
    with server.client() as client:
        dataset = _upload(client, cancer["train_csv"])
        job = _submit(client, _long_spec(dataset["id"]))
        _wait_epochs(client, job["id"], 1)
        cancel = client.post(f"/jobs/{job['id']}/cancel")
        assert cancel.status_code == 200, cancel.text
        done = wait_for_job(client, job["id"], timeout=60)
        assert done["status"] == "cancelled", done
        assert 1 <= done["epochs_done"] < 2000
        assert done["model_id"], "a cancelled job keeps its best model so far"
        model = client.get(f"/models/{done['model_id']}").json()
        assert model["metrics"]["stopped"] == "cancelled"
        again = client.post(f"/jobs/{job['id']}/cancel")
        assert again.status_code == 409 and again.json()["detail"][0]["type"] == "job_finished"


def test_a_job_that_cannot_train_fails_with_a_reason(
    server: RegulaServer, cancer: dict[str, Any]
) -> None:
    with server.client() as client:
        dataset = _upload(client, cancer["train_csv"])
        job = _submit(
            client,
            {
                "dataset_id": dataset["id"],
                "target": "mean area",
                "features": ["mean radius", "worst area"],
                "loss": "mse",
                "model": {"hidden_layers": [8]},
                "optimizer": {"name": "sgd", "learning_rate": 1e6},
                "standardize": False,
                "epochs": 5,
            },
        )
        done = wait_for_job(client, job["id"], timeout=60)
        assert done["status"] == "failed", done
        assert done["error_code"] == "diverged"
        assert "learning_rate" in done["error"] and done["model_id"] is None


def test_a_queued_job_survives_a_server_restart(
    regula_server: ServerFactory, cancer: dict[str, Any], tmp_path: Path
) -> None:
    server = regula_server(env={"REGULA_WORKERS": "1"}, workdir=tmp_path / "restart")
    with server.client() as client:
        dataset = _upload(client, cancer["train_csv"])
        blocker = _submit(client, _long_spec(dataset["id"]))
        wait_for_job(client, blocker["id"], timeout=60, statuses=("running",))
        small = {
            "dataset_id": dataset["id"],
            "target": "label",
            "loss": "binary_cross_entropy",
            "model": {"hidden_layers": []},
            "epochs": 3,
        }
        queued = _submit(client, small)
        # One worker, busy: the second job is still queued when the server goes down.
        assert client.get(f"/jobs/{queued['id']}").json()["status"] == "queued"
    server.stop()

    server.start()
    with server.client() as client:
        # The blocker's worker died with the old cluster: it was re-queued (or is running again).
        blocker_now = client.get(f"/jobs/{blocker['id']}").json()
        assert blocker_now["status"] in ("queued", "running"), blocker_now
        assert client.post(f"/jobs/{blocker['id']}/cancel").status_code == 200
        done = wait_for_job(client, queued["id"], timeout=120)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 1 and done["model_id"]
        history = client.get(f"/jobs/{queued['id']}/history").json()["epochs"]
        assert [e["epoch"] for e in history] == [1, 2, 3]
        assert wait_for_job(client, blocker["id"], timeout=60)["status"] == "cancelled"
