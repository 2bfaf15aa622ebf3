"""Image models over HTTP: predict JSON instances and PNG/JPEG files, conv sparsity, and the
routes that do not serve images refusing them with a 4xx.

Models are small CNNs on scikit-learn's 8x8 digits (uint8 0..255), trained by the inline executor.
"""

import io
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.datasets import load_digits

import engine
from tests.app.test_datasets_images import npz, png
from tests.app.test_jobs import train

CONV = [
    {"type": "conv2d", "filters": 6, "kernel_size": 3, "activation": "relu"},
    {"type": "flatten"},
]


def digits(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` digits as uint8 images (n, 8, 8) and their labels."""
    d = load_digits()
    return (d.images[:n] * (255 / 16)).round().astype(np.uint8), d.target[:n]


def image_model(client: TestClient, x: np.ndarray, y: np.ndarray, **spec: Any) -> dict[str, Any]:
    """Upload ``x``, ``y`` as an .npz and train a small CNN on it; the finished job."""
    response = client.post("/datasets", files={"file": ("digits.npz", npz(x=x, y=y))})
    assert response.status_code == 201, response.text
    spec = {
        "target": "y",
        "model": {"layers": CONV},
        "epochs": 4,
        "batch_size": 50,
        **spec,
    }
    return train(client, response.json()["id"], **spec)


@pytest.fixture
def digits_model(client: TestClient) -> tuple[str, engine.Model, np.ndarray, np.ndarray]:
    """(model id, the model as exported, images, labels)."""
    x, y = digits()
    model_id = image_model(client, x, y)["model_id"]
    exported = client.get(f"/models/{model_id}/export")
    assert exported.status_code == 200
    return model_id, engine.load(exported.content), x, y


def _files(images: dict[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "image/png")) for name, data in images.items()]


def _errors(response: Any) -> dict[tuple[Any, ...], str]:
    assert response.status_code == 422, response.text
    return {tuple(e["loc"]): e["type"] for e in response.json()["detail"]}


# --- JSON instances -------------------------------------------------------------------------------


def test_image_instances_predict_labels_and_probabilities_as_the_engine(
    client: TestClient, digits_model: tuple[str, engine.Model, np.ndarray, np.ndarray]
) -> None:
    model_id, model, x, y = digits_model
    response = client.post(f"/models/{model_id}/predict", json={"instances": x[:20].tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["classes"] == list(range(10))
    labels, proba = model.predict_with_proba(x[:20])
    assert body["predictions"] == labels.tolist()
    np.testing.assert_allclose(body["probabilities"], proba, rtol=1e-6, atol=1e-7)
    assert np.mean(np.array(body["predictions"]) == y[:20]) > 0.5  # it learned something


def test_image_instances_with_and_without_the_channel_axis_agree(
    client: TestClient, digits_model: tuple[str, engine.Model, np.ndarray, np.ndarray]
) -> None:
    model_id, _, x, _ = digits_model
    hw = client.post(f"/models/{model_id}/predict", json={"instances": x[:5].tolist()})
    chw = client.post(f"/models/{model_id}/predict", json={"instances": x[:5, None].tolist()})
    mixed = [x[0].tolist(), x[1, None].tolist()]
    both = client.post(f"/models/{model_id}/predict", json={"instances": mixed})
    assert hw.status_code == chw.status_code == both.status_code == 200
    assert hw.json() == chw.json()
    assert both.json()["predictions"] == hw.json()["predictions"][:2]
    # float32 sums depend on the batch size by a few ulps
    np.testing.assert_allclose(
        both.json()["probabilities"], hw.json()["probabilities"][:2], rtol=1e-5, atol=1e-9
    )


def test_bad_image_instances_are_422_naming_each_index(
    client: TestClient, digits_model: tuple[str, engine.Model, np.ndarray, np.ndarray]
) -> None:
    model_id, _, x, _ = digits_model
    good = x[0].tolist()
    ragged = [row[:7] if r == 3 else row for r, row in enumerate(good)]
    with_text = [[*good[0][:-1], "white"], *good[1:]]
    with_null = [[None, *good[0][1:]], *good[1:]]
    with_bool = [[True, *good[0][1:]], *good[1:]]
    instances = [
        good,
        x[0, :7].tolist(),  # 7x8
        np.repeat(x[0][None], 3, axis=0).tolist(),  # 3 channels
        ragged,
        with_text,
        with_null,
        with_bool,
        x[0].ravel().tolist(),  # flattened
    ]
    response = client.post(f"/models/{model_id}/predict", json={"instances": instances})
    assert _errors(response) == {
        ("body", "instances", 1): "wrong_image_size",
        ("body", "instances", 2): "wrong_channels",
        ("body", "instances", 3): "ragged_image",
        ("body", "instances", 4): "not_numeric",
        ("body", "instances", 5): "missing_value",
        ("body", "instances", 6): "not_numeric",
        ("body", "instances", 7): "wrong_image_shape",
    }
    msgs = [e["msg"] for e in response.json()["detail"]]
    assert msgs[0].startswith("instances[1]: the image is 7x8 pixels") and "8x8" in msgs[0]


def test_rows_for_an_image_model_are_refused(
    client: TestClient, digits_model: tuple[str, engine.Model, np.ndarray, np.ndarray]
) -> None:
    model_id, _, x, _ = digits_model
    response = client.post(f"/models/{model_id}/predict", json={"rows": [{"x": x[0].tolist()}]})
    assert _errors(response) == {("body", "rows"): "images_need_instances"}


# --- image files ----------------------------------------------------------------------------------


def test_png_files_predict_as_their_pixels_do(
    client: TestClient, digits_model: tuple[str, engine.Model, np.ndarray, np.ndarray]
) -> None:
    model_id, _, x, _ = digits_model
    files = _files({f"digit{i}.png": png(x[i]) for i in range(6)})
    response = client.post(f"/models/{model_id}/predict/images", files=files)
    assert response.status_code == 200, response.text
    instances = client.post(f"/models/{model_id}/predict", json={"instances": x[:6].tolist()})
    assert response.json() == instances.json()


def test_files_are_converted_by_image_size_and_color_mode_as_the_upload_does(
    client: TestClient, digits_model: tuple[str, engine.Model, np.ndarray, np.ndarray]
) -> None:
    model_id, _, x, _ = digits_model
    rgb = np.repeat(x[0][:, :, None], 3, axis=2)  # gray as RGB: converting back is exact
    big = Image.fromarray(x[1]).resize((16, 16), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    converted = client.post(
        f"/models/{model_id}/predict/images",
        files=_files({"rgb.png": png(rgb)}),
        data={"color_mode": "grayscale"},
    )
    resized = client.post(
        f"/models/{model_id}/predict/images",
        files=_files({"big.png": buf.getvalue()}),
        data={"image_size": "8,8"},
    )
    assert converted.status_code == resized.status_code == 200, converted.text + resized.text
    plain = client.post(f"/models/{model_id}/predict", json={"instances": x[:1].tolist()})
    assert converted.json() == plain.json()
    # What a zip upload with image_size=8,8 would store for this file (Pillow, bilinear).
    stored = np.asarray(big.resize((8, 8), Image.Resampling.BILINEAR))
    expected = client.post(f"/models/{model_id}/predict", json={"instances": [stored.tolist()]})
    assert resized.json() == expected.json()


def test_bad_files_are_422_naming_each_file(
    client: TestClient, digits_model: tuple[str, engine.Model, np.ndarray, np.ndarray]
) -> None:
    model_id, _, x, _ = digits_model
    truncated = png(x[2])[:40]
    gif = io.BytesIO()
    Image.fromarray(x[3]).save(gif, format="GIF")
    files = _files(
        {
            "ok.png": png(x[0]),
            "junk.png": b"this is not an image",
            "cut.png": truncated,
            "gif.png": gif.getvalue(),  # Pillow reads GIFs; only PNG and JPEG are opened
            "tall.png": png(np.zeros((9, 8), dtype=np.uint8)),
            "color.png": png(np.zeros((8, 8, 3), dtype=np.uint8)),
        }
    )
    response = client.post(f"/models/{model_id}/predict/images", files=files)
    assert "object at" not in response.text  # no reprs of the decoder's internals
    assert _errors(response) == {
        ("body", "files", "junk.png"): "corrupt_image",
        ("body", "files", "cut.png"): "corrupt_image",
        ("body", "files", "gif.png"): "corrupt_image",
        ("body", "files", "tall.png"): "wrong_image_size",
        ("body", "files", "color.png"): "wrong_channels",
    }


def test_files_request_problems_are_4xx(
    client: TestClient, digits_model: tuple[str, engine.Model, np.ndarray, np.ndarray]
) -> None:
    model_id, _, x, _ = digits_model
    url = f"/models/{model_id}/predict/images"
    one = _files({"a.png": png(x[0])})
    assert client.post(url, json={"instances": []}).status_code == 415
    only_a_field = [("color_mode", (None, b"grayscale"))]
    assert _errors(client.post(url, files=only_a_field)) == {("body", "files"): "empty_batch"}
    assert _errors(client.post(url, files=one, data={"image_size": "28,28"})) == {
        ("body", "image_size"): "wrong_image_size"
    }
    assert _errors(client.post(url, files=one, data={"color_mode": "rgb"})) == {
        ("body", "color_mode"): "wrong_channels"
    }
    assert _errors(client.post(url, files=one, data={"colour": "rgb"})) == {
        ("body", "colour"): "unknown_field"
    }
    malformed = client.post(
        url, content=b"--xyz\r\nnot a part", headers={"content-type": "multipart/form-data"}
    )
    assert malformed.status_code == 422, malformed.text
    assert client.post(f"/models/{'0' * 32}/predict/images", files=one).status_code == 404


def test_files_for_a_table_model_or_float_pixels_are_refused(client: TestClient) -> None:
    from tests.app.test_models import _model

    table = _model(client, epochs=1)
    one = _files({"a.png": png(np.zeros((8, 8), dtype=np.uint8))})
    response = client.post(f"/models/{table}/predict/images", files=one)
    assert _errors(response) == {("path", "model_id"): "not_an_image_model"}
    x, y = digits(200)
    floats = image_model(client, (x / 255.0).astype(np.float32), y, epochs=1)["model_id"]
    response = client.post(f"/models/{floats}/predict/images", files=one)
    assert _errors(response) == {("body", "files"): "images_not_decodable"}
    assert "float32" in response.json()["detail"][0]["msg"]
    ok = client.post(f"/models/{floats}/predict", json={"instances": [(x[0] / 255).tolist()]})
    assert ok.status_code == 200


# --- sparsity, the other routes -------------------------------------------------------------------


def test_group_l1_on_the_first_conv_layer_shows_filters_off_in_sparsity(
    client: TestClient,
) -> None:
    x, y = digits()
    layers = [
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
        {"type": "maxpool2d", "pool_size": 2},
        {"type": "dense", "units": 16, "activation": "relu"},
    ]
    job = image_model(
        client, x, y, model={"layers": layers}, regularization={"group_l1": 0.05}, epochs=8
    )
    model_id = job["model_id"]
    response = client.get(f"/models/{model_id}/sparsity")
    assert response.status_code == 200, response.text
    stats = response.json()
    conv0, dense0 = stats["layers"][0], stats["layers"][1]
    assert conv0["name"] == "conv0" and conv0["shape"] == [8, 1, 3, 3]
    W = engine.load(client.get(f"/models/{model_id}/export").content).network.weights[0]
    off = [f for f in range(8) if not W[f].any()]
    assert off, "group_l1 switched off no filter"
    assert conv0["filters_off"] == len(off) and conv0["filter_indices_off"] == off
    assert [conv0["filter_l2_norms"][f] for f in off] == [0.0] * len(off)
    np.testing.assert_allclose(
        conv0["filter_l1_norms"], np.abs(W.astype(np.float64)).sum(axis=(1, 2, 3))
    )
    assert conv0["dead_channels"] == 0 and conv0["dead_channel_indices"] == []
    assert set(off) <= set(conv0["dead_unit_indices"])
    assert conv0["zeros"] == 9 * len(off)
    assert dense0["name"] == "dense0" and dense0["filters_off"] is None
    # The job history's zero fraction counts the conv kernels' zeros, as /sparsity does.
    history = client.get(f"/jobs/{job['id']}/history").json()["epochs"]
    assert history[-1]["zero_fraction"] == pytest.approx(stats["zero_fraction"])
    assert stats["zero_weights"] >= conv0["zeros"] > 0


def test_openapi_documents_conv_sparsity_and_the_image_files_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    layer = schema["components"]["schemas"]["LayerSparsity"]["properties"]
    for field in ("filters_off", "filter_indices_off", "filter_l1_norms", "dead_channels"):
        assert "description" in layer[field]
    body = schema["paths"]["/models/{model_id}/predict/images"]["post"]["requestBody"]
    files = body["content"]["multipart/form-data"]["schema"]["properties"]["files"]
    assert files["items"]["format"] == "binary"


def test_routes_that_do_not_serve_images_refuse_them_with_4xx(
    client: TestClient, digits_model: tuple[str, engine.Model, np.ndarray, np.ndarray]
) -> None:
    model_id, _, x, _ = digits_model
    described = client.get(f"/models/{model_id}")
    assert described.status_code == 200 and described.json()["required_features"] == ["x"]
    weights = client.get(f"/models/{model_id}/weights")
    assert weights.status_code == 200 and weights.json()["row_names"] is None
    onnx = client.get(f"/models/{model_id}/export", params={"format": "onnx"})
    assert _errors(onnx) == {("query", "format"): "onnx_unsupported"}
    infer = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1]}]}
    for response in (
        client.get(f"/v2/models/{model_id}"),
        client.post(f"/v2/models/{model_id}/infer", json=infer),
        client.post(f"/models/{model_id}/invocations", json={"instances": x[:1].tolist()}),
    ):
        assert response.status_code == 400, response.text
        assert "takes images" in response.text
