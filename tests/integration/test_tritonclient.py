"""Triton's own HTTP client (tritonclient[http]) against a real ``regula serve``: health,
metadata and infer (per-feature tensors and one ``input`` matrix, JSON and binary tensor data)
give the probabilities /models/{id}/predict gives."""

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from tests.integration.conftest import RegulaServer, breast_cancer_csv, wait_for_job

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.integration

SPEC = {
    "target": "label",
    "loss": "binary_cross_entropy",
    "model": {"hidden_layers": []},
    "regularization": {"l1": 0.02},
    "optimizer": {"name": "fista"},
    "epochs": 300,
    "validation_split": 0.0,
    "seed": 0,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with an L1 logistic regression on breast_cancer (most features dropped)."""
    data = load_breast_cancer()
    names = [str(n) for n in data.feature_names]
    table = breast_cancer_csv()
    server = RegulaServer(tmp_path_factory.mktemp("triton"))
    server.start()
    try:
        with server.client() as client:
            r = client.post("/datasets", files={"file": ("c.csv", table, "text/csv")})
            assert r.status_code == 201, r.text
            r = client.post("/jobs", json={**SPEC, "dataset_id": r.json()["id"]})
            assert r.status_code == 202, r.text
            job = wait_for_job(client, r.json()["id"])
            assert job["status"] == "succeeded", job
            model = client.get(f"/models/{job['model_id']}").json()
        X = np.array([[float(f"{v:.6g}") for v in row] for row in data.data[::37]])
        yield {"server": server, "model": model, "X": X, "names": names}
    finally:
        server.stop()


@pytest.fixture
def triton(trained: dict[str, Any]) -> Any:
    client = httpclient.InferenceServerClient(url=trained["server"].url.removeprefix("http://"))
    yield client
    client.close()


def _expected(trained: dict[str, Any]) -> dict[str, Any]:
    with trained["server"].client() as client:
        r = client.post(
            f"/models/{trained['model']['id']}/predict", json={"instances": trained["X"].tolist()}
        )
    assert r.status_code == 200, r.text
    return r.json()


def test_health_and_metadata(triton: Any, trained: dict[str, Any]) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    server = triton.get_server_metadata()
    assert server["name"] == "regula" and "binary_tensor_data" in server["extensions"]
    model = trained["model"]
    assert triton.is_model_ready(model["id"])
    meta = triton.get_model_metadata(model["id"])
    assert meta["platform"] == "regula"
    assert [i["name"] for i in meta["inputs"]] == model["required_features"]
    assert len(model["required_features"]) < len(model["feature_names"])
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "label": "INT64",
        "probabilities": "FP32",
    }


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_per_feature_tensors(
    triton: Any, trained: dict[str, Any], binary_in: bool, binary_out: bool
) -> None:
    model, X, names = trained["model"], trained["X"], trained["names"]
    inputs = []
    for name in model["required_features"]:
        column = X[:, names.index(name)].reshape(-1, 1)
        tensor = httpclient.InferInput(name, list(column.shape), "FP64")
        tensor.set_data_from_numpy(column, binary_data=binary_in)
        inputs.append(tensor)
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=binary_out),
        httpclient.InferRequestedOutput("probabilities", binary_data=binary_out),
    ]
    result = triton.infer(model["id"], inputs, outputs=outputs)
    expected = _expected(trained)
    assert result.as_numpy("label").tolist() == expected["predictions"]
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), expected["probabilities"], rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("binary", [False, True])
def test_one_input_matrix(triton: Any, trained: dict[str, Any], binary: bool) -> None:
    model, X = trained["model"], trained["X"]
    tensor = httpclient.InferInput("input", list(X.shape), "FP64")
    tensor.set_data_from_numpy(X, binary_data=binary)
    result = triton.infer(model["id"], [tensor])  # no outputs named: every output, binary
    expected = _expected(trained)
    assert result.as_numpy("label").tolist() == expected["predictions"]
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), expected["probabilities"], rtol=0, atol=1e-6
    )


def test_errors_reach_the_client_as_sentences(triton: Any, trained: dict[str, Any]) -> None:
    with pytest.raises(InferenceServerException) as caught:
        triton.get_model_metadata("no-such-model")
    assert caught.value.status() == "404" and "no-such-model" in caught.value.message()
    tensor = httpclient.InferInput("input", [1, 3], "FP64")
    tensor.set_data_from_numpy(np.ones((1, 3)), binary_data=True)
    with pytest.raises(InferenceServerException) as caught:
        triton.infer(trained["model"]["id"], [tensor])
    assert caught.value.status() == "400" and "[N, 30]" in caught.value.message()


def test_model_version_one_and_an_unknown_version(triton: Any, trained: dict[str, Any]) -> None:
    model, X = trained["model"], trained["X"]
    assert triton.is_model_ready(model["id"], model_version="1")
    assert not triton.is_model_ready(model["id"], model_version="7")
    meta = triton.get_model_metadata(model["id"], model_version="1")
    assert meta["versions"] == ["1"]
    tensor = httpclient.InferInput("input", list(X.shape), "FP64")
    tensor.set_data_from_numpy(X, binary_data=True)
    result = triton.infer(model["id"], [tensor], model_version="1")
    assert result.as_numpy("label").tolist() == _expected(trained)["predictions"]
    with pytest.raises(InferenceServerException) as caught:
        triton.infer(model["id"], [tensor], model_version="7")
    assert caught.value.status() == "404" and "'7'" in caught.value.message()
