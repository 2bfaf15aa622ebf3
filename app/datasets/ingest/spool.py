"""Stage 1: stream a multipart body to a spool file, under a size limit and a read timeout.

The body is parsed as it arrives (python-multipart's streaming parser); only the ``file`` part
is written to disk, and the small text fields (``name``, ``image_size``, ``color_mode``) are kept.
The first bytes of the file decide its format: ``PAR1`` is Parquet, ``PK\\x03\\x04`` a zip (an
``.npz`` or a folder of images); anything else must be CSV text, so it is checked while it
arrives (UTF-8, no NUL byte, no UTF-16) and rejected at the first bad byte.
"""

import asyncio
import codecs
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from app.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.datasets.errors import RequestTimeout
from app.datasets.ingest import pool
from app.datasets.ingest.common import FILE_LOC, MAX_NAME_CHARS, megabytes

# Non-file form fields and multipart framing may add this much to the file size limit.
FORM_OVERHEAD_BYTES = 64 * 1024
# Received chunks are handed to the parser (in the ingest pool) in batches of about this size.
FEED_BYTES = 1024 * 1024
# Text form fields and their length limits (characters).
TEXT_FIELDS = {"name": MAX_NAME_CHARS, "image_size": 32, "color_mode": 16}
MAGIC = {b"PAR1": "parquet", b"PK\x03\x04": "zip", b"PK\x05\x06": "zip"}
# Without a known magic number, a file's name or part Content-Type may still say what it is.
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".npz": "zip", ".zip": "zip"}
CONTENT_TYPES = {
    b"application/vnd.apache.parquet": "parquet",
    b"application/x-parquet": "parquet",
    b"application/zip": "zip",
    b"application/x-zip-compressed": "zip",
}


@dataclass
class Spooled:
    """An upload streamed to disk: where it is, what the client called it, its size and format."""

    path: Path
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    size: int = 0
    kind: str = "csv"  # "csv", "parquet" or "zip", from the first bytes
    # Number of '"' bytes (CSV): with none, no field can hold a newline (a faster parse);
    # an odd number hints at a quote that is never closed.
    quotes: int = 0

    @property
    def name(self) -> str | None:
        return self.fields.get("name")


def write_all(out: BinaryIO, data: bytes) -> None:
    """Write every byte of ``data`` (the one place the spool touches the disk)."""
    view = memoryview(data)
    while view:
        view = view[out.write(view) :]


def _clean_filename(raw: bytes) -> str:
    # Only the base name is kept (the path on disk is built from the id, never from this).
    text = raw.decode("utf-8", errors="replace").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if ch.isprintable()).strip()
    return text[:MAX_NAME_CHARS]


class _Spooler:
    """python-multipart callbacks: write the ``file`` part to disk, keep the text fields."""

    def __init__(self, dest: Path, max_bytes: int) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.result = Spooled(path=dest)
        self.out: BinaryIO | None = None
        self.ended = False
        self.file_parts = 0
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._target: str | None = None  # "file", a text field's name, or None (ignored)
        self._text = bytearray()
        self._head = b""  # the file's first bytes, until its format is known
        self._sniffed = False
        self._declared = "csv"  # the format the file name or part Content-Type declares
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
        field_name = params.get(b"name", b"").decode("latin-1")
        if field_name == "file":
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
            suffix = "." + (self.result.filename or "").rsplit(".", 1)[-1].lower()
            ctype, _ = parse_options_header(self._headers.get(b"content-type", b""))
            self._declared = SUFFIXES.get(suffix) or CONTENT_TYPES.get(ctype, "csv")
            self.out = open(self.dest, "wb")  # noqa: SIM115 - closed in finish()/abort()
        elif field_name in TEXT_FIELDS:
            self._target = field_name
            self._text.clear()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._target == "file":
            self._file_data(data[start:end])
        elif self._target is not None:
            self._text += data[start:end]
            if len(self._text) > 4 * TEXT_FIELDS[self._target]:
                raise self._bad_field(self._target)

    def _bad_field(self, name: str) -> InvalidInput:
        limit = TEXT_FIELDS[name]
        return InvalidInput(
            f"The {name!r} field must be 1 to {limit} printable characters.",
            loc=["body", name],
            code=f"invalid_{name}",
        )

    def _file_data(self, chunk: bytes) -> None:
        if not self._sniffed:
            self._head += chunk
            if len(self._head) < 4:
                return
            chunk, self._head = self._head, b""
            self._sniff(chunk)
        assert self.out is not None
        offset = self.result.size
        if offset + len(chunk) > self.max_bytes:
            raise PayloadTooLarge(
                f"The file is larger than the upload limit of {megabytes(self.max_bytes)} "
                "(REGULA_MAX_UPLOAD_MB).",
                loc=FILE_LOC,
            )
        if self.result.kind == "csv":
            self._check_text(chunk, offset)
        write_all(self.out, chunk)
        self.result.size += len(chunk)

    def _sniff(self, first: bytes) -> None:
        self._sniffed = True
        self.result.kind = MAGIC.get(first[:4], self._declared)
        if self.result.kind == "csv" and first.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise InvalidInput(
                "The file is UTF-16 text (it starts with a UTF-16 byte-order mark); "
                "save the CSV as UTF-8.",
                loc=[*FILE_LOC, "line", 1],
                code="not_utf8",
            )

    def _check_text(self, chunk: bytes, offset: int) -> None:
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
        if self._target == "file" and not self._sniffed:
            chunk, self._head = self._head, b""
            self._sniff(chunk)
            self._sniffed = True
            if chunk:
                self._file_data(chunk)
        elif self._target is not None and self._target != "file":
            name = self._target
            try:
                text = bytes(self._text).decode("utf-8").strip()
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"The {name!r} field is not UTF-8 text.",
                    loc=["body", name],
                    code=f"invalid_{name}",
                ) from None
            if not text or len(text) > TEXT_FIELDS[name] or not text.isprintable():
                raise self._bad_field(name)
            self.result.fields[name] = text
        self._target = None

    def on_end(self) -> None:
        self.ended = True

    def finish(self) -> Spooled:
        if self.out is None:
            raise InvalidInput(
                "The multipart body has no 'file' part; send the data as form field 'file'.",
                loc=FILE_LOC,
                code="missing_file",
            )
        if not self.ended:
            raise InvalidInput(
                "The multipart body ended before its closing boundary (truncated upload?).",
                loc=["body"],
                code="invalid_multipart",
            )
        if self.result.kind == "csv":
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise InvalidInput(
                    "The file is not UTF-8 text: it ends inside a multi-byte character.",
                    loc=FILE_LOC,
                    code="not_utf8",
                ) from None
        self.out.close()
        return self.result

    def abort(self) -> None:
        if self.out is not None:
            self.out.close()
        self.dest.unlink(missing_ok=True)


def check_content_type(content_type: str | None) -> bytes:
    """The multipart boundary of ``content_type``; 415 unless it is multipart/form-data."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        shown = content_type or "none"
        raise UnsupportedMediaType(
            f"Upload the file as multipart/form-data (field 'file'), not as {shown}.",
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


def _feed(parser: MultipartParser, data: bytes, final: bool) -> None:
    try:
        if data:
            parser.write(data)
        if final:
            parser.finalize()
    except MultipartParseError as exc:
        raise InvalidInput(
            f"The multipart body is malformed: {exc}", loc=["body"], code="invalid_multipart"
        ) from None


async def spool_multipart(
    chunks: AsyncIterator[bytes],
    *,
    content_type: str | None,
    content_length: str | None,
    dest: Path,
    max_bytes: int,
    read_timeout: float,
) -> Spooled:
    """Stream a multipart body to ``dest``: the ``file`` part's bytes, checked as they arrive.

    Stops reading (413) as soon as the file passes ``max_bytes``, and (408) when no byte arrives
    for ``read_timeout`` seconds; leaves no file behind on any error.
    """
    boundary = check_content_type(content_type)
    limit = max_bytes + FORM_OVERHEAD_BYTES
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise PayloadTooLarge(
            f"The request body ({int(content_length)} bytes) is larger than the upload limit "
            f"of {megabytes(max_bytes)} (REGULA_MAX_UPLOAD_MB).",
            loc=FILE_LOC,
        )
    spooler = _Spooler(dest, max_bytes)
    parser = MultipartParser(boundary, spooler.callbacks())  # type: ignore[arg-type]
    received = 0
    pending: list[bytes] = []
    pending_bytes = 0
    iterator = aiter(chunks)
    try:
        while True:
            try:
                async with asyncio.timeout(read_timeout):
                    chunk = await anext(iterator)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise RequestTimeout(
                    f"The client sent no data for {read_timeout:g} seconds; the upload was "
                    "abandoned (REGULA_BODY_READ_TIMEOUT_SECONDS).",
                    loc=["body"],
                ) from None
            except ClientDisconnect:
                raise InvalidInput(
                    "The client disconnected during the upload.", loc=["body"], code="disconnected"
                ) from None
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(
                    "The request body is larger than the upload limit of "
                    f"{megabytes(max_bytes)} (REGULA_MAX_UPLOAD_MB).",
                    loc=FILE_LOC,
                )
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= FEED_BYTES:
                await pool.run(_feed, parser, b"".join(pending), False)
                pending, pending_bytes = [], 0
        await pool.run(_feed, parser, b"".join(pending), True)
        return spooler.finish()
    except BaseException:
        spooler.abort()
        raise
