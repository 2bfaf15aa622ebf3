"""The README is true: its settings table is the settings' own, and its walkthrough's answers are
the service's."""

import json
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from app.core.config import Settings, settings_table
from tests.app.test_jobs import wait

README = Path(__file__).resolve().parents[2] / "README.md"
CREDIT = README.parent / "app" / "examples" / "credit.csv"


def test_readme_lists_every_setting_as_config_defines_it() -> None:
    text = README.read_text()
    assert settings_table() in text
    for name in Settings.model_fields:
        assert f"`REGULA_{name.upper()}`" in text


def _block_after(text: str, marker: str, fence: str) -> str:
    """The first fenced block of kind ``fence`` after ``marker``."""
    start = text.index(f"```{fence}\n", text.index(marker)) + len(fence) + 4
    return text[start : text.index("```", start)]


def _run(client: TestClient, spec_text: str) -> dict[str, Any]:
    """The README's spec (its ``$DS`` the uploaded credit.csv) as a job, run to success."""
    response = client.post(
        "/datasets", files={"file": ("credit.csv", CREDIT.read_bytes(), "text/csv")}
    )
    assert response.status_code == 201, response.text
    spec = json.loads(spec_text.replace("\"'$DS'\"", json.dumps(response.json()["id"])))
    response = client.post("/jobs", json=spec)
    assert response.status_code == 202, response.text
    job = wait(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def test_the_walkthrough_answers_are_what_the_service_answers(client: TestClient) -> None:
    """Steps 1-5 of the README, run as written: the spec of step 2, the sparsity of step 4 and
    the prediction of step 5 (to the three digits shown)."""
    text = README.read_text()
    train_cmd = _block_after(text, "**2. Train", "bash")
    spec_text = train_cmd[train_cmd.index("-d '") + 4 : train_cmd.index("}' |") + 1]
    predict_cmd = _block_after(text, "**5. Predict", "bash")
    rows_text = predict_cmd[predict_cmd.index("-d '") + 4 : predict_cmd.index("}'") + 1]
    expected_prediction = json.loads(predict_cmd.split("# ", 1)[1])
    expected_sparsity = json.loads(_block_after(text, "**4. See what L1", "json"))

    job = _run(client, spec_text)
    sparsity = client.get(f"/models/{job['model_id']}/sparsity").json()
    assert {key: sparsity[key] for key in expected_sparsity} == expected_sparsity
    answer = client.post(f"/models/{job['model_id']}/predict", json=json.loads(rows_text)).json()
    assert answer["predictions"] == expected_prediction["predictions"]
    assert answer["classes"] == expected_prediction["classes"]
    assert np.round(answer["probabilities"], 3).tolist() == expected_prediction["probabilities"]

    # "From the tools you already use": the OIP v2 and MLflow bodies, as written, on that model
    model_id = job["model_id"]
    oip_cmd = _block_after(text, "**Open Inference Protocol v2**", "bash")
    oip_body = json.loads(oip_cmd[oip_cmd.index("-d '") + 4 : oip_cmd.index("]}'") + 2])
    outputs = {
        o["name"]: o["data"]
        for o in client.post(f"/v2/models/{model_id}/infer", json=oip_body).json()["outputs"]
    }
    assert outputs["label"] == expected_prediction["predictions"]
    assert [np.round(outputs["probabilities"], 3).tolist()] == expected_prediction["probabilities"]
    mlflow_cmd = _block_after(text, "**MLflow scoring**", "bash")
    mlflow_body = mlflow_cmd[mlflow_cmd.index("-d '") + 4 : mlflow_cmd.index("}}'") + 2]
    answer = client.post(f"/models/{model_id}/invocations", json=json.loads(mlflow_body)).json()
    assert answer == json.loads(mlflow_cmd.split("# ", 1)[1])


def test_the_walkthroughs_search_chooses_what_the_readme_says(client: TestClient) -> None:
    """Step 6 of the README, run as written: the choice (to the four digits shown) and the
    features kept at it."""
    text = README.read_text()
    search_cmd = _block_after(text, "**6. Let the data choose", "bash")
    spec_text = search_cmd[search_cmd.index("-d '") + 4 : search_cmd.index("}' |") + 1]
    expected = json.loads(_block_after(text, "**6. Let the data choose", "json"))
    job = _run(client, spec_text)
    path = client.get(f"/jobs/{job['id']}/path").json()
    chosen = path["chosen"]
    assert chosen["used"] == expected["used"]
    for key in ("min", "1se", "value"):
        assert float(f"{chosen[key]:.4g}") == expected[key], key
    at = path["points"][8]
    assert at["value"] == chosen["value"]
    assert at["selected_features"] == [
        "income",
        "debt_ratio",
        "late_payments",
        "years_employed",
        "employment",
        "noise_4",
    ]
