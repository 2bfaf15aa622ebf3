"""``regula serve-model MODEL_ID`` as ``mlflow models serve`` answers, checked with MLflow's own
scoring client (mlflow-skinny) against the process, next to /predict of ``regula serve``."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from tests.integration.conftest import (
    ROOT,
    RegulaServer,
    breast_cancer_csv,
    free_port,
    wait_for_job,
)
from tests.integration.test_tritonclient import SPEC

pd = pytest.importorskip("pandas")
scoring = pytest.importorskip("mlflow.pyfunc.scoring_server.client")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = load_breast_cancer()
    names = [str(n) for n in data.feature_names]
    table = breast_cancer_csv()
    server = RegulaServer(tmp_path_factory.mktemp("serve-model"))
    server.start()
    try:
        with server.client() as client:
            r = client.post("/datasets", files={"file": ("c.csv", table, "text/csv")})
            r = client.post("/jobs", json={**SPEC, "dataset_id": r.json()["id"]})
            job = wait_for_job(client, r.json()["id"])
            assert job["status"] == "succeeded", job
            model = client.get(f"/models/{job['model_id']}").json()
            X = data.data[::29]
            frame = pd.DataFrame(X, columns=names)
            r = client.post(
                f"/models/{model['id']}/predict", json={"rows": frame.to_dict(orient="records")}
            )
            expected = r.json()["predictions"]
        yield {"server": server, "model": model, "frame": frame, "expected": expected}
    finally:
        server.stop()


def _serve_model(server: RegulaServer, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve-model",
            *args,
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--database-url",
            server.env["REGULA_DATABASE_URL"],
        ],
        cwd=ROOT,
        env=server.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session, started here
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_mlflow_scoring_client_against_serve_model(trained: dict[str, Any]) -> None:
    proc, port = _serve_model(trained["server"], trained["model"]["id"])
    try:
        client = scoring.ScoringServerClient("127.0.0.1", port)
        client.wait_server_ready(timeout=60, scoring_server_proc=proc)
        assert client.get_version() == "0.1.0"
        answer = client.invoke(trained["frame"])
        assert answer.get_predictions(predictions_format="ndarray").tolist() == trained["expected"]
        # The columns the model does not read may be left out.
        required = trained["model"]["required_features"]
        short = client.invoke(trained["frame"][required])
        assert list(short["predictions"]) == trained["expected"]
        r = httpx.post(
            f"http://127.0.0.1:{port}/invocations",
            content=trained["frame"].to_csv(index=False),
            headers={"content-type": "text/csv"},
        )
        assert r.json() == {"predictions": trained["expected"]}
        r = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"rows": []})
        assert r.status_code == 400 and r.json()["error_code"] == "BAD_REQUEST"
    finally:
        _stop(proc)


def test_serve_model_of_a_missing_model_exits_2(trained: dict[str, Any]) -> None:
    proc, _ = _serve_model(trained["server"], "no-such-model")
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 2
    assert b"no-such-model" in out and b"Traceback" not in out


def test_predictions_are_labels_as_for_sklearn_classifiers(trained: dict[str, Any]) -> None:
    assert set(trained["expected"]) <= set(trained["model"]["classes"])
    assert np.asarray(trained["expected"]).dtype.kind == "i"
