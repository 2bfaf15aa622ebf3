"""POST/GET/DELETE /datasets: upload statistics, delimiters, storage, orphans and owner scoping."""

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.auth import create_key
from app.core.config import settings
from app.core.db import get_sessionmaker
from app.datasets import service
from app.datasets.ingest import common, csvfile
from app.datasets.orm import Dataset

SMALL_CSV = b"age,income,city,flag\n30,1.5,Paris,1\n40,,Lyon,0\n,3.5,Paris,1\n50,4.0,NA,1\n"


def upload(client: TestClient, content: bytes, filename: str = "small.csv", **kwargs):
    return client.post("/datasets", files={"file": (filename, content, "text/csv")}, **kwargs)


def _row(dataset_id: str) -> Dataset:
    with get_sessionmaker(settings.database_url)() as s:
        return s.get_one(Dataset, dataset_id)


def dataset_files() -> list[Path]:
    folder = Path(settings.data_dir) / "datasets"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_upload_returns_exact_column_stats(client: TestClient) -> None:
    r = upload(client, SMALL_CSV)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "small.csv"
    assert body["rows"] == 4
    assert body["size_bytes"] == len(SMALL_CSV)
    assert r.headers["location"].endswith(f"/datasets/{body['id']}")
    age, income, city, flag = body["columns"]
    assert age == {
        "name": "age",
        "dtype": "number",
        "missing": 1,
        "min": 30.0,
        "max": 50.0,
        "mean": 40.0,
        "max_abs": 50.0,
        "distinct": 3,
        "distinct_capped": False,
    }
    assert income["dtype"] == "number" and income["missing"] == 1
    assert (income["min"], income["max"]) == (1.5, 4.0)
    assert income["mean"] == pytest.approx(3.0, abs=1e-12)
    assert city == {
        "name": "city",
        "dtype": "string",
        "missing": 1,
        "min": None,
        "max": None,
        "mean": None,
        "max_abs": None,
        "distinct": 2,
        "distinct_capped": False,
    }
    assert flag["dtype"] == "number" and flag["mean"] == pytest.approx(0.75)


def test_upload_uses_name_field(client: TestClient) -> None:
    r = upload(client, SMALL_CSV, data={"name": "credit, first try"})
    assert r.status_code == 201
    assert r.json()["name"] == "credit, first try"


@pytest.mark.parametrize(
    "content",
    [
        b"a;b;c\n1;2.5;x\n2;3.5;y\n",
        b"a\tb\tc\n1\t2.5\tx\n2\t3.5\ty\n",
        b"\xef\xbb\xbfa,b,c\n1,2.5,x\n2,3.5,y\n",
        b"\xef\xbb\xbfa;b;c\r\n1;2.5;x\r\n2;3.5;y\r\n",
        b'"a","b","c"\n1,2.5,"x"\n2,3.5,"y"\n',
    ],
    ids=["semicolon", "tab", "bom", "bom-semicolon-crlf", "quoted"],
)
def test_upload_delimiter_and_bom_variants(client: TestClient, content: bytes) -> None:
    r = upload(client, content)
    assert r.status_code == 201, r.text
    cols = r.json()["columns"]
    assert [c["name"] for c in cols] == ["a", "b", "c"]
    assert [c["dtype"] for c in cols] == ["number", "number", "string"]
    assert cols[1]["mean"] == pytest.approx(3.0)
    assert cols[2]["distinct"] == 2


def test_missing_cell_spellings_are_counted(client: TestClient) -> None:
    content = b"x,s\n1,a\n,\nNA,NA\nNaN,null\nnan,N/A\nnull,None\n2,b\n"
    r = upload(client, content)
    assert r.status_code == 201, r.text
    x, s = r.json()["columns"]
    assert (x["dtype"], x["missing"], x["mean"]) == ("number", 5, 1.5)
    assert (s["dtype"], s["missing"], s["distinct"]) == ("string", 5, 2)


def test_quoted_newline_field_is_one_cell(client: TestClient) -> None:
    r = upload(client, b'id,text\n1,"two\nlines"\n2,"a, b"\n')
    assert r.status_code == 201, r.text
    assert r.json()["rows"] == 2
    ds = client.get(f"/datasets/{r.json()['id']}").json()
    assert ds["columns"][1]["distinct"] == 2


def test_late_string_in_numeric_column_becomes_string(client: TestClient) -> None:
    # Past pyarrow's first block (1 MiB) a number column turns out to hold text.
    content = b"n,v\n" + b"1,2\n" * 400_000 + b"x,2.5\n"
    r = upload(client, content)
    assert r.status_code == 201, r.text
    n, v = r.json()["columns"]
    assert n["dtype"] == "string" and n["distinct"] == 2
    assert v["dtype"] == "number" and v["max"] == 2.5
    assert r.json()["rows"] == 400_001


def test_booleans_and_dates_are_kept_as_text(client: TestClient) -> None:
    r = upload(client, b"d,b,y\n2020-01-01,true,1\n2020-01-02,False,2\n")
    assert r.status_code == 201, r.text
    d, b, _ = r.json()["columns"]
    assert (d["dtype"], d["distinct"]) == ("string", 2)
    assert (b["dtype"], b["distinct"]) == ("string", 2)
    table = service.load_table(_row(r.json()["id"]))
    assert list(table["b"]) == ["true", "False"]


def test_load_table_types_and_missing(client: TestClient) -> None:
    r = upload(client, SMALL_CSV)
    table = service.load_table(_row(r.json()["id"]))
    assert list(table) == ["age", "income", "city", "flag"]
    assert table["age"].dtype == np.float64
    np.testing.assert_array_equal(table["age"], [30.0, 40.0, np.nan, 50.0])
    np.testing.assert_array_equal(table["income"], [1.5, np.nan, 3.5, 4.0])
    assert table["city"].dtype == object
    assert list(table["city"]) == ["Paris", "Lyon", "Paris", None]


def test_load_table_selects_columns_and_skips_unknown_ones(client: TestClient) -> None:
    row = _row(upload(client, SMALL_CSV).json()["id"])
    table = service.load_table(row, columns=["city", "age", "nope", "city"])
    assert list(table) == ["city", "age"]
    assert len(table["age"]) == 4


def test_load_table_of_deleted_file_raises_file_not_found(client: TestClient) -> None:
    row = _row(upload(client, SMALL_CSV).json()["id"])
    (Path(settings.data_dir) / row.path).unlink()
    with pytest.raises(FileNotFoundError):
        service.load_table(row)


def test_parquet_keeps_int64_when_all_ints(client: TestClient) -> None:
    r = upload(client, b"i,f\n1,1\n2,2.5\n3,\n")
    schema = pq.read_schema(Path(settings.data_dir) / _row(r.json()["id"]).path)
    assert str(schema.field("i").type) == "int64"
    assert str(schema.field("f").type) == "double"


def test_list_newest_first_and_get(client: TestClient) -> None:
    ids = [upload(client, SMALL_CSV, filename=f"{i}.csv").json()["id"] for i in range(3)]
    listed = client.get("/datasets")
    assert listed.status_code == 200
    assert [d["id"] for d in listed.json()] == ids[::-1]
    assert [d["id"] for d in client.get("/datasets?limit=2&offset=1").json()] == ids[1::-1]
    got = client.get(f"/datasets/{ids[0]}")
    assert got.status_code == 200
    assert got.json()["name"] == "0.csv" and got.json()["rows"] == 4


def test_get_unknown_dataset_is_404_in_error_shape(client: TestClient) -> None:
    r = client.get("/datasets/does-not-exist")
    assert r.status_code == 404
    assert r.json() == {
        "detail": [
            {
                "loc": ["path", "dataset_id"],
                "msg": "Dataset 'does-not-exist' does not exist.",
                "type": "dataset_not_found",
            }
        ]
    }


def test_parquet_file_exists_after_upload_and_is_gone_after_delete(
    client: TestClient, session: Session
) -> None:
    r = upload(client, SMALL_CSV)
    dataset_id = r.json()["id"]
    path = Path(settings.data_dir) / _row(dataset_id).path
    assert path.is_file()
    assert pq.read_table(path).num_rows == 4
    assert dataset_files() == [path]  # no spool or .part file left behind

    deleted = client.delete(f"/datasets/{dataset_id}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert not path.exists()
    assert session.scalar(select(func.count()).select_from(Dataset)) == 0
    assert client.get(f"/datasets/{dataset_id}").status_code == 404
    assert client.delete(f"/datasets/{dataset_id}").status_code == 404


def test_gc_orphans_removes_files_without_rows(client: TestClient, session: Session) -> None:
    kept = Path(settings.data_dir) / _row(upload(client, SMALL_CSV).json()["id"]).path
    folder = kept.parent
    orphan = folder / "0123456789abcdef0123456789abcdef.parquet"  # row deleted, file not
    orphan.write_bytes(b"PAR1")
    # A crashed upload: lock file (no longer held), spool and temporary Parquet.
    crashed = [
        folder / f".{'c' * 32}{suffix}" for suffix in (".lock", ".csv.part", ".parquet.part")
    ]
    for path in crashed:
        path.write_bytes(b"a,b\n1,")

    # With a minimum age, young files are spared (another machine's upload on a network volume).
    hour = 3600.0
    assert (
        service.gc_orphans(session=session, data_dir=settings.data_dir, min_age_seconds=hour) == []
    )
    old = time.time() - 2 * hour
    os.utime(orphan, (old, old))
    assert service.gc_orphans(
        session=session, data_dir=settings.data_dir, min_age_seconds=hour
    ) == [orphan]
    removed = service.gc_orphans(session=session, data_dir=settings.data_dir)

    assert sorted(removed) == sorted(crashed)
    assert dataset_files() == [kept]
    assert service.gc_orphans(session=session, data_dir=settings.data_dir) == []


def test_gc_orphans_spares_uploads_in_flight(client: TestClient, session: Session) -> None:
    """Files of an id whose lock is held (another process mid-upload) are left alone."""
    files = service.new_files()
    files.spool.write_bytes(b"a,b\n1,2\n")
    files.parquet.write_bytes(b"PAR1")
    try:
        assert (
            service.gc_orphans(session=session, data_dir=settings.data_dir, min_age_seconds=0) == []
        )
        assert files.spool.exists() and files.parquet.exists() and files.lock.exists()
    finally:
        service.release(files)
    assert dataset_files() == []


def test_gc_orphans_keeps_a_file_committed_meanwhile(client: TestClient, session: Session) -> None:
    """A row committed between the collector's listing and its lock check keeps its file."""
    row = _row(upload(client, SMALL_CSV).json()["id"])
    path = Path(settings.data_dir) / row.path
    real_scalars = session.scalars
    session.scalars = lambda *_a, **_k: iter([])  # type: ignore[method-assign]  # stale listing
    try:
        assert (
            service.gc_orphans(session=session, data_dir=settings.data_dir, min_age_seconds=0) == []
        )
    finally:
        session.scalars = real_scalars  # type: ignore[method-assign]
    assert path.exists()


def test_gc_orphans_without_data_dir_is_a_no_op(session: Session, tmp_path: Path) -> None:
    assert service.gc_orphans(session=session, data_dir=tmp_path / "nowhere") == []


def test_datasets_are_scoped_to_their_api_key(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "auth_required", True)
    _, alice = create_key(session=session, name="alice")
    _, bob = create_key(session=session, name="bob")
    as_alice = {"Authorization": f"Bearer {alice}"}
    as_bob = {"Authorization": f"Bearer {bob}"}

    assert upload(client, SMALL_CSV).status_code == 401
    created = upload(client, SMALL_CSV, headers=as_alice)
    assert created.status_code == 201
    dataset_id = created.json()["id"]

    assert client.get(f"/datasets/{dataset_id}", headers=as_alice).status_code == 200
    assert client.get(f"/datasets/{dataset_id}", headers=as_bob).status_code == 404
    assert client.get("/datasets", headers=as_bob).json() == []
    assert [d["id"] for d in client.get("/datasets", headers=as_alice).json()] == [dataset_id]
    assert client.delete(f"/datasets/{dataset_id}", headers=as_bob).status_code == 404
    assert client.delete(f"/datasets/{dataset_id}", headers=as_alice).status_code == 204


def test_openapi_documents_every_dataset_endpoint(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ops = {
        (path, method): op
        for path, item in spec["paths"].items()
        if path.startswith("/datasets")
        for method, op in item.items()
    }
    assert set(ops) == {
        ("/datasets", "post"),
        ("/datasets", "get"),
        ("/datasets/{dataset_id}", "get"),
        ("/datasets/{dataset_id}", "delete"),
    }
    assert all(op.get("summary") for op in ops.values())
    upload_body = ops[("/datasets", "post")]["requestBody"]["content"]["multipart/form-data"]
    assert upload_body["schema"]["required"] == ["file"]
    assert "example" in spec["components"]["schemas"]["DatasetRead"]
    assert {"201", "413", "415", "422"} <= set(ops[("/datasets", "post")]["responses"])


def test_column_stats_mean_is_exact_for_large_values(client: TestClient) -> None:
    r = upload(client, b"v\n1e300\n1e300\n-1e300\n")
    assert r.status_code == 201, r.text
    (v,) = r.json()["columns"]
    assert math.isclose(v["mean"], 1e300 / 3)


def _post_chunked(client: TestClient, content: bytes, chunk: int = 65536) -> httpx.Response:
    """POST the CSV as a multipart body that reaches the app in ``chunk``-byte pieces."""
    head = b'--bb\r\nContent-Disposition: form-data; name="file"; filename="s.csv"\r\n\r\n'
    body = head + content + b"\r\n--bb--\r\n"

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), chunk):
            yield body[i : i + chunk]
            await asyncio.sleep(0)  # let the parse thread interleave with the upload

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            headers = {"content-type": "multipart/form-data; boundary=bb"}
            return await c.post("/datasets", content=pieces(), headers=headers)

    return asyncio.run(send())


def _numeric_csv(rows: int) -> bytes:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((rows, 3))
    lines = [b"x,y,z,label"]
    for i, (a, b, c) in enumerate(x):
        lines.append(f"{a:.6f},{b:.6f},{int(c * 10)},{'ab'[i % 2]}".encode())
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize(
    "content",
    [
        _numeric_csv(30_000),
        b'a,"b c"\n1,"x\ny"\n2,"z"\n',
        b"\xef\xbb\xbfn;s\n1;a\n;NA\n3,5;b\n",
        b"n,v\n" + b"1,2\n" * 300_000 + b"x,2.5\n",  # fallback: a type changes late
        b"n,v\n" + b"1,\n" * 30_000 + b"2,x\n",  # an all-missing first piece, then text
        b"a,b\n" + b"1,2\n" * 30_000 + b'3,"q"\n',  # a quote in a later piece
        b"a\tb\r\n" + b"1\t2\r\n" * 30_000 + b"\r\n\n",  # tabs, CRLF, blank last lines
    ],
    ids=[
        "numeric",
        "quoted-newline",
        "bom-semicolon",
        "late-type-change",
        "late-text-in-empty-column",
        "late-quote",
        "tab-crlf",
    ],
)
def test_streamed_and_one_piece_uploads_agree(client: TestClient, content: bytes) -> None:
    """Chunk boundaries of the body never change the stored table or its profile."""
    streamed = _post_chunked(client, content)
    whole = upload(client, content, filename="s.csv")
    assert streamed.status_code == whole.status_code == 201, streamed.text
    assert streamed.json()["rows"] == whole.json()["rows"]
    assert streamed.json()["columns"] == whole.json()["columns"]
    a = service.load_table(_row(streamed.json()["id"]))
    b = service.load_table(_row(whole.json()["id"]))
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_stats_span_row_groups(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Distinct counts, extremes and row numbers are global, not per Parquet row group."""
    monkeypatch.setattr(common, "ROW_GROUP_ROWS", 2)  # one block is one row group here
    monkeypatch.setattr(csvfile, "BLOCK_BYTES", 16)  # a couple of rows per parse block
    rows = "".join(f"{v},{i}\n" for i, v in enumerate("abacabadx"))
    r = upload(client, b"s,n\n" + rows.encode())
    assert r.status_code == 201, r.text
    s, n = r.json()["columns"]
    assert s["distinct"] == 5
    assert (n["min"], n["max"], n["mean"], r.json()["rows"]) == (0.0, 8.0, 4.0, 9)
    bad = upload(client, b"s,n\n" + rows.encode() + b"y,inf\n")
    assert bad.status_code == 422
    assert "row 10 (line 11)" in bad.json()["detail"][0]["msg"]


def test_created_at_is_utc_when_read_back(client: TestClient) -> None:
    created = upload(client, SMALL_CSV).json()
    read = client.get(f"/datasets/{created['id']}").json()
    assert read["created_at"].endswith("Z") and created["created_at"].endswith("Z")
    assert read["created_at"] == created["created_at"]
