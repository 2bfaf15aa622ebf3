"""Bad-input catalogue for predictions (and specs naming a deleted dataset).

One parametrized test per family of hostile input. Every case must answer 4xx in the one error shape
with a stable ``type`` code and a message (or ``loc``) naming the field or row at fault, and must
leave the database and the data folder exactly as they were.

All cases share one trained model (module-scoped world) because training is the slow part; the
cases themselves only read.
"""

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.core import migrate
from app.core.config import settings
from app.core.db import get_db, get_sessionmaker

FEATURES = ("x1", "x2", "color")
MAX_PREDICT_ROWS = 50
VALID_ROWS = [
    {"x1": 0.5, "x2": -1.0, "color": "red"},
    {"x1": -0.3, "x2": 0.2, "color": "green"},
    {"x1": 1.7, "x2": 0.9, "color": "blue"},
    {"x1": 0.0, "x2": 0.0, "color": "red"},
]
VALID_INSTANCES = [[r["x1"], r["x2"], r["color"]] for r in VALID_ROWS]
BAD_ROW = 2  # hostile values go into this row so the answer has to say which row


def _csv(n: int = 80, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    colors = np.array(["red", "green", "blue"])
    lines = ["x1,x2,color,label"]
    for _ in range(n):
        x1, x2 = rng.normal(size=2)
        color = colors[rng.integers(3)]
        label = "yes" if x1 + 0.5 * x2 + (color == "red") > 0.3 else "no"
        lines.append(f"{x1:.4f},{x2:.4f},{color},{label}")
    return ("\n".join(lines) + "\n").encode()


@dataclass
class World:
    client: TestClient
    db_path: Path
    data_dir: Path
    dataset_id: str
    model_id: str
    deleted_dataset_id: str


def _upload(client: TestClient, name: str, content: bytes) -> str:
    response = client.post("/datasets", files={"file": (name, content, "text/csv")})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _train(client: TestClient, dataset_id: str) -> str:
    spec = {
        "dataset_id": dataset_id,
        "target": "label",
        "loss": "softmax_cross_entropy",
        "model": {"hidden_layers": [4]},
        "epochs": 3,
        "batch_size": 16,
        "seed": 0,
    }
    response = client.post("/jobs", json=spec)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert job["status"] == "succeeded", job
    return job["model_id"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A migrated temp SQLite, one dataset, one trained classifier, one deleted dataset."""
    from app.main import create_app

    tmp = tmp_path_factory.mktemp("hostile")
    db_path = tmp / "regula.db"
    url = f"sqlite:///{db_path}"
    migrate.upgrade(url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings, "database_url", url)
        mp.setattr(settings, "data_dir", tmp / "data")
        mp.setattr(settings, "executor", "inline")
        mp.setattr(settings, "auth_required", False)
        mp.setattr(settings, "max_predict_rows", MAX_PREDICT_ROWS)
        mp.setattr(settings, "max_upload_mb", 1)
        mp.setattr(settings, "max_predict_mb", 1)
        app = create_app()

        def _get_db() -> Iterator[Session]:
            with get_sessionmaker(url)() as s:
                yield s

        app.dependency_overrides[get_db] = _get_db
        with TestClient(app) as client:
            dataset_id = _upload(client, "train.csv", _csv())
            model_id = _train(client, dataset_id)
            gone = _upload(client, "gone.csv", _csv(20, seed=1))
            assert client.delete(f"/datasets/{gone}").status_code in (200, 204)
            # Sanity: the valid requests the cases distort are themselves accepted.
            for body in ({"rows": VALID_ROWS}, {"instances": VALID_INSTANCES}):
                ok = client.post(f"/models/{model_id}/predict", json=body)
                assert ok.status_code == 200, ok.text
                assert len(ok.json()["predictions"]) == len(VALID_ROWS)
            yield World(client, db_path, tmp / "data", dataset_id, model_id, gone)


def _snapshot(world: World) -> tuple[dict[str, list[str]], list[str]]:
    """Every row of every table (as sorted reprs) and every file under the data folder."""
    with sqlite3.connect(world.db_path) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: sorted(repr(r) for r in con.execute(f'SELECT * FROM "{t}"')) for t in tables}
    files = sorted(str(p.relative_to(world.data_dir)) for p in world.data_dir.rglob("*"))
    return rows, files


def _names_in(item: dict[str, Any]) -> str:
    return " ".join([item["msg"], *(str(part) for part in item["loc"])])


@dataclass(frozen=True)
class Case:
    """One hostile request and what the answer must contain."""

    id: str
    request: Callable[[World], dict[str, Any]]  # kwargs for client.request(method, url, ...)
    statuses: tuple[int, ...]
    types: tuple[str, ...]
    names: tuple[str, ...] = ()  # each must appear in some error's msg or loc
    row: int | None = None  # this row index must appear in some error's loc or msg


def _predict(body: Any = None, **kwargs: Any) -> Callable[[World], dict[str, Any]]:
    def build(world: World) -> dict[str, Any]:
        request = {"method": "POST", "url": f"/models/{world.model_id}/predict", **kwargs}
        if body is not None:
            request["json"] = body
        return request

    return build


def _rows_with(change: Callable[[dict[str, Any]], None], row: int = BAD_ROW) -> dict[str, Any]:
    rows = [dict(r) for r in VALID_ROWS]
    change(rows[row])
    return {"rows": rows}


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda r: r.__setitem__(key, value)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda r: r.pop(key)


def _raw(text: str) -> Callable[[World], dict[str, Any]]:
    """A predict request whose body is ``text`` verbatim, sent as JSON."""
    return _predict(content=text.encode(), headers={"content-type": "application/json"})


def _check(world: World, case: Case) -> None:
    before = _snapshot(world)
    request = case.request(world)
    response = world.client.request(**request)
    after = _snapshot(world)

    assert response.status_code in case.statuses, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail"}, body
    detail = body["detail"]
    assert isinstance(detail, list) and detail, body
    for item in detail:
        assert set(item) == {"loc", "msg", "type"}, item
        assert isinstance(item["loc"], list)
        assert isinstance(item["msg"], str) and len(item["msg"]) > 3, item
        assert isinstance(item["type"], str) and item["type"], item
    matching = [item for item in detail if item["type"] in case.types]
    assert matching, (case.types, detail)
    # pydantic's own messages ("Field required") name the field only in loc; ours must say it
    # in the sentence too.
    ours = not set(case.types) & PYDANTIC_CODES
    for name in case.names:
        assert any(name in (item["msg"] if ours else _names_in(item)) for item in matching), (
            name,
            detail,
        )
    if case.row is not None:
        assert any(
            (not ours and case.row in item["loc"])
            or f"row {case.row}" in item["msg"].lower()
            or f"[{case.row}]" in item["msg"]
            for item in matching
        ), (case.row, detail)
    # Nothing written, nothing half-written: same rows in every table, same files.
    assert after[0] == before[0], "database changed"
    assert after[1] == before[1], "data folder changed"


PYDANTIC_CODES = {
    "missing",
    "json_invalid",
    "model_attributes_type",
    "list_type",
    "dict_type",
    "extra_forbidden",
    "less_than_equal",
    "greater_than_equal",
}


def _params(cases: list[Case]) -> Any:
    return pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])


# The stable codes: the service's own, or pydantic's where the schema layer answers first.
MISSING = ("missing_feature",)
EXTRA = ("unknown_feature",)
NOT_NUMERIC = ("not_numeric",)
NON_FINITE = ("non_finite",)
MISSING_VALUE = ("missing_value",)
NOT_CATEGORY = ("wrong_type",)

MISSING_FEATURE = [
    Case("numeric", _predict(_rows_with(_drop("x1"))), (422,), MISSING, ("x1",), BAD_ROW),
    Case("categorical", _predict(_rows_with(_drop("color"))), (422,), MISSING, ("color",), BAD_ROW),
    Case(
        "empty-row",
        _predict({"rows": [*VALID_ROWS[:2], {}, VALID_ROWS[3]]}),
        (422,),
        MISSING,
        ("x1",),
        BAD_ROW,
    ),
]

EXTRA_FEATURE = [
    Case("unknown", _predict(_rows_with(_set("zzz", 1.0))), (422,), EXTRA, ("zzz",), BAD_ROW),
    Case("target", _predict(_rows_with(_set("label", "yes"))), (422,), EXTRA, ("label",), BAD_ROW),
]

WRONG_TYPE = [
    Case("string", _predict(_rows_with(_set("x1", "abc"))), (422,), NOT_NUMERIC, ("x1",), BAD_ROW),
    Case("object", _predict(_rows_with(_set("x1", {"v": 1}))), (422,), NOT_NUMERIC, ("x1",)),
    Case("list", _predict(_rows_with(_set("x2", [1, 2]))), (422,), NOT_NUMERIC, ("x2",)),
    Case("null-num", _predict(_rows_with(_set("x1", None))), (422,), MISSING_VALUE, ("x1",)),
    Case("null-cat", _predict(_rows_with(_set("color", None))), (422,), MISSING_VALUE, ("color",)),
    Case("obj-cat", _predict(_rows_with(_set("color", {"a": "red"}))), (422,), NOT_CATEGORY),
    Case(
        "nan",
        _raw('{"rows": [{"x1": NaN, "x2": 0.1, "color": "red"}]}'),
        (422,),
        NON_FINITE,
        ("x1",),
    ),
    Case(
        "infinity",
        _raw('{"rows": [{"x1": 1.0, "x2": -Infinity, "color": "red"}]}'),
        (422,),
        NON_FINITE,
        ("x2",),
    ),
    Case(
        "overflow",
        _raw('{"rows": [{"x1": 1e999, "x2": 0.1, "color": "red"}]}'),
        (422,),
        NON_FINITE,
        ("x1",),
    ),
    # JSON integers are unbounded; one too large for a float must not reach float() unguarded.
    Case(
        "huge-int",
        _raw('{"rows": [{"x1": 0.5, "x2": ' + "9" * 400 + ', "color": "red"}]}'),
        (422,),
        (*NON_FINITE, *NOT_NUMERIC),
        ("x2",),
        0,
    ),
    Case(
        "huge-int-instance",
        _raw('{"instances": [[0.5, ' + "9" * 400 + ', "red"]]}'),
        (422,),
        (*NON_FINITE, *NOT_NUMERIC),
        ("x2",),
        0,
    ),
    # true is not a number in JSON, even though Python's bool is an int.
    Case("bool", _predict(_rows_with(_set("x1", True))), (422,), NOT_NUMERIC, ("x1",), BAD_ROW),
    Case(
        "bool-instance",
        _predict({"instances": [[True, 0.1, "red"]]}),
        (422,),
        NOT_NUMERIC,
        ("x1",),
        0,
    ),
]

# Finite inputs whose prediction is not finite (float32 overflow inside the network): a 200 with
# NaN probabilities would be invalid JSON and a silent wrong answer.
OVERFLOWING = [
    Case(
        "rows",
        _predict(_rows_with(_set("x1", 1e308))),
        (422,),
        ("non_finite_output",),
        (),
        BAD_ROW,
    ),
    Case(
        "instances",
        _predict({"instances": [VALID_INSTANCES[0], [-1e308, 1e308, "red"]]}),
        (422,),
        ("non_finite_output",),
        (),
        1,
    ),
]

UNSEEN_CATEGORY = [
    Case("new", _predict(_rows_with(_set("color", "purple"))), (422,), ("unknown_category",)),
    Case("empty", _predict(_rows_with(_set("color", ""))), (422,), ("unknown_category",)),
    Case("case", _predict(_rows_with(_set("color", "RED"))), (422,), ("unknown_category",)),
]

EMPTY_BATCH = [
    Case("rows", _predict({"rows": []}), (422,), ("empty_batch",)),
    Case("instances", _predict({"instances": []}), (422,), ("empty_batch",)),
]

HUGE = MAX_PREDICT_ROWS + 1
HUGE_BATCH = [
    Case(
        "rows",
        _predict({"rows": [VALID_ROWS[0]] * HUGE}),
        (413, 422),
        ("too_many_rows",),
    ),
    Case(
        "instances",
        _predict({"instances": [VALID_INSTANCES[0]] * HUGE}),
        (413, 422),
        ("too_many_rows",),
    ),
    # Few rows, many bytes: refused by size before the JSON parser builds it in memory.
    Case(
        "bytes",
        _predict({"rows": [{"x1": 0.5, "x2": 0.1, "color": "r" * 1_200_000}]}),
        (413,),
        ("too_large",),
        ("body",),
    ),
]


def _model_path(model_id: Callable[[World], str]) -> Callable[[World], dict[str, Any]]:
    return lambda w: {
        "method": "POST",
        "url": f"/models/{model_id(w)}/predict",
        "json": {"rows": VALID_ROWS},
    }


UNKNOWN_MODEL = [
    Case("random", _model_path(lambda w: uuid.uuid4().hex), (404,), ("not_found",)),
    Case("word", _model_path(lambda w: "does-not-exist"), (404,), ("not_found",)),
    Case("long", _model_path(lambda w: "a" * 5000), (404,), ("not_found",)),
    Case("traversal", _model_path(lambda w: "..%2F..%2Fetc%2Fpasswd"), (404,), ("not_found",)),
    Case("dataset-id", _model_path(lambda w: w.dataset_id), (404,), ("not_found",)),
]

MALFORMED = [
    Case("truncated", _raw('{"rows": [{"x1": 1'), (422,), ("json_invalid",)),
    Case("not-json", _raw("rows=1&x1=2"), (422,), ("json_invalid",)),
    Case("empty-body", _raw(""), (422,), ("missing",), ("body",)),
    Case("array", _raw("[1, 2, 3]"), (422,), ("model_attributes_type",)),
    Case("string", _raw('"rows"'), (422,), ("model_attributes_type",)),
    Case("rows-object", _predict({"rows": {"x1": 1}}), (422,), ("list_type",), ("rows",)),
    Case("row-number", _predict({"rows": [1, 2]}), (422,), ("dict_type",), ("rows",)),
    Case(
        "bad-utf8",
        _predict(
            content=b'{"rows": [{"color": "\xff\xfe"}]}',
            headers={"content-type": "application/json"},
        ),
        (400, 422),
        ("json_invalid",),
        ("body",),
    ),
    Case(
        "deep-nesting",
        _raw('{"rows": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        (400, 422),
        ("json_invalid",),
        ("body",),
    ),
    Case(
        "form-encoded",
        _predict(content=b"rows=1", headers={"content-type": "application/x-www-form-urlencoded"}),
        (422,),
        ("model_attributes_type",),
    ),
]

ROWS_AND_INSTANCES = [
    Case(
        "both",
        _predict({"rows": VALID_ROWS, "instances": VALID_INSTANCES}),
        (422,),
        ("rows_and_instances",),
        ("rows",),
    ),
    Case(
        "neither",
        _predict({}),
        (422,),
        ("rows_or_instances",),
        ("rows",),
    ),
    Case(
        "both-null",
        _predict({"rows": None, "instances": None}),
        (422,),
        ("rows_or_instances",),
        ("rows",),
    ),
]

WIDTH = ("wrong_width",)
INSTANCE_WIDTH = [
    Case(
        "narrow",
        _predict({"instances": [*VALID_INSTANCES[:2], [0.1, 0.2], VALID_INSTANCES[3]]}),
        (422,),
        WIDTH,
        (),
        BAD_ROW,
    ),
    Case(
        "wide",
        _predict({"instances": [*VALID_INSTANCES[:2], [0.1, 0.2, "red", 9.0], VALID_INSTANCES[3]]}),
        (422,),
        WIDTH,
        (),
        BAD_ROW,
    ),
    Case("empty-inner", _predict({"instances": [[]]}), (422,), WIDTH, (), 0),
    Case(
        "flat", _predict({"instances": [0.1, 0.2, "red"]}), (422,), ("list_type",), ("instances",)
    ),
    Case(
        "string-in-numeric",
        _predict({"instances": [*VALID_INSTANCES[:2], ["abc", 0.2, "red"], VALID_INSTANCES[3]]}),
        (422,),
        NOT_NUMERIC,
        ("x1",),
        BAD_ROW,
    ),
]


def _spec(dataset_id: Callable[[World], str]) -> Callable[[World], dict[str, Any]]:
    def build(world: World) -> dict[str, Any]:
        spec = {
            "dataset_id": dataset_id(world),
            "target": "label",
            "loss": "softmax_cross_entropy",
            "epochs": 1,
        }
        return {"method": "POST", "url": "/jobs", "json": spec}

    return build


DATASET_GONE = ("dataset_not_found",)
DELETED_DATASET = [
    Case("deleted", _spec(lambda w: w.deleted_dataset_id), (422,), DATASET_GONE, ("dataset_id",)),
    Case(
        "never-existed",
        _spec(lambda w: uuid.uuid4().hex),
        (404, 422),
        DATASET_GONE,
        ("dataset_id",),
    ),
    Case("model-id", _spec(lambda w: w.model_id), (422,), DATASET_GONE, ("dataset_id",)),
]


def _jobs_raw(content: bytes) -> Callable[[World], dict[str, Any]]:
    return lambda w: {
        "method": "POST",
        "url": "/jobs",
        "content": content,
        "headers": {"content-type": "application/json"},
    }


# Bodies the JSON decoder refuses for reasons other than syntax: still the body's fault, so a
# json_invalid naming the body, like any other undecodable JSON (not a bare 400 "http_error").
MALFORMED_SPEC = [
    Case(
        "bad-utf8",
        _jobs_raw(b'{"dataset_id": "\xff\xfe"}'),
        (400, 422),
        ("json_invalid",),
        ("body",),
    ),
    Case(
        "deep-nesting",
        _jobs_raw(b'{"features": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        (400, 422),
        ("json_invalid",),
        ("body",),
    ),
    Case(
        "5000-digit-int",
        _jobs_raw(b'{"epochs": ' + b"9" * 5000 + b"}"),
        (400, 422),
        ("json_invalid",),
        ("body",),
    ),
]


def _list(path: str, **params: Any) -> Callable[[World], dict[str, Any]]:
    return lambda w: {"method": "GET", "url": path, "params": params}


# Pagination parameters reach SQL: an offset beyond 64 bits must be a 422, not an overflow.
PAGINATION = [
    Case(
        f"{path.strip('/')}-{label}",
        _list(path, **params),
        (422,),
        (code,),
        (next(iter(params)),),
    )
    for path in ("/datasets", "/jobs", "/models")
    for label, params, code in (
        ("huge-offset", {"offset": 10**30}, "less_than_equal"),
        ("negative-offset", {"offset": -1}, "greater_than_equal"),
        ("huge-limit", {"limit": 10**30}, "less_than_equal"),
    )
]

CATALOGUE = {
    "missing_feature": MISSING_FEATURE,
    "extra_feature": EXTRA_FEATURE,
    "wrong_type": WRONG_TYPE,
    "overflowing_input": OVERFLOWING,
    "unseen_category": UNSEEN_CATEGORY,
    "empty_batch": EMPTY_BATCH,
    "huge_batch": HUGE_BATCH,
    "unknown_model": UNKNOWN_MODEL,
    "malformed_json": MALFORMED,
    "rows_and_instances": ROWS_AND_INSTANCES,
    "instance_width": INSTANCE_WIDTH,
    "deleted_dataset": DELETED_DATASET,
    "pagination": PAGINATION,
    "malformed_spec_body": MALFORMED_SPEC,
}


@_params(MISSING_FEATURE)
def test_missing_feature(world: World, case: Case) -> None:
    _check(world, case)


@_params(EXTRA_FEATURE)
def test_extra_feature(world: World, case: Case) -> None:
    _check(world, case)


@_params(WRONG_TYPE)
def test_wrong_type(world: World, case: Case) -> None:
    _check(world, case)


@_params(OVERFLOWING)
def test_overflowing_input(world: World, case: Case) -> None:
    _check(world, case)


@_params(UNSEEN_CATEGORY)
def test_unseen_category(world: World, case: Case) -> None:
    _check(world, case)


@_params(EMPTY_BATCH)
def test_empty_batch(world: World, case: Case) -> None:
    _check(world, case)


@_params(HUGE_BATCH)
def test_huge_batch(world: World, case: Case) -> None:
    _check(world, case)


@_params(UNKNOWN_MODEL)
def test_unknown_model(world: World, case: Case) -> None:
    _check(world, case)


@_params(MALFORMED)
def test_malformed_json(world: World, case: Case) -> None:
    _check(world, case)


@_params(ROWS_AND_INSTANCES)
def test_rows_and_instances(world: World, case: Case) -> None:
    _check(world, case)


@_params(INSTANCE_WIDTH)
def test_instance_width(world: World, case: Case) -> None:
    _check(world, case)


@_params(MALFORMED_SPEC)
def test_malformed_spec_body(world: World, case: Case) -> None:
    _check(world, case)


@_params(PAGINATION)
def test_pagination_out_of_range(world: World, case: Case) -> None:
    _check(world, case)


@_params(DELETED_DATASET)
def test_spec_references_missing_dataset(world: World, case: Case) -> None:
    _check(world, case)


def test_valid_batch_still_predicts_after_the_catalogue(world: World) -> None:
    # The hostile requests must not have poisoned the model cache or the model row.
    response = world.client.post(f"/models/{world.model_id}/predict", json={"rows": VALID_ROWS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["predictions"]) <= {"yes", "no"}
    assert len(body["probabilities"]) == len(VALID_ROWS)
    np.testing.assert_allclose(np.sum(body["probabilities"], axis=1), 1.0, rtol=1e-6)


def test_catalogue_size() -> None:
    # The issue asks for more than 40 hostile cases across uploads, specs and predictions.
    assert sum(len(cases) for cases in CATALOGUE.values()) >= 40


def _wait(client: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_dataset_deleted_while_its_job_is_queued(client: TestClient, session: Session) -> None:
    # The inline executor runs jobs one at a time: a slow job first keeps the second one queued.
    slow_data = _upload(client, "slow.csv", _csv(2000))
    doomed = _upload(client, "doomed.csv", _csv(80, seed=2))
    slow = client.post(
        "/jobs",
        json={"dataset_id": slow_data, "target": "label", "epochs": 30, "batch_size": 4},
    )
    assert slow.status_code == 202, slow.text
    queued = client.post("/jobs", json={"dataset_id": doomed, "target": "label", "epochs": 2})
    assert queued.status_code == 202, queued.text
    assert client.get(f"/jobs/{queued.json()['id']}").json()["status"] == "queued"
    assert client.delete(f"/datasets/{doomed}").status_code == 204

    job = _wait(client, queued.json()["id"])
    assert job["status"] == "failed", job
    assert "dataset" in job["error"].lower(), job
    assert job["model_id"] is None
    assert _wait(client, slow.json()["id"])["status"] == "succeeded"


def test_model_outlives_its_dataset(client: TestClient) -> None:
    dataset_id = _upload(client, "train.csv", _csv())
    model_id = _train(client, dataset_id)
    before = client.post(f"/models/{model_id}/predict", json={"rows": VALID_ROWS}).json()
    assert client.delete(f"/datasets/{dataset_id}").status_code == 204
    after = client.post(f"/models/{model_id}/predict", json={"rows": VALID_ROWS})
    assert after.status_code == 200, after.text
    assert after.json() == before
    assert client.get(f"/models/{model_id}").json()["dataset_id"] in (None, dataset_id)


def _race_delete(client: TestClient, url: str, n: int = 12) -> list[int]:
    """Send ``n`` DELETEs of ``url`` at the same moment; their status codes."""
    statuses: list[int] = []
    barrier = threading.Barrier(n)

    def delete() -> None:
        barrier.wait()
        statuses.append(client.delete(url).status_code)

    threads = [threading.Thread(target=delete) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(statuses)


@pytest.mark.parametrize("kind", ["datasets", "models"])
def test_concurrent_deletes_succeed_exactly_once(client: TestClient, kind: str) -> None:
    # A client retrying a DELETE in parallel must be told once that it deleted the thing.
    # A race shows up only sometimes, so a few rounds.
    for _ in range(3):
        dataset_id = _upload(client, "a.csv", _csv())
        target = _train(client, dataset_id) if kind == "models" else dataset_id
        assert _race_delete(client, f"/{kind}/{target}") == [204] + [404] * 11
