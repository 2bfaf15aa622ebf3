"""GET /models/{id}/weights: one layer's weight matrix for the dashboard's heatmap."""

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

import engine
from app.models import prediction
from tests.app.test_jobs import classification_csv, train, upload
from tests.app.test_models_cache import fit_model, store


def test_first_layer_has_the_encoded_feature_names_as_rows(client: TestClient) -> None:
    dataset = upload(client, classification_csv(120))
    model_id = train(client, dataset["id"], model={"hidden_layers": [4]}, epochs=2)["model_id"]
    model = engine.load(client.get(f"/models/{model_id}/export").content)
    W0, W1 = (layer.params["W"] for layer in model.network.dense_layers)

    first = client.get(f"/models/{model_id}/weights", params={"layer": 0})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["shape"] == list(W0.shape) and np.shape(body["values"]) == W0.shape
    np.testing.assert_allclose(body["values"], W0, rtol=1e-6)
    # One row per encoded column: the numeric features, then one per colour category.
    assert body["row_names"] == ["x1", "x2", "noise", "color=blue", "color=green", "color=red"]
    stats = client.get(f"/models/{model_id}/sparsity").json()
    assert body["layer"] == stats["layers"][0]["name"]

    second = client.get(f"/models/{model_id}/weights", params={"layer": 1}).json()
    assert second["shape"] == list(W1.shape) and second["row_names"] is None
    np.testing.assert_allclose(second["values"], W1, rtol=1e-6)
    assert client.get(f"/models/{model_id}/weights").json() == body  # layer 0 by default


@pytest.mark.parametrize(("layer", "code"), [(1, "unknown_layer"), (-1, "greater_than_equal")])
def test_a_layer_the_model_does_not_have_is_422_naming_layer(
    client: TestClient, session: Session, layer: int, code: str
) -> None:
    model_id = store(session, fit_model())  # linear: one dense layer
    response = client.get(f"/models/{model_id}/weights", params={"layer": layer})
    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["loc"] == ["query", "layer"] and item["type"] == code


def test_a_layer_too_large_for_one_response_is_refused(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = store(session, fit_model([8]))
    monkeypatch.setattr(prediction, "MAX_WEIGHT_VALUES", 3 * 8 - 1)  # W0 is 3 x 8
    response = client.get(f"/models/{model_id}/weights", params={"layer": 0})
    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["loc"] == ["query", "layer"] and item["type"] == "layer_too_large"
    assert "layer 0" in item["msg"]
    # The 8 x 2 output layer still fits.
    assert client.get(f"/models/{model_id}/weights", params={"layer": 1}).status_code == 200


def test_weights_of_a_missing_model_are_404(client: TestClient) -> None:
    response = client.get("/models/nope/weights")
    assert response.status_code == 404 and response.json()["detail"][0]["type"] == "not_found"
