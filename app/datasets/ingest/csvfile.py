"""CSV adapter: the spooled CSV -> typed Arrow batches, with pyarrow's streaming reader.

CSV rules: a header line is required; UTF-8 with or without BOM; comma, semicolon or tab
delimiters, sniffed from the header line; '"' quotes, doubled inside a quoted field, which may
span lines. Every cell is read as text and typed here: a column is int64 when every cell is an
integer, else float64 when every cell is a number, else string. Missing cells (empty, only
whitespace, NA, N/A, NaN, nan, null, NULL, None, #N/A...) are counted and stored as null.

One reader, one pass in the common case: the first batch fixes the column types; if a later
batch contradicts them (a number column turns out to hold text), a scan of the whole file
decides every type and the conversion runs once more with them.
"""

import mmap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from app.core.errors import InvalidInput
from app.datasets.ingest.common import FILE_LOC, Ingested, megabytes
from app.datasets.ingest.spool import Spooled
from app.datasets.ingest.stats import KIND_TYPES
from app.datasets.ingest.table import blank_to_null, check_names, write_parquet

# Cells read as missing, in any column: pyarrow's defaults plus spellings pandas and R write.
NULL_VALUES = [*pacsv.ConvertOptions().null_values, "None", "none", "NAN", "Nan", "<NA>"]
DELIMITERS = (",", ";", "\t")
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}
# The header line must fit in this many bytes (2000 columns of 2 KiB names still fit).
MAX_HEADER_BYTES = 4 * 1024 * 1024
# pyarrow parses the CSV in blocks of this size (or twice the header, if longer); a row must fit
# in a block, so a file with longer rows is re-read with blocks up to MAX_BLOCK_BYTES.
BLOCK_BYTES = 1024 * 1024
MAX_BLOCK_BYTES = 64 * 1024 * 1024
# Types a column may have, narrowest first; "null" is a column with no value seen yet.
WIDENING = ("null", "int", "float", "string")
NO_ROWS = "The file has a header line but no data rows."
# pyarrow's words for a cell that does not fit the column's type (not a malformed file).
_CONVERSION = "conversion error"


class _Contradicted(Exception):
    """A batch does not fit the types the first batch gave its columns."""


def _header(src: Path, max_columns: int) -> tuple[str, int]:
    """(delimiter, bytes of the header line), from the counts of delimiters in the header."""
    with open(src, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
        more = bool(f.read(1))
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
            f"The header line is longer than {megabytes(MAX_HEADER_BYTES)}; is this a CSV file?",
            loc=[*FILE_LOC, "line", 1],
            code="header_too_long",
        )
    if newline < 0 or not text[newline:].strip():
        raise InvalidInput(NO_ROWS, loc=FILE_LOC, code="no_rows")
    line = text[:newline]
    counts = {d: _count_outside_quotes(line, d) for d in DELIMITERS}
    delimiter = max(DELIMITERS, key=lambda d: counts[d])  # ties go to the earlier one
    if counts[delimiter] + 1 > max_columns:
        raise InvalidInput(
            f"The header has {counts[delimiter] + 1} columns; at most {max_columns} are allowed "
            "(REGULA_MAX_COLUMNS).",
            loc=[*FILE_LOC, "line", 1],
            code="too_many_columns",
        )
    return delimiter, len(line.encode())


def _count_outside_quotes(line: str, delimiter: str) -> int:
    count, quoted = 0, False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == delimiter and not quoted:
            count += 1
    return count


def _unclosed_quote(src: Path, delimiter: str) -> int | None:
    """The line where a quoted field that never closes starts, if any.

    A quote opens a field only at its start (after a delimiter or a line break); inside, '""'
    is an escaped quote and any other '"' closes the field.
    """
    starts = (delimiter.encode(), b"\n", b"\r")
    with open(src, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        body = 3 if mm[:3] == b"\xef\xbb\xbf" else 0
        pos, opened = body, -1
        while (i := mm.find(b'"', pos)) >= 0:
            if opened < 0:
                if i == body or mm[i - 1 : i] in starts:
                    opened = i
                pos = i + 1
            elif mm[i + 1 : i + 2] == b'"':
                pos = i + 2
            else:
                opened, pos = -1, i + 1
        return None if opened < 0 else _count_newlines(mm, opened) + 1


def _count_newlines(mm: mmap.mmap, end: int) -> int:
    count, pos = 0, 0
    while pos < end:
        block = mm[pos : min(pos + (1 << 24), end)]
        count += block.count(b"\n")
        pos += len(block)
    return count


def _ragged_line(src: Path, text: str) -> int | None:
    """The line of the first row whose text is ``text`` (rows pyarrow reports as ragged)."""
    needle = b"\n" + text.encode()
    with open(src, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = 0
        while (i := mm.find(needle, pos)) >= 0:
            after = mm[i + len(needle) : i + len(needle) + 2]
            if after in (b"", b"\n", b"\r\n", b"\r") or after[:1] in (b"\n", b"\r"):
                return _count_newlines(mm, i + 1) + 1
            pos = i + 1
    return None


class _Reader:
    """Options and error wording of one CSV file's reads."""

    def __init__(self, src: Path, delimiter: str, has_quotes: bool, block_bytes: int) -> None:
        self.src = src
        self.delimiter = delimiter
        self.has_quotes = has_quotes
        self.block_bytes = block_bytes
        self.bad_row: tuple[int, int, str] | None = None  # (expected, got, text) of a ragged row

    def _on_invalid_row(self, row: Any) -> str:
        if self.bad_row is None:
            self.bad_row = (row.expected_columns, row.actual_columns, row.text)
        return "error"

    def open(self, types: dict[str, pa.DataType] | None) -> pacsv.CSVStreamingReader:
        """A streaming reader with these column types (None: inferred from the first block)."""
        return pacsv.open_csv(
            self.src,
            read_options=pacsv.ReadOptions(block_size=self.block_bytes, use_threads=True),
            parse_options=pacsv.ParseOptions(
                delimiter=self.delimiter,
                newlines_in_values=self.has_quotes,
                ignore_empty_lines=True,
                invalid_row_handler=self._on_invalid_row,
            ),
            convert_options=pacsv.ConvertOptions(
                null_values=NULL_VALUES,
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                column_types=types,
            ),
        )

    def batches(self, types: dict[str, pa.DataType] | None) -> Iterator[list[pa.Array]]:
        """Every batch of the file, as lists of columns."""
        with self.open(types) as reader:
            for batch in reader:
                yield batch.columns

    def names(self, header_bytes: int) -> list[str]:
        """The column names, parsed by pyarrow from the header line alone (a cheap read)."""
        with open(self.src, "rb") as f:
            head = f.read(header_bytes + 4)  # + a BOM, + "\r"
        line = head.split(b"\n", 1)[0] + b"\n"
        try:
            source = pa.BufferReader(line)
            parse = pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=False)
            with pacsv.open_csv(source, parse_options=parse) as reader:
                return reader.schema.names
        except pa.ArrowInvalid:
            with self.open(None) as probe:  # a quoted header field spanning lines
                return probe.schema.names

    def error(self, exc: pa.ArrowInvalid) -> InvalidInput:
        """pyarrow's parse error as a sentence naming the line (ragged rows) or the cause."""
        text = str(exc)
        if self.bad_row is not None:
            expected, got, row = self.bad_row
            line = _ragged_line(self.src, row)
            where = f"Line {line}" if line else "A row"
            fields = "field" if got == 1 else "fields"
            return InvalidInput(
                f"{where} has {got} {fields} but the header has {expected} "
                f"({DELIMITER_NAMES[self.delimiter]}-delimited): {row.strip()[:80]!r}.",
                loc=[*FILE_LOC, "line", line] if line else FILE_LOC,
                code="ragged_row",
            )
        if is_straddle(text):
            return InvalidInput(
                f"A row is longer than {megabytes(MAX_BLOCK_BYTES)}, or a quote is never closed.",
                loc=FILE_LOC,
                code="invalid_csv",
            )
        return InvalidInput(
            f"The CSV cannot be parsed: {text[:200]}", loc=FILE_LOC, code="invalid_csv"
        )


def is_straddle(text: str) -> bool:
    """Whether pyarrow's error says a row did not fit in one block."""
    return "straddl" in text or "block size" in text


def _typed(col: pa.Array, kind: str) -> pa.Array:
    """``col`` (text) as ``kind``, blank cells null; raises ArrowInvalid if a cell does not fit."""
    if kind == "string":
        return blank_to_null(col)
    trimmed = pc.utf8_trim_whitespace(col)
    blank = pc.equal(trimmed, "")
    if pc.any(blank).as_py():
        trimmed = pc.if_else(blank, pa.scalar(None, pa.string()), trimmed)
    return pc.cast(trimmed, pa.int64() if kind == "int" else pa.float64())


def _widen(col: pa.Array, kind: str) -> str:
    """The narrowest kind, no narrower than ``kind``, that holds every cell of ``col``."""
    if kind == "string":
        return kind
    values = blank_to_null(col).drop_null()
    if len(values) == 0:
        return kind
    for candidate in WIDENING[max(WIDENING.index(kind), 1) : 3]:
        try:
            _typed(values, candidate)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return candidate
    return "string"


def _scan_kinds(reader: _Reader, names: Sequence[str]) -> list[str]:
    """Every column's kind, from a pass over the whole file read as text."""
    kinds = ["null"] * len(names)
    for arrays in reader.batches(dict.fromkeys(names, pa.string())):
        kinds = [_widen(col, k) for col, k in zip(arrays, kinds, strict=True)]
    return kinds


# How a column is read: "native" (pyarrow parses the numbers) or "text" (read as text, typed here).
Plan = list[tuple[str, str]]


def _first_plan(first: list[pa.Array]) -> tuple[Plan, bool]:
    """The plan the first (type-inferred) batch suggests; True if the file must be reopened
    with it (a column pyarrow read as booleans or dates, which we keep as the text written)."""
    plan: Plan = []
    reopen = False
    for col in first:
        t = col.type
        if pa.types.is_integer(t):
            plan.append(("int", "native"))
        elif pa.types.is_floating(t) or pa.types.is_null(t):
            plan.append(("float", "native"))
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            # Text that is numbers once blank cells are missing ("1", "  ", "3") is numbers.
            kind = _widen(col, "null")
            plan.append(("float" if kind == "null" else kind, "text"))
        else:
            plan.append(("string", "text"))
            reopen = True
    return plan, reopen


def _cast(col: pa.Array, kind: str, mode: str) -> pa.Array:
    if mode == "text":
        return _typed(col, kind)
    target = KIND_TYPES[kind]
    return col if col.type == target else pc.cast(col, target)


def _convert(
    reader: _Reader, dest: Path, names: list[str], plan: Plan | None, *, final: bool = False
) -> Ingested:
    """One pass: batches -> typed batches -> Parquet. ``plan`` None: from the first batch.

    Unless ``final`` (a plan from a scan of the whole file, which every cell fits), a batch
    that contradicts the plan (or a pyarrow conversion error) raises ``_Contradicted``.
    """
    guessed = not final
    types = None
    if plan is not None:
        types = {
            n: KIND_TYPES[k] if m == "native" else pa.string()
            for n, (k, m) in zip(names, plan, strict=True)
        }
    batches = reader.batches(types)

    def read_next() -> list[pa.Array] | None:
        try:
            return next(batches, None)
        except pa.ArrowInvalid as exc:
            if guessed and reader.bad_row is None and _CONVERSION in str(exc):
                raise _Contradicted from None
            raise

    first = read_next()
    if plan is None:
        if first is None:
            plan = [("float", "native")] * len(names)
        else:
            plan, reopen = _first_plan(first)
            if reopen:
                batches.close()  # type: ignore[attr-defined]  # a generator
                return _convert(reader, dest, names, plan)  # still a guess

    def typed() -> Iterator[list[pa.Array]]:
        cols = first
        while cols is not None:
            try:
                yield [_cast(c, k, m) for c, (k, m) in zip(cols, plan, strict=True)]
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                if not guessed:
                    raise
                raise _Contradicted from None
            cols = read_next()

    return write_parquet(dest, names, [k for k, _ in plan], typed(), no_rows=NO_ROWS)


def convert_csv(upload: Spooled, dest: Path, *, max_columns: int) -> Ingested:
    """Convert the spooled CSV to Parquet at ``dest``; summarize its columns."""
    src = upload.path
    delimiter, header_bytes = _header(src, max_columns)
    if upload.quotes % 2 == 1:
        line = _unclosed_quote(src, delimiter)
        if line is not None:
            raise InvalidInput(
                f"The quoted field starting on line {line} is never closed (odd number of '\"').",
                loc=[*FILE_LOC, "line", line],
                code="unclosed_quote",
            )
    block_bytes = BLOCK_BYTES
    while block_bytes <= 2 * header_bytes:
        block_bytes *= 2
    while True:
        reader = _Reader(src, delimiter, upload.quotes > 0, block_bytes)
        try:
            names = reader.names(header_bytes)
            check_names(names, max_columns, loc=[*FILE_LOC, "line", 1])
            try:
                return _convert(reader, dest, names, None)
            except _Contradicted:
                kinds = _scan_kinds(reader, names)
                plan = [("float" if k == "null" else k, "text") for k in kinds]
                return _convert(reader, dest, names, plan, final=True)
        except pa.ArrowInvalid as exc:
            if is_straddle(str(exc)) and block_bytes < MAX_BLOCK_BYTES and reader.bad_row is None:
                block_bytes *= 8
                continue
            raise reader.error(exc) from None
