"""The tutorial's CNN end to end over HTTP on a real ``regula serve``.

scikit-learn's digits as uint8 images (N, 1, 28, 28) (8x8 upsampled 3x, padded by 2) are uploaded
as an ``.npz``, the tutorial's network is trained by ``POST /jobs`` (plain, and with small shifts
and rotations), and the held-out accuracy is computed from the service's own predictions of the
rows the job held out (``engine.split`` draws the rows ``fit`` validated on), sent as JSON
``instances`` and, for a few, as PNG files.
"""

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

import engine
from app.jobs.body import SERVICE_KEYS
from tests.engine.test_cnn import digits_28
from tests.integration.conftest import RegulaServer, wait_for_job

pytestmark = pytest.mark.integration

# Each job trains for minutes on one worker thread of a shared machine.
TRAIN_TIMEOUT = 1800.0
LAYERS = [
    {"type": "conv2d", "filters": 4, "kernel_size": 5, "padding": "valid", "activation": "tanh"},
    {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "tanh"},
    {"type": "maxpool2d", "pool_size": 2},
    {"type": "conv2d", "filters": 16, "kernel_size": 3, "activation": "relu"},
    {"type": "maxpool2d", "pool_size": 2},
    {"type": "flatten"},
    {"type": "dense", "units": 128, "activation": "tanh", "init": "normal"},
]
SPEC: dict[str, Any] = {
    "target": "y",
    "loss": "softmax_cross_entropy",
    "model": {"layers": LAYERS},
    "optimizer": {
        "name": "sgd",
        "learning_rate": 0.05,
        "decay": 1e-6,
        "momentum": 0.9,
        "nesterov": True,
    },
    "batch_size": 100,
    "epochs": 20,
    "validation_split": 0.2,
    "seed": 1024,
}
AUGMENTATION = {"rotation_range": 10.0, "width_shift_range": 0.08, "height_shift_range": 0.08}
# Predictions per request: a batch of 28x28 images as JSON is ~2 MB, under REGULA_MAX_PREDICT_MB.
CHUNK = 200


def _npz(x: np.ndarray, y: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=y)
    return buf.getvalue()


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[0]).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def trained(module_server: RegulaServer) -> dict[str, Any]:
    """Upload the digits once, train the plain and the augmented CNN (queued together)."""
    x, y = digits_28()
    with module_server.client() as client:
        uploaded = client.post("/datasets", files={"file": ("digits28.npz", _npz(x, y))})
        assert uploaded.status_code == 201, uploaded.text
        assert uploaded.json()["images"]["shape"] == [1, 28, 28]
        dataset_id = uploaded.json()["id"]
        jobs = {}
        for name, augmentation in (("plain", None), ("augmented", AUGMENTATION)):
            spec = {**SPEC, "dataset_id": dataset_id, "augmentation": augmentation}
            response = client.post("/jobs", json=spec)
            assert response.status_code == 202, response.text
            jobs[name] = response.json()["id"]
        finished = {
            name: wait_for_job(client, job_id, timeout=TRAIN_TIMEOUT)
            for name, job_id in jobs.items()
        }
    for job in finished.values():
        assert job["status"] == "succeeded", job
    return {"x": x, "y": y, "jobs": finished}


def _held_out(client: Any, model_id: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The rows the job validated on (drawn from the model's own spec, as ``fit`` drew them)."""
    spec = client.get(f"/models/{model_id}").json()["spec"]
    _, val = engine.split({k: v for k, v in spec.items() if k not in SERVICE_KEYS}, x, y)
    assert len(val) >= 0.19 * len(y)
    return val


def _predict(client: Any, model_id: str, images: np.ndarray) -> list[Any]:
    labels: list[Any] = []
    for start in range(0, len(images), CHUNK):
        batch = images[start : start + CHUNK].tolist()
        response = client.post(f"/models/{model_id}/predict", json={"instances": batch})
        assert response.status_code == 200, response.text
        body = response.json()
        assert np.allclose(np.sum(body["probabilities"], axis=1), 1.0, atol=1e-4)
        labels += body["predictions"]
    return labels


@pytest.mark.parametrize(("name", "minimum"), [("plain", 0.95), ("augmented", 0.93)])
def test_tutorial_cnn_predicts_held_out_digits_over_http(
    module_server: RegulaServer, trained: dict[str, Any], name: str, minimum: float
) -> None:
    x, y, job = trained["x"], trained["y"], trained["jobs"][name]
    model_id = job["model_id"]
    with module_server.client() as client:
        val = _held_out(client, model_id, x, y)
        labels = _predict(client, model_id, x[val])
        accuracy = float(np.mean(np.array(labels) == y[val]))
        assert accuracy >= minimum, f"{name}: held-out accuracy {accuracy:.3f}"
        metrics = client.get(f"/models/{model_id}").json()["metrics"]
        # The service's predictions score the rows its job validated on, as it reported.
        assert accuracy == pytest.approx(metrics["val_metric"], abs=2 / len(val))

        few = val[:8]
        files = [("files", (f"digit{i}.png", _png(x[i]), "image/png")) for i in few]
        response = client.post(f"/models/{model_id}/predict/images", files=files)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == [labels[k] for k in range(len(few))]

        sparsity = client.get(f"/models/{model_id}/sparsity").json()
        assert [layer["name"] for layer in sparsity["layers"]][:3] == ["conv0", "conv1", "conv2"]
        assert len(sparsity["layers"][0]["filter_l2_norms"]) == 4
