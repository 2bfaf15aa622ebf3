"""Stage 2 sink: typed Arrow batches -> a Parquet file plus one statistics summary per column.

Both table formats end here: the CSV reader and the Parquet reader are adapters that yield
batches of int64 / float64 / string arrays, and this module is the one place that checks column
names, writes row groups and folds statistics.
"""

from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.core.errors import InvalidInput
from app.datasets.errors import clip
from app.datasets.ingest import common
from app.datasets.ingest.common import FILE_LOC, Ingested
from app.datasets.ingest.stats import KIND_TYPES, ColumnStats


def check_names(names: Sequence[str], max_columns: int, *, loc: Sequence[str | int]) -> None:
    """Refuse too many columns, empty names and duplicates, naming the culprit."""
    if len(names) > max_columns:
        raise InvalidInput(
            f"The file has {len(names)} columns; at most {max_columns} are allowed "
            "(REGULA_MAX_COLUMNS).",
            loc=loc,
            code="too_many_columns",
        )
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        if not name.strip():
            raise InvalidInput(
                f"Column {i} has an empty name; every column needs a name.",
                loc=loc,
                code="empty_column_name",
            )
        if name in seen:
            raise InvalidInput(
                f"Column name {clip(name)!r} appears twice (columns {seen[name]} and {i}).",
                loc=[*FILE_LOC, clip(name)],
                code="duplicate_column",
            )
        seen[name] = i


def blank_to_null(col: pa.Array) -> pa.Array:
    """A string column with cells of only whitespace made null (they count as missing)."""
    blank = pc.equal(pc.utf8_trim_whitespace(col), "")
    if pc.any(blank).as_py():
        col = pc.if_else(blank, pa.scalar(None, pa.string()), col)
    return col


def write_parquet(
    dest: Path,
    names: Sequence[str],
    kinds: Sequence[str],
    batches: Iterable[Sequence[pa.Array]],
    *,
    no_rows: str,
) -> Ingested:
    """Write ``batches`` (arrays typed as ``kinds``) to ``dest``; summarize every column.

    ``no_rows`` is the sentence of the error raised when there are no rows at all.
    """
    schema = pa.schema([pa.field(n, KIND_TYPES[k]) for n, k in zip(names, kinds, strict=True)])
    stats = [ColumnStats(n, k) for n, k in zip(names, kinds, strict=True)]
    rows = 0  # rows already written
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    # Dictionary encoding pays for strings; for floats it costs 60% more CPU for nothing.
    strings = [n for n, k in zip(names, kinds, strict=True) if k == "string"]
    with pq.ParquetWriter(dest, schema, use_dictionary=strings) as writer:

        def flush() -> None:
            # Statistics per row group, not per batch: far fewer compute calls.
            table = pa.Table.from_batches(pending, schema=schema)
            columns = [s.update(c, rows) for s, c in zip(stats, table.columns, strict=True)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))

        for arrays in batches:
            batch = pa.RecordBatch.from_arrays(list(arrays), schema=schema)
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= common.ROW_GROUP_ROWS:
                flush()
                rows += pending_rows
                pending, pending_rows = [], 0
        if pending_rows:
            flush()
            rows += pending_rows
    if rows == 0:
        raise InvalidInput(no_rows, loc=FILE_LOC, code="no_rows")
    return Ingested(rows=rows, columns=[s.summary() for s in stats])
