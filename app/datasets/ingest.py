"""Upload ingest: stream a multipart CSV to disk under a size limit and convert it to Parquet.

A large upload never sits whole in memory:

1. ``spool_multipart`` parses the request body as it arrives (python-multipart's streaming
   parser) and appends the ``file`` part to a spool file, rejecting the upload as soon as it
   passes the size limit, contains a NUL byte or stops being UTF-8.
2. ``ingest_csv`` reads the spool file with pyarrow's streaming CSV reader, block by block,
   writes Parquet row groups with ``pyarrow.parquet.ParquetWriter`` and folds each row group into
   per-column statistics; memory stays at a few blocks whatever the file size.
3. ``receive_csv`` (what the router calls) runs 2 in a worker thread while 1 is still receiving,
   so an upload takes about as long as the slower of the two. Only a clean result of that
   overlapped parse is kept; anything else is redone by ``ingest_csv`` on the finished file.

CSV rules: a header line is required; UTF-8 with or without BOM; comma, semicolon or tab
delimiters, sniffed from the header line; '"' quotes, doubled inside a quoted field, which may
span lines. Columns are numbers (int64 when every cell is an integer, else float64) or strings.
Missing cells (empty, NA, N/A, NaN, nan, null, NULL, None, #N/A...) are counted per column and
stored as null. Infinite values ("inf", or a number overflowing float64 such as 1e400) are
rejected, naming the column and row: no model can train on them.

Every rejection is an ``InvalidInput`` (422), ``PayloadTooLarge`` (413) or
``UnsupportedMediaType`` (415) with a stable code and a sentence naming the field, line or column.
"""

import asyncio
import codecs
import csv
import io
import math
import os
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

FILE_LOC = ["body", "file"]
# Cells read as missing, in any column: pyarrow's defaults plus spellings pandas and R write.
NULL_VALUES = [
    *pacsv.ConvertOptions().null_values,
    "None",
    "none",
    "NAN",
    "Nan",
    "<NA>",
]
DELIMITERS = (",", ";", "\t")
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}
# The header line must fit in this many bytes (2000 columns of 1 KiB names still fit).
MAX_HEADER_BYTES = 4 * 1024 * 1024
# Non-file form fields (``name``) and multipart framing may add this much to the file size limit.
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_NAME_CHARS = 255
# pyarrow parses (and type-infers) the CSV in blocks of this size; a row must fit in a block.
# 1 MiB blocks parse fastest; a file with longer rows is re-read with blocks up to 64 MiB.
BLOCK_BYTES = 1024 * 1024
MAX_BLOCK_BYTES = 64 * 1024 * 1024
# The csv module (used only to locate errors pyarrow reports) caps fields at 128 KiB by default;
# a field may legitimately be as long as the upload.
csv.field_size_limit(2**31 - 1)
# Parse uploads while they arrive (see _Speculation); off, they are parsed once complete.
SPECULATE = True
# While an upload arrives it is parsed in pieces of about this size (see _convert_pieces).
PIECE_BYTES = 8 * 1024 * 1024
# Blocks are gathered into Parquet row groups of about this many rows.
ROW_GROUP_ROWS = 128 * 1024


@dataclass
class Spooled:
    """An upload streamed to disk: where it is, what the client called it, how big it is."""

    path: Path
    filename: str | None = None
    name: str | None = None
    size: int = 0
    # Number of '"' bytes: with none, pyarrow may assume no field holds a newline (faster);
    # an odd number hints at a quote that is never closed.
    quotes: int = 0


@dataclass
class Ingested:
    """A converted upload: data rows and one summary dict per column (``ColumnSummary`` shape)."""

    rows: int
    columns: list[dict[str, Any]]


# --- stage 1: the multipart body ----------------------------------------------------------------


def _clean_filename(raw: bytes) -> str:
    # Only the base name is kept (the path on disk is built from the id, never from this).
    text = raw.decode("utf-8", errors="replace").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if ch.isprintable()).strip()
    return text[:MAX_NAME_CHARS]


class _MultipartSpooler:
    """python-multipart callbacks: write the ``file`` part to disk, keep the ``name`` field."""

    def __init__(self, dest: Path, max_bytes: int, listener: "_Speculation | None" = None) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.listener = listener
        self.result = Spooled(path=dest)
        self.out: BinaryIO | None = None
        self.ended = False
        self.file_parts = 0
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._target: str | None = None  # "file", "name" or None (ignored field)
        self._name_buf = bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._headers = {}
        self._target = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        field_name = params.get(b"name")
        if field_name == b"file":
            self.file_parts += 1
            if self.file_parts > 1:
                raise InvalidInput(
                    "Send exactly one 'file' part; this request has more than one.",
                    loc=FILE_LOC,
                    code="multiple_files",
                )
            filename = params.get(b"filename")
            if filename is not None:
                self.result.filename = _clean_filename(filename)
                if not self.result.filename:
                    raise InvalidInput(
                        "The 'file' part has an empty file name; choose a file to upload.",
                        loc=FILE_LOC,
                        code="empty_filename",
                    )
            self._target = "file"
            # Unbuffered: a concurrent reader (the speculative parse) must see each chunk.
            self.out = open(self.dest, "wb", buffering=0)  # noqa: SIM115 - closed in finish()/abort()
            if self.listener is not None:
                self.listener.start(self.dest)
        elif field_name == b"name":
            self._target = "name"
            self._name_buf.clear()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._target == "file":
            self._file_data(data[start:end])
        elif self._target == "name":
            self._name_buf += data[start:end]
            if len(self._name_buf) > 4 * MAX_NAME_CHARS:
                raise InvalidInput(
                    f"The 'name' field must be at most {MAX_NAME_CHARS} characters.",
                    loc=["body", "name"],
                    code="invalid_name",
                )

    def _file_data(self, chunk: bytes) -> None:
        assert self.out is not None
        offset = self.result.size
        if offset + len(chunk) > self.max_bytes:
            raise PayloadTooLarge(
                f"The file is larger than the upload limit of {self.max_bytes // (1024 * 1024)} MB "
                "(REGULA_MAX_UPLOAD_MB).",
                loc=FILE_LOC,
            )
        if offset == 0 and chunk.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise InvalidInput(
                "The file is UTF-16 text (it starts with a UTF-16 byte-order mark); "
                "save the CSV as UTF-8.",
                loc=[*FILE_LOC, "line", 1],
                code="not_utf8",
            )
        # Whichever comes first is reported: a NUL byte (binary) or a byte that is not UTF-8.
        nul = chunk.find(b"\0")
        invalid: tuple[int, str] | None = None
        # ASCII chunks are valid UTF-8 on their own unless a multi-byte character is pending.
        if not (chunk.isascii() and not self._decoder.getstate()[0]):
            pending = len(self._decoder.getstate()[0])
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                invalid = (max(exc.start - pending, 0), exc.object[exc.start : exc.start + 1].hex())
        if nul >= 0 and (invalid is None or nul < invalid[0]):
            line = self._line_at(chunk, nul)
            raise InvalidInput(
                f"The file is binary, not CSV text: NUL byte at line {line} "
                f"(byte offset {offset + nul}).",
                loc=[*FILE_LOC, "line", line],
                code="binary_file",
            )
        if invalid is not None:
            pos, bad = invalid
            line = self._line_at(chunk, pos)
            raise InvalidInput(
                f"The file is not UTF-8 text: invalid byte 0x{bad} at line {line} "
                f"(byte offset {offset + pos}). Save the CSV as UTF-8.",
                loc=[*FILE_LOC, "line", line],
                code="not_utf8",
            )
        # Counting is slow next to a membership test, and most numeric files have no quotes.
        if b'"' in chunk:
            self.result.quotes += chunk.count(b'"')
        view = memoryview(chunk)
        while view:
            view = view[self.out.write(view) :]
        self.result.size += len(chunk)
        if self.listener is not None:
            self.listener.grow(self.result.size)

    def _line_at(self, chunk: bytes, pos: int) -> int:
        """1-based line of byte ``pos`` of ``chunk`` (counted from disk: errors only)."""
        assert self.out is not None
        self.out.flush()
        lines = 1
        with open(self.dest, "rb") as f:
            while block := f.read(1024 * 1024):
                lines += block.count(b"\n")
        return lines + chunk.count(b"\n", 0, pos)

    def on_part_end(self) -> None:
        if self._target == "name":
            try:
                name = bytes(self._name_buf).decode("utf-8").strip()
            except UnicodeDecodeError:
                raise InvalidInput(
                    "The 'name' field is not UTF-8 text.", loc=["body", "name"], code="invalid_name"
                ) from None
            if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
                raise InvalidInput(
                    f"The 'name' field must be 1 to {MAX_NAME_CHARS} printable characters.",
                    loc=["body", "name"],
                    code="invalid_name",
                )
            self.result.name = name
        self._target = None

    def on_end(self) -> None:
        self.ended = True

    def finish(self) -> Spooled:
        if self.out is None:
            raise InvalidInput(
                "The multipart body has no 'file' part; send the CSV as form field 'file'.",
                loc=FILE_LOC,
                code="missing_file",
            )
        if not self.ended:
            raise InvalidInput(
                "The multipart body ended before its closing boundary (truncated upload?).",
                loc=["body"],
                code="invalid_multipart",
            )
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise InvalidInput(
                "The file is not UTF-8 text: it ends inside a multi-byte character.",
                loc=FILE_LOC,
                code="not_utf8",
            ) from None
        self.out.close()
        if self.listener is not None:
            self.listener.finish()
        return self.result

    def abort(self) -> None:
        if self.listener is not None:
            self.listener.abort()
        if self.out is not None:
            self.out.close()
        self.dest.unlink(missing_ok=True)


def check_content_type(content_type: str | None) -> bytes:
    """The multipart boundary of ``content_type``; 415 unless it is multipart/form-data."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        shown = content_type or "none"
        raise UnsupportedMediaType(
            f"Upload the CSV as multipart/form-data (field 'file'), not as {shown}.",
            loc=["header", "content-type"],
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidInput(
            "The multipart/form-data Content-Type has no boundary parameter.",
            loc=["header", "content-type"],
            code="invalid_multipart",
        )
    return boundary


async def spool_multipart(
    chunks: AsyncIterator[bytes],
    *,
    content_type: str | None,
    content_length: str | None,
    dest: Path,
    max_bytes: int,
    listener: "_Speculation | None" = None,
) -> Spooled:
    """Stream a multipart body to ``dest``: the ``file`` part's bytes, checked as they arrive.

    Stops reading (413) as soon as the file passes ``max_bytes``; leaves no file behind on error.
    """
    boundary = check_content_type(content_type)
    limit = max_bytes + FORM_OVERHEAD_BYTES
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise PayloadTooLarge(
            f"The request body ({int(content_length)} bytes) is larger than the upload limit "
            f"of {max_bytes // (1024 * 1024)} MB (REGULA_MAX_UPLOAD_MB).",
            loc=FILE_LOC,
        )
    spooler = _MultipartSpooler(dest, max_bytes, listener)
    parser = MultipartParser(boundary, spooler.callbacks())
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(
                    "The request body is larger than the upload limit of "
                    f"{max_bytes // (1024 * 1024)} MB (REGULA_MAX_UPLOAD_MB).",
                    loc=FILE_LOC,
                )
            parser.write(chunk)
        parser.finalize()
        return spooler.finish()
    except MultipartParseError as exc:
        spooler.abort()
        raise InvalidInput(
            f"The multipart body is malformed: {exc}", loc=["body"], code="invalid_multipart"
        ) from None
    except BaseException:
        spooler.abort()
        raise


# --- stage 2: CSV -> Parquet ----------------------------------------------------------------------


def _count_outside_quotes(line: str, delimiter: str) -> int:
    count, quoted = 0, False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == delimiter and not quoted:
            count += 1
    return count


def sniff_header(src: Path, *, max_columns: int) -> str:
    """The delimiter of ``src`` (comma, semicolon or tab), from the counts in its header line."""
    with open(src, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
        more = bool(f.read(1))
    return _sniff(head, more, max_columns)


def _sniff(head: bytes, more: bool, max_columns: int) -> str:
    text = head.decode("utf-8", errors="ignore").removeprefix("\ufeff")
    if not text.strip():
        raise InvalidInput(
            "The file is empty: expected a header line and at least one data row.",
            loc=FILE_LOC,
            code="empty_file",
        )
    text = text.lstrip("\r\n")
    newline = text.find("\n")
    if newline < 0 and more:
        raise InvalidInput(
            f"The header line is longer than {MAX_HEADER_BYTES // (1024 * 1024)} MB; "
            "is this a CSV file?",
            loc=[*FILE_LOC, "line", 1],
            code="header_too_long",
        )
    line = text if newline < 0 else text[:newline]
    counts = {d: _count_outside_quotes(line, d) for d in DELIMITERS}
    delimiter = max(DELIMITERS, key=lambda d: counts[d])  # ties go to the earlier one
    if counts[delimiter] + 1 > max_columns:
        raise InvalidInput(
            f"The header has {counts[delimiter] + 1} columns; at most {max_columns} are allowed "
            "(REGULA_MAX_COLUMNS).",
            loc=[*FILE_LOC, "line", 1],
            code="too_many_columns",
        )
    return delimiter


def _check_names(names: list[str], max_columns: int) -> None:
    if len(names) > max_columns:
        raise InvalidInput(
            f"The header has {len(names)} columns; at most {max_columns} are allowed "
            "(REGULA_MAX_COLUMNS).",
            loc=[*FILE_LOC, "line", 1],
            code="too_many_columns",
        )
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        if not name.strip():
            raise InvalidInput(
                f"Column {i} of the header line has an empty name; every column needs a name.",
                loc=[*FILE_LOC, "line", 1],
                code="empty_column_name",
            )
        if name in seen:
            raise InvalidInput(
                f"Column name {name!r} appears twice in the header (columns {seen[name]} and {i}).",
                loc=[*FILE_LOC, name],
                code="duplicate_column",
            )
        seen[name] = i


class _ColumnStats:
    """Running missing count, min, max and sum (numbers) or distinct values (strings)."""

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind  # "int", "float" or "string"
        self.missing = 0
        self.count = 0
        self.total = 0.0
        self.min: float | None = None
        self.max: float | None = None
        # Distinct strings kept as an Arrow array: a few bytes of overhead per value instead of
        # a Python object each, so a column of unique ids costs about its size in the file.
        self.distinct = pa.array([], pa.string())

    def update(self, col: pa.ChunkedArray, row0: int) -> pa.ChunkedArray:
        """Fold rows ``row0, row0 + 1, ...`` of the column in; returns them with NaN as null."""
        if self.kind == "string":
            self.missing += col.null_count
            seen = pc.unique(col.drop_null())
            if len(self.distinct):
                seen = pc.unique(pa.concat_arrays([self.distinct, seen]))
            self.distinct = seen
            return col
        if self.kind == "float":
            total = pc.sum(col).as_py()
            if total is not None and math.isnan(total):
                # "NaN"-like text pyarrow parses as a float: count it as missing, store null.
                col = pc.if_else(pc.is_nan(col), pa.scalar(None, pa.float64()), col)
                total = pc.sum(col).as_py()
        else:
            total = pc.sum(pc.cast(col, pa.float64())).as_py()
        self.missing += col.null_count
        n = len(col) - col.null_count
        if n == 0:
            return col
        lo, hi = pc.min_max(col).values()
        lo, hi = float(lo.as_py()), float(hi.as_py())
        if math.isinf(lo) or math.isinf(hi) or math.isinf(total):
            index = pc.index(pc.is_inf(pc.cast(col, pa.float64())), True).as_py()
            if index < 0:  # only the running sum overflowed
                raise InvalidInput(
                    f"Column {self.name!r}: values are too large; their sum overflows float64.",
                    loc=[*FILE_LOC, self.name],
                    code="overflow",
                )
            row = row0 + index + 1
            raise InvalidInput(
                f"Column {self.name!r}, row {row} (line {row + 1}): the value is infinite or "
                "overflows float64 (|x| > 1.8e308); use an empty cell for a missing value.",
                loc=[*FILE_LOC, self.name, "line", row + 1],
                code="non_finite",
            )
        self.count += n
        self.total += total
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)
        if math.isinf(self.total):
            raise InvalidInput(
                f"Column {self.name!r}: values are too large; their sum overflows float64.",
                loc=[*FILE_LOC, self.name],
                code="overflow",
            )
        return col

    def summary(self) -> dict[str, Any]:
        if self.kind == "string":
            return {
                "name": self.name,
                "dtype": "string",
                "missing": self.missing,
                "min": None,
                "max": None,
                "mean": None,
                "distinct": len(self.distinct),
            }
        return {
            "name": self.name,
            "dtype": "number",
            "missing": self.missing,
            "min": self.min,
            "max": self.max,
            "mean": self.total / self.count if self.count else None,
            "distinct": None,
        }


class _NeedsTypes(Exception):
    """The types pyarrow inferred from the first block do not hold for a later block."""


_KIND_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}


def _kind(dtype: pa.DataType) -> str | None:
    if pa.types.is_integer(dtype):
        return "int"
    if pa.types.is_floating(dtype) or pa.types.is_null(dtype):
        return "float"  # an all-missing column is a number column with every cell missing
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    return None  # bool, dates, timestamps...: kept as the text the user wrote


def _options(
    delimiter: str,
    has_quotes: bool,
    column_types: dict[str, pa.DataType] | None,
    block_bytes: int = BLOCK_BYTES,
) -> dict[str, Any]:
    return {
        "read_options": pacsv.ReadOptions(block_size=block_bytes, use_threads=True),
        "parse_options": pacsv.ParseOptions(
            delimiter=delimiter, newlines_in_values=has_quotes, ignore_empty_lines=True
        ),
        "convert_options": pacsv.ConvertOptions(
            null_values=NULL_VALUES,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            column_types=column_types,
        ),
    }


def _unclosed_quote(src: Path, delimiter: str) -> int | None:
    """The line where a quoted field that never closes starts, if any (strict csv module)."""
    start = 1
    try:
        with open(src, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter, strict=True)
            for _record in reader:
                start = reader.line_num + 1
    except csv.Error as exc:
        return start if "unexpected end of data" in str(exc) else None
    except UnicodeDecodeError:
        return None
    return None


def _check_quotes(src: Path, quotes: int, max_columns: int, delimiter: str | None = None) -> None:
    """Reject a quoted field that never closes (only possible with an odd number of quotes)."""
    if quotes % 2 == 0:
        return
    line = _unclosed_quote(src, delimiter or sniff_header(src, max_columns=max_columns))
    if line is not None:
        raise InvalidInput(
            f"The quoted field starting on line {line} is never closed (odd number of '\"').",
            loc=[*FILE_LOC, "line", line],
            code="unclosed_quote",
        )


def _ragged_row(src: Path, delimiter: str, expected: int) -> tuple[int, int] | None:
    """(line, fields) of the first record whose field count is not ``expected``."""
    try:
        with open(src, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            next(reader, None)
            for record in reader:
                if record and len(record) != expected:
                    return reader.line_num, len(record)
    except (csv.Error, UnicodeDecodeError):
        return None
    return None


_CONVERSION = re.compile(r"In CSV column #(\d+): .*CSV conversion error to (\w+): invalid value")
_COLUMN_COUNT = re.compile(r"Expected (\d+) columns, got (\d+): ?(.*)", re.DOTALL)


def _csv_error(exc: pa.ArrowInvalid, src: Path, delimiter: str) -> InvalidInput:
    text = str(exc)
    match = _COLUMN_COUNT.search(text)
    if match:
        expected, got = int(match.group(1)), int(match.group(2))
        found = _ragged_row(src, delimiter, expected)
        where = f"Line {found[0]}" if found else "A row"
        got = found[1] if found else got
        excerpt = match.group(3).strip()[:80]
        fields = "field" if got == 1 else "fields"
        return InvalidInput(
            f"{where} has {got} {fields} but the header has {expected} "
            f"({DELIMITER_NAMES[delimiter]}-delimited): {excerpt!r}.",
            loc=[*FILE_LOC, "line", found[0]] if found else FILE_LOC,
            code="ragged_row",
        )
    if _is_straddle(text):
        return InvalidInput(
            f"A row is longer than {MAX_BLOCK_BYTES // (1024 * 1024)} MB, or a quote is never "
            "closed.",
            loc=FILE_LOC,
            code="invalid_csv",
        )
    return InvalidInput(f"The CSV cannot be parsed: {text}", loc=FILE_LOC, code="invalid_csv")


def _is_straddle(text: str) -> bool:
    return "straddl" in text or "block size" in text


def _header_names(src: Path, delimiter: str, block_bytes: int) -> list[str]:
    with pacsv.open_csv(src, **_options(delimiter, True, None, block_bytes)) as reader:
        return reader.schema.names


def _infer_kinds(
    src: Path, delimiter: str, has_quotes: bool, names: list[str], block_bytes: int
) -> dict[str, pa.DataType]:
    """A full pass reading every cell as text: int64 if all cells are ints, float64, else string."""
    kinds = dict.fromkeys(names, "null")
    opts = _options(delimiter, has_quotes, dict.fromkeys(names, pa.string()), block_bytes)
    with pacsv.open_csv(src, **opts) as reader:
        for batch in reader:
            for name, col in zip(names, batch.columns, strict=True):
                kind = kinds[name]
                if kind == "string":
                    continue
                values = col.drop_null()
                if len(values) == 0:
                    continue
                for candidate in ("int", "float") if kind in ("null", "int") else ("float",):
                    try:
                        pc.cast(values, _KIND_TYPES[candidate])
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        continue
                    kinds[name] = candidate
                    break
                else:
                    kinds[name] = "string"
    return {name: _KIND_TYPES["float" if k == "null" else k] for name, k in kinds.items()}


def _convert(
    src: Path | BinaryIO,
    dest: Path,
    *,
    delimiter: str,
    has_quotes: bool,
    max_columns: int,
    column_types: dict[str, pa.DataType] | None,
    final: bool,
    block_bytes: int,
) -> Ingested:
    opts = _options(delimiter, has_quotes, column_types, block_bytes)
    with pacsv.open_csv(src, **opts) as reader:
        names = reader.schema.names
        _check_names(names, max_columns)
        kinds = [_kind(f.type) for f in reader.schema]
        if None in kinds:
            # Keep booleans, dates and the like as the strings the user wrote.
            raise _NeedsTypes(
                {n: _KIND_TYPES[k or "string"] for n, k in zip(names, kinds, strict=True)}
            )
        schema = pa.schema([pa.field(n, _KIND_TYPES[k]) for n, k in zip(names, kinds, strict=True)])
        stats = [_ColumnStats(n, k) for n, k in zip(names, kinds, strict=True)]
        rows = 0  # rows already written
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        # Dictionary encoding pays for strings; for floats it costs 60% more CPU for nothing.
        strings = [n for n, k in zip(names, kinds, strict=True) if k == "string"]

        def flush() -> None:
            # Statistics per row group, not per block: 25x fewer compute calls.
            table = pa.Table.from_batches(pending, schema=schema)
            columns = [s.update(c, rows) for s, c in zip(stats, table.columns, strict=True)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))

        with pq.ParquetWriter(dest, schema, use_dictionary=strings) as writer:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except pa.ArrowInvalid as exc:
                    if _CONVERSION.search(str(exc)) and not final:
                        raise _NeedsTypes(None) from None
                    raise
                if batch.schema != schema:  # an all-missing (null) column of this block
                    batch = pa.RecordBatch.from_arrays(
                        [pc.cast(c, t) for c, t in zip(batch.columns, schema.types, strict=True)],
                        schema=schema,
                    )
                pending.append(batch)
                pending_rows += batch.num_rows
                if pending_rows >= ROW_GROUP_ROWS:
                    flush()
                    rows += pending_rows
                    pending, pending_rows = [], 0
            if pending:
                flush()
                rows += pending_rows
    if rows == 0:
        raise InvalidInput(
            "The file has a header line but no data rows.", loc=FILE_LOC, code="no_rows"
        )
    return Ingested(rows=rows, columns=[s.summary() for s in stats])


def ingest_csv(src: Path, dest: Path, *, max_columns: int, quotes: int | None = None) -> Ingested:
    """Convert the CSV at ``src`` to Parquet at ``dest``; summarize its columns.

    The header is required; the delimiter (comma, semicolon or tab) is sniffed from it. Types come
    from pyarrow's inference on the first block; if a later block contradicts them, a second pass
    reads everything as text to pick int64, float64 or string per column. ``dest`` is removed on
    any error.
    """
    delimiter = sniff_header(src, max_columns=max_columns)
    if quotes is not None:
        _check_quotes(src, quotes, max_columns, delimiter)
    has_quotes = quotes is None or quotes > 0
    block_bytes = BLOCK_BYTES
    try:
        while True:
            try:
                return _ingest(src, dest, delimiter, has_quotes, max_columns, block_bytes)
            except pa.ArrowInvalid as exc:
                if _is_straddle(str(exc)) and block_bytes < MAX_BLOCK_BYTES:
                    block_bytes *= 8
                    continue
                raise _csv_error(exc, src, delimiter) from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _ingest(
    src: Path, dest: Path, delimiter: str, has_quotes: bool, max_columns: int, block_bytes: int
) -> Ingested:
    column_types: dict[str, pa.DataType] | None = None
    final = False
    # At most: the fast pass, a pass with booleans/dates read as text, and a pass after a
    # full type-inference scan (which is final: its conversion errors are reported).
    for _attempt in range(3):
        try:
            return _convert(
                src,
                dest,
                delimiter=delimiter,
                has_quotes=has_quotes,
                max_columns=max_columns,
                column_types=column_types,
                final=final,
                block_bytes=block_bytes,
            )
        except _NeedsTypes as retry:
            (given,) = retry.args
            if given is not None and column_types is None:
                column_types = given
                continue
            if column_types:
                names = list(column_types)
            else:
                names = _header_names(src, delimiter, block_bytes)
            column_types = _infer_kinds(src, delimiter, has_quotes, names, block_bytes)
            final = True
    raise InvalidInput(
        "The CSV column types cannot be determined.", loc=FILE_LOC, code="invalid_csv"
    )


# --- stage 1 and 2 overlapped ---------------------------------------------------------------------


class _Aborted(Exception):
    """The upload failed while being parsed; the speculative parse stops."""


class _GrowingFile(io.RawIOBase):
    """The spool file while it is written: ``read`` waits for bytes that have not arrived yet."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._pos = 0
        self._cond = threading.Condition()
        self._size = 0
        self._done = False
        self._aborted = False

    def readable(self) -> bool:
        return True

    def grow(self, size: int) -> None:
        with self._cond:
            self._size = size
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def wait_for(self, nbytes: int) -> tuple[int, bool]:
        """Block until ``nbytes`` exist or the upload ended; (bytes so far, ended)."""
        with self._cond:
            while not (self._aborted or self._done or self._size >= nbytes):
                self._cond.wait()
            if self._aborted:
                raise _Aborted
            return self._size, self._done

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self._fd, n, offset)

    def rewind(self) -> None:
        self._pos = 0

    def read(self, n: int | None = -1) -> bytes:
        if n == 0:
            return b""
        want = self._pos + n if n is not None and n > 0 else 1 << 62
        size, _ = self.wait_for(want)
        count = min(size, want) - self._pos
        data = os.pread(self._fd, count, self._pos) if count > 0 else b""
        self._pos += len(data)
        return data

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class _NotPiecewise(Exception):
    """The file cannot be cut into independent pieces at newlines (quotes, long rows, odd types)."""


def _convert_pieces(source: _GrowingFile, dest: Path, delimiter: str, max_columns: int) -> Ingested:
    """Like ``_convert``, but on pieces of ``PIECE_BYTES`` cut at newlines as they arrive.

    Each piece is parsed by ``pyarrow.csv.read_csv``, which uses every core, where the streaming
    reader parses one block at a time. Valid only while no '"' appears (no field can then hold a
    newline) and every piece converts to the first piece's types; else ``_NotPiecewise``.
    """
    parse = pacsv.ParseOptions(delimiter=delimiter, ignore_empty_lines=True)
    pos = rows = 0
    names: list[str] | None = None
    schema: pa.Schema | None = None
    stats: list[_ColumnStats] = []
    writer: pq.ParquetWriter | None = None
    try:
        while True:
            size, done = source.wait_for(pos + PIECE_BYTES + 1)
            last = done and size - pos <= PIECE_BYTES
            piece = source.pread(size - pos if last else PIECE_BYTES, pos)
            if not last:
                cut = piece.rfind(b"\n") + 1
                if cut == 0:
                    raise _NotPiecewise
                piece = piece[:cut]
            if b'"' in piece:
                raise _NotPiecewise
            pos += len(piece)
            convert = pacsv.ConvertOptions(
                null_values=NULL_VALUES,
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                column_types=schema,
            )
            read = pacsv.ReadOptions(block_size=BLOCK_BYTES, column_names=names, use_threads=True)
            try:
                table = pacsv.read_csv(
                    pa.py_buffer(piece), read_options=read, parse_options=parse,
                    convert_options=convert,
                )  # fmt: skip
            except pa.ArrowInvalid as exc:
                if _CONVERSION.search(str(exc)):
                    raise _NotPiecewise from None
                raise
            if schema is None:
                names = table.column_names
                _check_names(names, max_columns)
                kinds = [_kind(t) for t in table.schema.types]
                if None in kinds:
                    raise _NotPiecewise
                schema = pa.schema(
                    [pa.field(n, _KIND_TYPES[k]) for n, k in zip(names, kinds, strict=True)]
                )
                stats = [_ColumnStats(n, k) for n, k in zip(names, kinds, strict=True)]
                strings = [n for n, k in zip(names, kinds, strict=True) if k == "string"]
                writer = pq.ParquetWriter(dest, schema, use_dictionary=strings)
            if table.schema != schema:  # an all-missing (null) column in the first piece
                table = table.cast(schema)
            assert writer is not None
            columns = [st.update(c, rows) for st, c in zip(stats, table.columns, strict=True)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            rows += table.num_rows
            if last:
                break
    finally:
        if writer is not None:
            writer.close()
    if rows == 0:
        raise InvalidInput(
            "The file has a header line but no data rows.", loc=FILE_LOC, code="no_rows"
        )
    return Ingested(rows=rows, columns=[st.summary() for st in stats])


class _Speculation:
    """Parse the CSV in a worker thread while it is still arriving.

    The upload and the parse then take about as long as the slower of the two instead of their
    sum. Only a clean result is used: on any failure the caller parses the finished file again
    (``ingest_csv``), which is also what words the error.
    """

    def __init__(self, dest: Path, max_columns: int) -> None:
        self.dest = dest
        self.max_columns = max_columns
        self.file: _GrowingFile | None = None
        self.future: asyncio.Future[Ingested] | None = None

    def start(self, spool: Path) -> None:
        self.file = _GrowingFile(spool)
        self.future = asyncio.get_running_loop().run_in_executor(None, self._run, self.file)
        # A failed speculation is expected and handled; keep asyncio from logging it as lost.
        self.future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def grow(self, size: int) -> None:
        if self.file is not None:
            self.file.grow(size)

    def finish(self) -> None:
        if self.file is not None:
            self.file.finish()

    def abort(self) -> None:
        if self.file is not None:
            self.file.abort()

    def _run(self, source: _GrowingFile) -> Ingested:
        try:
            want = 64 * 1024
            while True:
                size, done = source.wait_for(want)
                head = source.pread(min(size, MAX_HEADER_BYTES), 0)
                if b"\n" in head or done or size >= MAX_HEADER_BYTES:
                    break
                want *= 4
            delimiter = _sniff(head, not done or size > len(head), self.max_columns)
            try:
                return _convert_pieces(source, self.dest, delimiter, self.max_columns)
            except _NotPiecewise:
                pass
            source.rewind()
            return _convert(
                source,
                self.dest,
                delimiter=delimiter,
                has_quotes=True,  # not known until the end of the upload
                max_columns=self.max_columns,
                column_types=None,
                final=True,
                block_bytes=BLOCK_BYTES,
            )
        except BaseException:
            # The thread owns its output until it succeeds, so it cleans up after itself.
            self.dest.unlink(missing_ok=True)
            raise
        finally:
            source.close()

    async def settle(self) -> None:
        """Stop the parse and wait until its thread has cleaned up."""
        self.abort()
        if self.future is not None:
            await asyncio.wait([self.future])

    async def result(self) -> Ingested | None:
        """The parse's result once the upload is complete, or None if it failed."""
        if self.future is None:
            return None
        try:
            return await self.future
        except Exception:
            return None


async def receive_csv(
    chunks: AsyncIterator[bytes],
    *,
    content_type: str | None,
    content_length: str | None,
    spool: Path,
    dest: Path,
    max_bytes: int,
    max_columns: int,
) -> tuple[Spooled, Ingested]:
    """Stream a multipart CSV upload to ``spool`` and convert it to Parquet at ``dest``.

    The conversion starts while the body is still arriving (see ``_Speculation``). Every check of
    ``spool_multipart`` and ``ingest_csv`` applies; on error neither file is left behind.
    """
    speculation = _Speculation(dest, max_columns) if SPECULATE else None
    try:
        upload = await spool_multipart(
            chunks,
            content_type=content_type,
            content_length=content_length,
            dest=spool,
            max_bytes=max_bytes,
            listener=speculation,
        )
        ingested = await speculation.result() if speculation is not None else None
        if ingested is not None and upload.quotes % 2 == 1:
            await asyncio.to_thread(_check_quotes, spool, upload.quotes, max_columns)
        if ingested is None:
            ingested = await asyncio.to_thread(
                ingest_csv, spool, dest, max_columns=max_columns, quotes=upload.quotes
            )
        return upload, ingested
    except BaseException as exc:
        if speculation is not None and not isinstance(exc, asyncio.CancelledError):
            await speculation.settle()
        spool.unlink(missing_ok=True)
        dest.unlink(missing_ok=True)
        raise
