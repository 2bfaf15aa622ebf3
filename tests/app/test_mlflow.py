"""MLflow scoring: every body format gives the labels /models/{id}/predict gives; MLflow's error
body; the one-model app of ``regula serve-model``."""

import csv
import io
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

import engine
from app.core.db import get_sessionmaker
from app.models import loading
from app.serving.mlflow import create_model_app
from app.serving.service import load_any
from tests.app.test_models_cache import store
from tests.app.test_pruned_serving import CREDIT_DROPPED, credit_model, credit_rows


@pytest.fixture
def credit(session: Session) -> tuple[str, engine.Model]:
    loading.cache.clear()
    model = credit_model()
    return store(session, model), model


def _bodies(model: engine.Model, rows: list[dict[str, Any]]) -> dict[str, Any]:
    names = model.feature_names
    values = [[r[k] for k in names] for r in rows]
    return {
        "dataframe_split": {
            "dataframe_split": {"index": list(range(len(rows))), "columns": names, "data": values}
        },
        "dataframe_records": {"dataframe_records": rows},
        "instances (lists)": {"instances": values},
        "instances (objects)": {"instances": rows},
        "inputs (columns)": {"inputs": {k: [r[k] for r in rows] for k in names}},
        "inputs (lists)": {"inputs": values},
    }


def _csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def test_every_body_format_gives_the_labels_of_predict(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, model = credit
    rows = credit_rows(15)
    expected = client.post(f"/models/{model_id}/predict", json={"rows": rows}).json()
    url = f"/models/{model_id}/invocations"
    for name, body in _bodies(model, rows).items():
        r = client.post(url, json=body)
        assert r.status_code == 200, (name, r.text)
        assert r.json() == {"predictions": expected["predictions"]}, name
    r = client.post(url, content=_csv(rows), headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": expected["predictions"]}


def test_dropped_columns_may_be_left_out_of_a_csv(
    client: TestClient, credit: tuple[str, engine.Model]
) -> None:
    model_id, _ = credit
    rows = credit_rows(4)
    short = [{k: v for k, v in r.items() if k not in CREDIT_DROPPED} for r in rows]
    url = f"/models/{model_id}/invocations"
    full = client.post(url, content=_csv(rows), headers={"content-type": "text/csv"}).json()
    r = client.post(url, content=_csv(short), headers={"content-type": "text/csv; charset=utf-8"})
    assert r.json() == full


def test_regression_predictions_are_values(client: TestClient, session: Session) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    model = engine.fit({"loss": "mse", "epochs": 2}, X, X @ [1.0, 2.0], feature_names=["a", "b"])
    model_id = store(session, model)
    r = client.post(f"/models/{model_id}/invocations", json={"inputs": [[0.5, -1.0]]})
    expected = client.post(f"/models/{model_id}/predict", json={"instances": [[0.5, -1.0]]})
    assert r.json()["predictions"] == pytest.approx(expected.json()["predictions"], abs=1e-12)


def _mlflow_error(r: Any, status: int, code: str = "BAD_REQUEST") -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error_code", "message"} and body["error_code"] == code
    assert "Traceback" not in body["message"]
    return body["message"]


def test_errors_are_mlflows(client: TestClient, credit: tuple[str, engine.Model]) -> None:
    model_id, _ = credit
    url = f"/models/{model_id}/invocations"
    row = credit_rows(1)[0]
    _mlflow_error(
        client.post("/models/nope/invocations", json={"inputs": [row]}),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    )
    assert "exactly one" in _mlflow_error(client.post(url, json={"rows": [row]}), 400)
    assert "exactly one" in _mlflow_error(
        client.post(url, json={"inputs": [row], "instances": [row]}), 400
    )
    _mlflow_error(client.post(url, content=b"{", headers={"content-type": "application/json"}), 400)
    msg = _mlflow_error(
        client.post(url, json={"dataframe_records": [{**row, "income": None}]}), 400
    )
    assert "income" in msg and "null" in msg
    msg = _mlflow_error(
        client.post(url, json={"inputs": [{**row, "employment": "astronaut"}]}), 400
    )
    assert "astronaut" in msg
    _mlflow_error(
        client.post(url, json={"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}), 400
    )
    _mlflow_error(client.post(url, content=b"x", headers={"content-type": "text/plain"}), 415)
    bad_csv = b"income,debt_ratio\nlots,0.1\n"
    _mlflow_error(client.post(url, content=bad_csv, headers={"content-type": "text/csv"}), 400)


def test_the_serve_model_app_scores_its_one_model(
    db_url: str, credit: tuple[str, engine.Model]
) -> None:
    model_id, model = credit
    with get_sessionmaker(db_url)() as session:
        item = load_any(session=session, model_id=model_id)
    rows = credit_rows(6)
    with TestClient(create_model_app(item)) as app_client:
        assert app_client.get("/ping").status_code == 200
        assert app_client.get("/health").status_code == 200
        assert app_client.get("/version").text == "0.1.0"
        for body in _bodies(model, rows).values():
            r = app_client.post("/invocations", json=body)
            assert r.status_code == 200, r.text
            labels, _ = model.predict_with_proba({k: [r[k] for r in rows] for k in rows[0]})
            assert r.json()["predictions"] == labels.tolist()
        _mlflow_error(app_client.post("/invocations", json={}), 400)


def test_load_any_refuses_a_missing_model(session: Session) -> None:
    with pytest.raises(Exception) as caught:
        load_any(session=session, model_id="nope")
    assert getattr(caught.value, "status_code", None) == 404
