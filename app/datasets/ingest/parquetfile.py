"""Parquet adapter: an uploaded Parquet file -> typed Arrow batches, read batch by batch.

Column types map onto the table kinds: integers -> int64, floats and decimals -> float64, strings
(plain or dictionary-encoded), booleans, dates and timestamps -> string (the text a CSV would
hold), an all-null column -> float64. Nested (list, struct, map), binary and other types are
refused, naming the column. The same limits as CSV apply (size, columns, names).
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.core.errors import InvalidInput
from app.datasets.errors import clip
from app.datasets.ingest.common import FILE_LOC, Ingested
from app.datasets.ingest.spool import Spooled
from app.datasets.ingest.table import blank_to_null, check_names, write_parquet

BATCH_ROWS = 64 * 1024
Converter = Callable[[pa.Array], pa.Array]


def _unreadable(exc: BaseException) -> InvalidInput:
    return InvalidInput(
        f"The Parquet file cannot be read (truncated or corrupt?): {str(exc)[:160]}",
        loc=FILE_LOC,
        code="invalid_parquet",
    )


def _plan(name: str, dtype: pa.DataType) -> tuple[str, Converter]:
    """(kind, converter to that kind) for a column of ``dtype``; refuses unsupported types."""
    t = pa.types
    if t.is_dictionary(dtype):
        kind, inner = _plan(name, dtype.value_type)
        return kind, lambda col: inner(pc.cast(col, dtype.value_type))
    if t.is_integer(dtype):

        def to_int(col: pa.Array) -> pa.Array:
            try:
                return pc.cast(col, pa.int64())
            except pa.ArrowInvalid:
                raise InvalidInput(
                    f"Column {clip(name)!r} holds integers beyond the int64 range.",
                    loc=[*FILE_LOC, clip(name)],
                    code="overflow",
                ) from None

        return "int", to_int
    if t.is_floating(dtype) or t.is_decimal(dtype) or t.is_null(dtype):
        return "float", lambda col: pc.cast(col, pa.float64())
    if t.is_string(dtype) or t.is_large_string(dtype) or t.is_string_view(dtype):
        return "string", lambda col: blank_to_null(pc.cast(col, pa.string()))
    if t.is_boolean(dtype) or (t.is_temporal(dtype) and not t.is_duration(dtype)):
        return "string", lambda col: pc.cast(col, pa.string())
    kind = "nested" if t.is_nested(dtype) else "unsupported"
    raise InvalidInput(
        f"Column {clip(name)!r} has the {kind} Parquet type {clip(str(dtype), 60)}; columns must "
        "hold numbers, strings, booleans, dates or timestamps.",
        loc=[*FILE_LOC, clip(name)],
        code="unsupported_column_type",
    )


def convert_parquet(upload: Spooled, dest: Path, *, max_columns: int) -> Ingested:
    """Convert the spooled Parquet file to our Parquet at ``dest``; summarize its columns."""
    try:
        source = pq.ParquetFile(upload.path)
        schema = source.schema_arrow
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise _unreadable(exc) from None
    names = schema.names
    check_names(names, max_columns, loc=FILE_LOC)
    plans = [_plan(field.name, field.type) for field in schema]

    def batches() -> Iterator[list[pa.Array]]:
        reader = source.iter_batches(batch_size=BATCH_ROWS)
        while True:
            try:
                batch = next(reader)
            except StopIteration:
                return
            except (pa.ArrowInvalid, OSError, ValueError) as exc:
                raise _unreadable(exc) from None
            yield [conv(col) for (_, conv), col in zip(plans, batch.columns, strict=True)]

    try:
        return write_parquet(
            dest,
            names,
            [kind for kind, _ in plans],
            batches(),
            no_rows="The Parquet file has no rows.",
        )
    finally:
        source.close()
