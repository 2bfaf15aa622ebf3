"""POST /jobs validates completely before queuing: every bad spec is a 422 naming the field.

Each case starts from a spec that is accepted (checked by ``test_base_spec_is_accepted``), changes
one thing, and expects a 422 whose ``loc`` is the field at fault and whose ``type`` is a stable
code - and no job row.
"""

from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import settings
from app.jobs.orm import Job
from tests.app.test_jobs import upload

# num1/num2 numeric; color string; label yes/no; three a/b/c; const 7; gaps numeric with holes.
CSV = "num1,num2,color,label,three,const,gaps,price\n" + "".join(
    f"{i * 0.5},{(i * 7) % 5},{('red', 'blue')[i % 2]},{('yes', 'no')[i % 3 == 0]},"
    f"{'abc'[i % 3]},7,{'' if i % 4 == 0 else i},{i * 1.5 + 2}\n"
    for i in range(30)
)


@dataclass(frozen=True)
class Case:
    id: str
    change: dict[str, Any]
    loc: list[Any]
    type: str | tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    dataset: str = "main"  # "main", "deleted" or "missing"


def base_spec(dataset_id: str) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "target": "label",
        "features": ["num1", "num2", "color"],
        "loss": "softmax_cross_entropy",
        "model": {"hidden_layers": [4], "activation": "relu"},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "epochs": 3,
        "batch_size": 8,
    }


REGRESSION = {"target": "price", "loss": "mse", "task": "regression"}

CASES = [
    # pydantic: enums, ranges, unknown fields
    Case("unknown-loss", {"loss": "cross_entropy"}, ["body", "loss"], "literal_error"),
    Case(
        "unknown-activation",
        {"model": {"activation": "swish"}},
        ["body", "model", "activation"],
        "literal_error",
    ),
    Case(
        "unknown-optimizer",
        {"optimizer": {"name": "lbfgs"}},
        ["body", "optimizer", "name"],
        "literal_error",
    ),
    Case("unknown-init", {"model": {"init": "zeros"}}, ["body", "model", "init"], "literal_error"),
    Case(
        "negative-l1",
        {"regularization": {"l1": -0.1}},
        ["body", "regularization", "l1"],
        "greater_than_equal",
    ),
    Case(
        "negative-l2",
        {"regularization": {"l2": -1}},
        ["body", "regularization", "l2"],
        "greater_than_equal",
    ),
    Case("dropout-one", {"dropout": {"hidden": 1.0}}, ["body", "dropout", "hidden"], "less_than"),
    Case(
        "dropout-mode",
        {"dropout": {"mode": "gaussian"}},
        ["body", "dropout", "mode"],
        "literal_error",
    ),
    Case("batch-zero", {"batch_size": 0}, ["body", "batch_size"], "greater_than_equal"),
    Case("epochs-zero", {"epochs": 0}, ["body", "epochs"], "greater_than_equal"),
    Case(
        "zero-lr",
        {"optimizer": {"learning_rate": 0}},
        ["body", "optimizer", "learning_rate"],
        "greater_than",
    ),
    Case(
        "momentum-one",
        {"optimizer": {"momentum": 1.0}},
        ["body", "optimizer", "momentum"],
        "less_than",
    ),
    Case("split-one", {"validation_split": 1.0}, ["body", "validation_split"], "less_than"),
    Case("negative-seed", {"seed": -1}, ["body", "seed"], "greater_than_equal"),
    Case("dtype", {"dtype": "float16"}, ["body", "dtype"], "literal_error"),
    Case("unknown-field", {"l1": 0.1}, ["body", "l1"], "extra_forbidden"),
    Case(
        "unknown-nested-field",
        {"optimizer": {"lr": 0.1}},
        ["body", "optimizer", "lr"],
        "extra_forbidden",
    ),
    Case("empty-features", {"features": []}, ["body", "features"], "too_short"),
    Case("epochs-string", {"epochs": "many"}, ["body", "epochs"], "int_parsing"),
    # the engine's rules
    Case(
        "eps-below-float32",
        {"optimizer": {"name": "adam", "eps": 5e-324}},
        ["body", "optimizer", "eps"],
        "out_of_range",
    ),
    Case(
        "hidden-zero",
        {"model": {"hidden_layers": [0]}},
        ["body", "model", "hidden_layers", 0],
        "out_of_range",
    ),
    Case(
        "loss-task-mismatch",
        {"task": "regression", "loss": "softmax_cross_entropy"},
        ["body", "loss"],
        "loss_task_mismatch",
    ),
    Case(
        "fista-needs-linear",
        {"optimizer": {"name": "fista"}},
        ["body", "optimizer", "name"],
        "requires_linear",
    ),
    Case(
        "early-stopping-without-validation",
        {"early_stopping": {"monitor": "val_loss"}},
        ["body", "early_stopping", "monitor"],
        "requires_validation",
    ),
    # the dataset
    Case("unknown-target", {"target": "nope"}, ["body", "target"], "unknown_column"),
    Case(
        "unknown-feature",
        {"features": ["num1", "nope"]},
        ["body", "features", 1],
        "unknown_column",
    ),
    Case(
        "target-in-features",
        {"features": ["num1", "label"]},
        ["body", "features", 1],
        "target_in_features",
    ),
    Case(
        "duplicate-feature",
        {"features": ["num1", "num1"]},
        ["body", "features", 1],
        "duplicate_feature",
    ),
    Case(
        "string-target-for-regression",
        {**REGRESSION, "target": "color"},
        ["body", "target"],
        "target_not_numeric",
    ),
    Case(
        "constant-regression-target",
        {**REGRESSION, "target": "const"},
        ["body", "target"],
        "constant_target",
    ),
    Case("one-class-target", {"target": "const"}, ["body", "target"], "one_class"),
    Case(
        "binary-loss-three-classes",
        {"target": "three", "loss": "binary_cross_entropy"},
        ["body", "loss"],
        "not_binary",
    ),
    Case(
        "target-with-missing-values",
        {**REGRESSION, "target": "gaps"},
        ["body", "target"],
        "missing_target",
    ),
    Case("deleted-dataset", {}, ["body", "dataset_id"], "dataset_not_found", dataset="deleted"),
    Case("unknown-dataset", {}, ["body", "dataset_id"], "dataset_not_found", dataset="missing"),
    # the service's limits
    Case(
        "epochs-over-limit",
        {"epochs": 51},
        ["body", "epochs"],
        "limit_exceeded",
        settings={"max_epochs": 50},
    ),
    Case(
        "batch-over-limit",
        {"batch_size": 17},
        ["body", "batch_size"],
        "limit_exceeded",
        settings={"max_batch_size": 16},
    ),
    Case(
        "epoch-rows-over-limit",
        {"epochs": 4},
        ["body", "epochs"],
        "limit_exceeded",
        settings={"max_epoch_rows": 100},  # 30 rows x 4 epochs = 120
    ),
]


def _merge(spec: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = dict(spec)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    if out.get("target") != "label" and "features" not in change:
        out["features"] = None
    return out


@pytest.fixture
def dataset_ids(client: TestClient) -> dict[str, str]:
    main = upload(client, CSV.encode())["id"]
    deleted = upload(client, CSV.encode())["id"]
    assert client.delete(f"/datasets/{deleted}").status_code == 204
    return {"main": main, "deleted": deleted, "missing": "0" * 32}


def test_base_spec_is_accepted(client: TestClient, dataset_ids: dict[str, str]) -> None:
    response = client.post("/jobs", json=base_spec(dataset_ids["main"]))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_spec_is_422_naming_the_field(
    case: Case,
    client: TestClient,
    session: Session,
    dataset_ids: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in case.settings.items():
        monkeypatch.setattr(settings, name, value)
    spec = _merge(base_spec(dataset_ids[case.dataset]), case.change)
    response = client.post("/jobs", json=spec)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    matching = [item for item in detail if item["loc"] == case.loc]
    assert matching, (case.loc, detail)
    types = (case.type,) if isinstance(case.type, str) else case.type
    assert matching[0]["type"] in types, matching
    assert len(matching[0]["msg"]) > 10
    assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_all_dataset_problems_are_reported_together(
    client: TestClient, dataset_ids: dict[str, str]
) -> None:
    spec = _merge(base_spec(dataset_ids["main"]), {"target": "nope", "features": ["x", "num1"]})
    detail = client.post("/jobs", json=spec).json()["detail"]
    assert [item["loc"] for item in detail] == [["body", "features", 0], ["body", "target"]]


def test_regression_and_string_targets_are_accepted(
    client: TestClient, dataset_ids: dict[str, str]
) -> None:
    for change in (REGRESSION, {"target": "three"}, {"target": "color", "features": ["num1"]}):
        spec = _merge(base_spec(dataset_ids["main"]), change)
        response = client.post("/jobs", json=spec)
        assert response.status_code == 202, (change, response.text)


def test_null_features_means_every_other_column(
    client: TestClient, dataset_ids: dict[str, str]
) -> None:
    spec = {**base_spec(dataset_ids["main"]), "features": None}
    job = client.post("/jobs", json=spec).json()
    assert job["spec"]["features"] == ["num1", "num2", "color", "three", "const", "gaps", "price"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"dataset_id": "\xff\xfe", "target": "label"}',
        b'{"features": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"dataset_id": "x", "target": "label", "epochs": ' + b"9" * 5000 + b"}",
        b'{"dataset_id": "x", "target": ',
    ],
    ids=["bad-utf8", "deep-nesting", "5000-digit-int", "truncated"],
)
def test_unreadable_body_is_422_json_invalid(
    raw: bytes, client: TestClient, session: Session
) -> None:
    response = client.post("/jobs", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    (item,) = response.json()["detail"]
    assert item["type"] == "json_invalid" and item["loc"][0] == "body"
    assert session.scalar(select(func.count()).select_from(Job)) == 0
