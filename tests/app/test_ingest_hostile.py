"""Hostile uploads: each is a 4xx with a stable code and a sentence naming the culprit, never a
500, and leaves the database rows and the data folder exactly as they were.

One parametrized test per family: bad CSV content, odd-but-valid CSV content, bad requests,
and uploads over the size limit (which must be refused while streaming, not after).
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import settings
from app.datasets.ingest import csvfile
from app.datasets.orm import Dataset

BASELINE_CSV = b"a,b\n1,2\n3,4\n"


def snapshot(session: Session) -> tuple[int, list[str]]:
    """(dataset rows, every file under the data folder) — compared before and after a request."""
    session.expire_all()
    rows = session.scalar(select(func.count()).select_from(Dataset))
    root = Path(settings.data_dir)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return rows, files


@pytest.fixture
def baseline(client: TestClient, session: Session) -> Iterator[tuple[int, list[str]]]:
    """One good dataset already stored, so 'unchanged' is checked against a non-empty state."""
    assert client.post("/datasets", files={"file": ("ok.csv", BASELINE_CSV)}).status_code == 201
    before = snapshot(session)
    assert before[0] == 1 and len(before[1]) == 1
    yield before
    assert snapshot(session) == before


def assert_error(response: httpx.Response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    (error,) = response.json()["detail"]
    assert error["type"] == code
    for fragment in fragments:
        assert fragment in error["msg"], error["msg"]


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    """A multipart/form-data body built by hand (httpx cannot send an empty filename)."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


LATE_RAGGED = b"a,b\n" + b"1,2\n" * 300_000 + b"3\n"

BAD_CSV = [
    ("empty", b"", "empty_file", ["empty"]),
    ("blank-lines", b"\n\r\n  \n", "empty_file", ["empty"]),
    ("bom-only", b"\xef\xbb\xbf", "empty_file", ["empty"]),
    ("header-only", b"a,b\n", "no_rows", ["no data rows"]),
    ("header-and-blank-lines", b"a,b\n\n\n", "no_rows", ["no data rows"]),
    ("binary-nul", bytes(range(256)) * 4, "binary_file", ["NUL byte", "line 1"]),
    ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not_utf8", ["0x89", "offset 0"]),
    ("nul-in-text", b"a,b\n1,2\n3,\x00\n", "binary_file", ["NUL byte", "line 3", "offset 10"]),
    ("gzip", b"\x1f\x8b\x08\x08\xd2\x8c\xd1e\x00\x03", "not_utf8", ["0x8b", "line 1"]),
    ("latin-1", "name\ncafé\n".encode("latin-1"), "not_utf8", ["0xe9", "line 2", "offset 8"]),
    ("utf-16", "a,b\n1,2\n".encode("utf-16"), "not_utf8", ["UTF-16"]),
    ("truncated-utf8", b"a\n\xc3", "not_utf8", ["multi-byte"]),
    ("ragged-short", b"a,b,c\n1,2,3\n4,5\n", "ragged_row", ["Line 3", "2 fields", "header has 3"]),
    ("ragged-long", b"a,b\n1,2\n3,4,5\n", "ragged_row", ["Line 3", "3 fields", "'3,4,5'"]),
    ("ragged-late", LATE_RAGGED, "ragged_row", ["Line 300002", "1 field"]),
    ("duplicate-names", b"a,b,a\n1,2,3\n", "duplicate_column", ["'a'", "columns 1 and 3"]),
    ("empty-name", b"a,,b\n1,2,3\n", "empty_column_name", ["Column 2"]),
    ("blank-name", b"a, ,b\n1,2,3\n", "empty_column_name", ["Column 2"]),
    ("trailing-delimiter", b"a,b,\n1,2,\n", "empty_column_name", ["Column 3"]),
    ("inf", b"a,b\n1,2\n3,inf\n", "non_finite", ["Column 'b'", "row 2", "line 3"]),
    ("minus-infinity", b"a\n-Infinity\n", "non_finite", ["Column 'a'", "row 1"]),
    ("overflow-1e400", b"x,y\n1,1e400\n", "non_finite", ["Column 'y'", "overflows"]),
    ("overflow-negative", b"x,y\n1,2\n-1e999,3\n", "non_finite", ["Column 'x'", "row 2"]),
    ("sum-overflow", b"v\n1e308\n1e308\n", "overflow", ["Column 'v'"]),
    ("unclosed-quote", b'a,b\n1,"abc\n2,3\n', "unclosed_quote", ["line 2"]),
    ("too-many-columns", b"c1,c2,c3,c4,c5,c6\n1,2,3,4,5,6\n", "too_many_columns", ["6", "5"]),
    ("too-many-tabs", b"c1\tc2\tc3\tc4\tc5\tc6\n1\t2\t3\t4\t5\t6\n", "too_many_columns", ["6"]),
    ("header-too-long", b"x" * 3000, "header_too_long", ["header line"]),
]


@pytest.mark.parametrize(
    ("content", "code", "fragments"),
    [pytest.param(c, code, f, id=i) for i, c, code, f in BAD_CSV],
)
def test_bad_csv_is_rejected_and_leaves_nothing(
    client: TestClient,
    session: Session,
    baseline: tuple[int, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    content: bytes,
    code: str,
    fragments: list[str],
) -> None:
    monkeypatch.setattr(settings, "max_columns", 5)
    monkeypatch.setattr(csvfile, "MAX_HEADER_BYTES", 2048)
    r = client.post("/datasets", files={"file": ("hostile.csv", content, "text/csv")})
    assert_error(r, 422, code, *fragments)
    assert snapshot(session) == baseline


ODD_BUT_VALID = [
    # (id, content, rows, {column: (dtype, missing)})
    ("quoted-newline", b'id,text\n1,"line one\nline two"\n2,x\n', 2, {"text": ("string", 0)}),
    ("quoted-crlf", b'id,text\r\n1,"a\r\nb"\r\n2,x\r\n', 2, {"text": ("string", 0)}),
    ("escaped-quotes", b'id,text\n1,"say ""hi"""\n', 1, {"text": ("string", 0)}),
    ("nan-text", b"v\n1\nNaN\nnan\n-NaN\nNAN\n2\n", 6, {"v": ("number", 4)}),
    ("missing-everywhere", b"v,s\n,\nNA,NA\n1,x\n", 3, {"v": ("number", 2), "s": ("string", 2)}),
    ("all-missing-column", b"v,w\n,1\nNA,2\n", 2, {"v": ("number", 2)}),
    ("unicode-names", "prénom,年齢\nÉmile,3\n".encode(), 1, {"年齢": ("number", 0)}),
    ("single-column", b"only\n1\n2\n3\n", 3, {"only": ("number", 0)}),
    ("no-trailing-newline", b"a,b\n1,2", 1, {"b": ("number", 0)}),
    ("huge-int", b"x\n99999999999999999999\n1\n", 2, {"x": ("number", 0)}),
    ("path-in-filename", b"a\n1\n", 1, {"a": ("number", 0)}),
]


@pytest.mark.parametrize(
    ("content", "rows", "expected"),
    [pytest.param(c, n, e, id=i) for i, c, n, e in ODD_BUT_VALID],
)
def test_odd_but_valid_csv_is_accepted(
    client: TestClient, session: Session, content: bytes, rows: int, expected: dict
) -> None:
    r = client.post("/datasets", files={"file": ("../../etc/evil.csv", content)})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["rows"] == rows
    assert body["name"] == "evil.csv"  # only the base name is kept
    columns = {c["name"]: c for c in body["columns"]}
    for name, (dtype, missing) in expected.items():
        assert (columns[name]["dtype"], columns[name]["missing"]) == (dtype, missing)
    # Exactly one new file, named after the id, inside the datasets folder.
    assert snapshot(session) == (1, [f"datasets/{body['id']}.parquet"])


BOUNDARY_CT = "multipart/form-data; boundary=b0undary"
BAD_REQUESTS = [
    # (id, body, content type, status, code, fragments)
    ("raw-csv-body", BASELINE_CSV, "text/csv", 415, "unsupported_media_type", ["text/csv"]),
    ("json-body", b'{"file": "a,b"}', "application/json", 415, "unsupported_media_type", []),
    ("no-content-type", BASELINE_CSV, None, 415, "unsupported_media_type", ["none"]),
    (
        "url-encoded",
        b"file=a%2Cb",
        "application/x-www-form-urlencoded",
        415,
        "unsupported_media_type",
        [],
    ),
    ("no-boundary", b"x", "multipart/form-data", 422, "invalid_multipart", ["boundary"]),
    ("garbage-multipart", b"garbage", BOUNDARY_CT, 422, "invalid_multipart", ["malformed"]),
    (
        "missing-file-field",
        multipart([("name", None, b"x"), ("data", "a.csv", BASELINE_CSV)]),
        BOUNDARY_CT,
        422,
        "missing_file",
        ["'file'"],
    ),
    ("empty-multipart", b"--b0undary--\r\n", BOUNDARY_CT, 422, "missing_file", []),
    (
        "empty-filename",
        multipart([("file", "", BASELINE_CSV)]),
        BOUNDARY_CT,
        422,
        "empty_filename",
        ["empty file name"],
    ),
    (
        "empty-filename-no-content",
        multipart([("file", "", b"")]),
        BOUNDARY_CT,
        422,
        "empty_filename",
        [],
    ),
    (
        "two-files",
        multipart([("file", "a.csv", BASELINE_CSV), ("file", "b.csv", BASELINE_CSV)]),
        BOUNDARY_CT,
        422,
        "multiple_files",
        ["more than one"],
    ),
    (
        "truncated-body",
        multipart([("file", "a.csv", BASELINE_CSV)])[:-20],
        BOUNDARY_CT,
        422,
        "invalid_multipart",
        ["closing boundary"],
    ),
    (
        "empty-name-field",
        multipart([("name", None, b"  "), ("file", "a.csv", BASELINE_CSV)]),
        BOUNDARY_CT,
        422,
        "invalid_name",
        ["'name'"],
    ),
    (
        "long-name-field",
        multipart([("file", "a.csv", BASELINE_CSV), ("name", None, b"n" * 300)]),
        BOUNDARY_CT,
        422,
        "invalid_name",
        ["255"],
    ),
    (
        "non-utf8-name-field",
        multipart([("file", "a.csv", BASELINE_CSV), ("name", None, b"\xff\xfe")]),
        BOUNDARY_CT,
        422,
        "invalid_name",
        ["UTF-8"],
    ),
    (
        "control-chars-in-name",
        multipart([("file", "a.csv", BASELINE_CSV), ("name", None, b"a\x1b[31mred")]),
        BOUNDARY_CT,
        422,
        "invalid_name",
        ["printable"],
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "fragments"),
    [pytest.param(b, ct, s, c, f, id=i) for i, b, ct, s, c, f in BAD_REQUESTS],
)
def test_bad_request_is_rejected_and_leaves_nothing(
    client: TestClient,
    session: Session,
    baseline: tuple[int, list[str]],
    body: bytes,
    content_type: str | None,
    status: int,
    code: str,
    fragments: list[str],
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/datasets", content=body, headers=headers)
    assert_error(r, status, code, *fragments)
    assert snapshot(session) == baseline


MB = 1024 * 1024


@pytest.mark.parametrize(
    ("declare_length", "max_consumed"),
    [
        pytest.param(False, 1 * MB + 256 * 1024, id="chunked-body"),
        pytest.param(True, 0, id="declared-content-length"),
    ],
)
def test_oversized_upload_is_refused_while_streaming(
    client: TestClient,
    session: Session,
    baseline: tuple[int, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    declare_length: bool,
    max_consumed: int,
) -> None:
    """A 1 MB limit and a 32 MB body: 413 after reading about 1 MB, or before reading any."""
    monkeypatch.setattr(settings, "max_upload_mb", 1)
    head = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n'
    chunk = b"1.0,2.0,3.0,4.0\n" * 4096  # 64 KiB
    n_chunks = 512
    tail = b"\r\n--b0undary--\r\n"
    total = len(head) + n_chunks * len(chunk) + len(tail)
    consumed = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal consumed
        for piece in [head + b"a,b,c,d\n", *([chunk] * n_chunks), tail]:
            consumed += len(piece)
            yield piece

    async def send() -> httpx.Response:
        # ASGITransport hands the body to the app chunk by chunk (TestClient reads it all first).
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            headers = {"content-type": BOUNDARY_CT}
            if declare_length:
                headers["content-length"] = str(total)
            return await c.post("/datasets", content=body(), headers=headers)

    r = asyncio.run(send())
    assert_error(r, 413, "too_large", "1 MB", "REGULA_MAX_UPLOAD_MB")
    assert consumed <= max_consumed < total
    assert snapshot(session) == baseline


def post_in_chunks(client: TestClient, body: bytes, size: int) -> httpx.Response:
    """POST a multipart body to the app in ``size``-byte pieces (TestClient sends one piece)."""

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), size):
            yield body[i : i + size]

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.post(
                "/datasets", content=pieces(), headers={"content-type": BOUNDARY_CT}
            )

    return asyncio.run(send())


SPLIT_CASES = [
    ("latin-1-late", b"name\n" + b"ok\n" * 5000 + "café\n".encode("latin-1"), 422, "not_utf8",
     ["line 5002"]),
    ("nul-late", b"a,b\n" + b"1,2\n" * 5000 + b"3,\x00\n", 422, "binary_file", ["line 5002"]),
    ("utf8-split-across-chunks", "v,s\n1,é\n2,日本\n".encode() * 300, 201, None, []),
    ("bom-split", b"\xef\xbb\xbfa;b\n1;2\n", 201, None, []),
    ("truncated-utf8-at-end", b"a\n1\n\xe6\x97", 422, "not_utf8", ["multi-byte"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "status", "code", "fragments", "size"),
    [
        pytest.param(c, s, code, f, size, id=f"{i}-{size}")
        for i, c, s, code, f in SPLIT_CASES
        for size in (1, 7, 4096)
        if size > 1 or len(c) < 2000  # byte by byte only for short bodies
    ],
)
def test_chunk_boundaries_do_not_change_the_verdict(
    client: TestClient,
    session: Session,
    baseline: tuple[int, list[str]],
    content: bytes,
    status: int,
    code: str | None,
    fragments: list[str],
    size: int,
) -> None:
    """Multi-byte characters, BOMs and line counts survive any split of the body."""
    r = post_in_chunks(client, multipart([("file", "split.csv", content)]), size)
    if code is None:
        assert r.status_code == status, r.text
        rows, files = snapshot(session)
        assert rows == baseline[0] + 1 and len(files) == len(baseline[1]) + 1
        assert r.json()["columns"][0]["name"] in ("v", "a")
        assert client.delete(f"/datasets/{r.json()['id']}").status_code == 204
    else:
        assert_error(r, status, code, *fragments)
    assert snapshot(session) == baseline
