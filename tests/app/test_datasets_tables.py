"""Table uploads: CSV limits and profile fields (distinct, max |x|), and Parquet uploads that
give the same profile, the same stored table and the same trained model as the same CSV."""

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import settings
from app.core.db import get_sessionmaker
from app.datasets import service
from app.datasets.ingest.common import MAX_DISTINCT
from app.datasets.orm import Dataset
from tests.app.test_jobs import classification_csv, spec_for, wait

MB = 1024 * 1024


def upload(client: TestClient, content: bytes, filename: str = "t.csv", **kw: Any) -> Any:
    return client.post("/datasets", files={"file": (filename, content)}, **kw)


def parquet_bytes(table: pa.Table, **kw: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def state(session: Session) -> tuple[int, list[str]]:
    session.expire_all()
    rows = session.scalar(select(func.count()).select_from(Dataset)) or 0
    root = Path(settings.data_dir)
    return rows, sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _row(dataset_id: str) -> Dataset:
    with get_sessionmaker(settings.database_url)() as s:
        return s.get_one(Dataset, dataset_id)


# --- B13. headers, header-only files, blank cells --------------------------------------------


def test_header_of_nearly_4_mib_is_accepted(client: TestClient) -> None:
    names = [c * (1300 * 1024) for c in "abc"]  # 3.8 MiB of header
    content = (",".join(names) + "\n1,2,x\n3,4,y\n").encode()
    r = upload(client, content)
    assert r.status_code == 201, r.text[:300]
    assert [len(c["name"]) for c in r.json()["columns"]] == [1300 * 1024] * 3
    assert r.json()["rows"] == 2


def test_header_only_file_without_newline_has_no_rows(client: TestClient) -> None:
    r = upload(client, b"a,b")
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "no_rows"


def test_cells_of_only_whitespace_are_missing(client: TestClient) -> None:
    r = upload(client, b"x,s\n1,a\n  ,\t\n3, \n\t ,b\n")
    assert r.status_code == 201, r.text
    x, s = r.json()["columns"]
    assert (x["dtype"], x["missing"], x["mean"]) == ("number", 2, 2.0)
    assert (s["dtype"], s["missing"], s["distinct"]) == ("string", 2, 2)
    table = service.load_table(_row(r.json()["id"]))
    assert list(table["s"]) == ["a", None, None, "b"]


# --- B11. echoed strings are capped ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "code"),
    [("{n},{n}\n1,2\n", "duplicate_column"), ("{n}\ninf\n", "non_finite")],
    ids=["duplicate", "non-finite"],
)
def test_long_column_names_are_clipped_in_errors(
    client: TestClient, template: str, code: str
) -> None:
    r = upload(client, template.format(n="n" * 5000).encode())
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["type"] == code
    assert len(error["msg"]) < 300 and "…" in error["msg"]
    assert all(len(str(part)) <= 80 for part in error["loc"])


# --- B14 / B15. distinct counts and max |x| -----------------------------------------------------


def test_numeric_columns_count_distinct_values_and_max_abs(client: TestClient) -> None:
    r = upload(client, b"v,w\n1,1e300\n2,-2e300\n2,0\n3,0\n")
    assert r.status_code == 201, r.text
    v, w = r.json()["columns"]
    assert (v["distinct"], v["distinct_capped"], v["max_abs"]) == (3, False, 3.0)
    assert (w["distinct"], w["max_abs"]) == (3, 2e300)


def test_distinct_counts_stop_at_the_cap(client: TestClient) -> None:
    n = MAX_DISTINCT + 500
    lines = ["num,text,few"] + [f"{i},id{i},{i % 3}" for i in range(n)]
    r = upload(client, ("\n".join(lines) + "\n").encode())
    assert r.status_code == 201, r.text
    num, text, few = r.json()["columns"]
    assert (num["distinct"], num["distinct_capped"]) == (MAX_DISTINCT, True)
    assert (text["distinct"], text["distinct_capped"]) == (MAX_DISTINCT, True)
    assert (few["distinct"], few["distinct_capped"]) == (3, False)


# --- C. Parquet uploads ---------------------------------------------------------------------------

SAME_CSV = b"i,f,s,e\n1,1.5,a,\n2,,b,\n3,2.5, ,\n4,NaN,a,\n"
SAME_TABLE = pa.table(
    {
        "i": pa.array([1, 2, 3, 4], pa.int32()),
        "f": pa.array([1.5, None, 2.5, float("nan")], pa.float32()),
        "s": pa.array(["a", "b", " ", "a"]).dictionary_encode(),
        "e": pa.array([None] * 4, pa.null()),
    }
)


def test_parquet_and_csv_of_one_table_give_one_profile(client: TestClient) -> None:
    as_csv = upload(client, SAME_CSV)
    as_parquet = upload(client, parquet_bytes(SAME_TABLE), filename="t.parquet")
    assert as_csv.status_code == as_parquet.status_code == 201, as_parquet.text
    assert as_parquet.json()["kind"] == "table"
    assert as_parquet.json()["columns"] == as_csv.json()["columns"]
    assert as_parquet.json()["rows"] == 4
    a = service.load_table(_row(as_csv.json()["id"]))
    b = service.load_table(_row(as_parquet.json()["id"]))
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_parquet_is_read_batch_by_batch_over_row_groups(client: TestClient) -> None:
    n = 200_000
    table = pa.table({"k": np.arange(n) % 7, "v": np.linspace(-1, 1, n)})
    r = upload(client, parquet_bytes(table, row_group_size=30_000), filename="big.parquet")
    assert r.status_code == 201, r.text
    k, v = r.json()["columns"]
    assert (r.json()["rows"], k["distinct"], k["max"]) == (n, 7, 6.0)
    assert (v["min"], v["max"]) == (-1.0, 1.0)


def test_parquet_detected_by_magic_bytes_whatever_the_name(client: TestClient) -> None:
    r = upload(client, parquet_bytes(SAME_TABLE), filename="export.bin")
    assert r.status_code == 201, r.text
    assert [c["name"] for c in r.json()["columns"]] == ["i", "f", "s", "e"]


def test_parquet_booleans_and_timestamps_become_text(client: TestClient) -> None:
    table = pa.table(
        {
            "b": [True, False, True],
            "t": pa.array([0, 86_400, 172_800], pa.timestamp("s")),
            "y": [0, 1, 0],
        }
    )
    r = upload(client, parquet_bytes(table), filename="t.parquet")
    assert r.status_code == 201, r.text
    b, t, _ = r.json()["columns"]
    assert (b["dtype"], b["distinct"], t["dtype"], t["distinct"]) == ("string", 2, "string", 3)


GOOD = parquet_bytes(pa.table({"a": [1, 2], "b": ["x", "y"]}))
HOSTILE_PARQUET = [
    ("truncated", GOOD[: len(GOOD) // 2], "invalid_parquet", []),
    ("footer-only-magic", b"PAR1" + b"\0" * 64 + b"PAR1", "invalid_parquet", []),
    (
        "list-column",
        parquet_bytes(pa.table({"a": [1, 2], "tags": [[1], [2, 3]]})),
        "unsupported_column_type",
        ["'tags'", "nested"],
    ),
    (
        "struct-column",
        parquet_bytes(pa.table({"p": [{"x": 1}, {"x": 2}]})),
        "unsupported_column_type",
        ["'p'"],
    ),
    (
        "map-column",
        parquet_bytes(
            pa.table({"m": pa.array([[("k", 1)], [("k", 2)]], pa.map_(pa.string(), pa.int64()))})
        ),
        "unsupported_column_type",
        ["'m'"],
    ),
    (
        "binary-column",
        parquet_bytes(pa.table({"blob": pa.array([b"\x00", b"\x01"], pa.binary())})),
        "unsupported_column_type",
        ["'blob'", "binary"],
    ),
    ("zero-rows", parquet_bytes(pa.table({"a": pa.array([], pa.int64())})), "no_rows", []),
    (
        "duplicate-names",
        parquet_bytes(pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])),
        "duplicate_column",
        ["'a'"],
    ),
    (
        "empty-name",
        parquet_bytes(pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", " "])),
        "empty_column_name",
        ["Column 2"],
    ),
    (
        "too-many-columns",
        parquet_bytes(pa.table({f"c{i}": [i] for i in range(6)})),
        "too_many_columns",
        ["6", "5"],
    ),
    (
        "infinite-value",
        parquet_bytes(pa.table({"a": [1.0, float("inf")]})),
        "non_finite",
        ["'a'", "row 2"],
    ),
    (
        "uint64-overflow",
        parquet_bytes(pa.table({"u": pa.array([2**64 - 1], pa.uint64())})),
        "overflow",
        ["'u'"],
    ),
]


@pytest.mark.parametrize(
    ("content", "code", "fragments"),
    [pytest.param(c, k, f, id=i) for i, c, k, f in HOSTILE_PARQUET],
)
def test_hostile_parquet_is_refused_and_leaves_nothing(
    client: TestClient,
    session: Session,
    monkeypatch: pytest.MonkeyPatch,
    content: bytes,
    code: str,
    fragments: list[str],
) -> None:
    monkeypatch.setattr(settings, "max_columns", 5)
    r = upload(client, content, filename="hostile.parquet")
    assert 400 <= r.status_code < 500, r.text
    (error,) = r.json()["detail"]
    assert error["type"] == code, error
    for fragment in fragments:
        assert fragment in error["msg"], error["msg"]
    assert state(session) == (0, [])


def test_parquet_over_the_size_limit_is_413(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "max_upload_mb", 1)
    rng = np.random.default_rng(0)
    big = parquet_bytes(pa.table({"v": rng.standard_normal(300_000)}), compression="none")
    assert len(big) > 2 * MB
    r = upload(client, big, filename="big.parquet")
    assert r.status_code == 413
    assert state(session) == (0, [])


def test_same_table_as_csv_and_parquet_trains_the_same_model(client: TestClient) -> None:
    content = classification_csv(n=120, seed=3)
    from_csv = upload(client, content)
    columns = [line.split(",") for line in content.decode().strip().split("\n")]
    header, rows = columns[0], columns[1:]
    table = pa.table(
        {
            "x1": [float(r[0]) for r in rows],
            "x2": [float(r[1]) for r in rows],
            "noise": [float(r[2]) for r in rows],
            "color": [r[3] for r in rows],
            "label": [int(r[4]) for r in rows],
        }
    )
    assert table.column_names == header
    from_parquet = upload(client, parquet_bytes(table), filename="t.parquet")
    assert from_csv.status_code == from_parquet.status_code == 201
    assert from_csv.json()["columns"] == from_parquet.json()["columns"]
    models = []
    for dataset in (from_csv.json(), from_parquet.json()):
        job = client.post("/jobs", json=spec_for(dataset["id"], epochs=3))
        assert job.status_code == 202, job.text
        done = wait(client, job.json()["id"])
        assert done["status"] == "succeeded", done
        models.append(client.get(f"/models/{done['model_id']}").json())
    timing = {"seconds"}  # wall-clock time is the one thing allowed to differ
    metrics = [{k: v for k, v in m["metrics"].items() if k not in timing} for m in models]
    assert metrics[0] == metrics[1] and "loss" in metrics[0]
    rows_in = {"rows": [{"x1": 0.3, "x2": -0.1, "noise": 0.0, "color": "red"}]}
    preds = [client.post(f"/models/{m['id']}/predict", json=rows_in).json() for m in models]
    assert preds[0] == preds[1]
