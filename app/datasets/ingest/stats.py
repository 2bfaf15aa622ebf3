"""Column statistics folded batch by batch: missing count, min, max, mean, max |x|, distinct.

Numbers are int64 or float64 columns, strings string columns. Every statistic is global (not per
row group): each ``update`` folds the next rows in. Distinct values are counted exactly up to
``MAX_DISTINCT``; past that the profile says "more than" (``distinct_capped``), which is all the
jobs domain needs to refuse a classification target with too many classes.
"""

import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from app.core.errors import InvalidInput
from app.datasets.errors import clip
from app.datasets.ingest.common import FILE_LOC, MAX_DISTINCT

KIND_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}


class ColumnStats:
    """Running statistics of one column of kind "int", "float" or "string"."""

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.missing = 0
        self.count = 0
        self.total = 0.0
        self.min: float | None = None
        self.max: float | None = None
        # Distinct values kept as an Arrow array (a few bytes each, not a Python object each);
        # None once there are more than MAX_DISTINCT of them.
        self.distinct: pa.Array | None = pa.array([], KIND_TYPES[kind])

    def update(self, col: pa.ChunkedArray | pa.Array, row0: int) -> pa.ChunkedArray | pa.Array:
        """Fold rows ``row0, row0 + 1, ...`` in; returns the column with NaN stored as null."""
        total = None
        if self.kind == "float":
            total = pc.sum(col).as_py()
            if total is not None and math.isnan(total):
                # NaN is how numbers spell "missing" (CSV "NaN", a pandas float column).
                col = pc.if_else(pc.is_nan(col), pa.scalar(None, pa.float64()), col)
                total = pc.sum(col).as_py()
        self.missing += col.null_count
        self._fold_distinct(col)
        if self.kind == "string" or len(col) == col.null_count:
            return col
        if total is None:
            total = pc.sum(pc.cast(col, pa.float64())).as_py()
        lo, hi = (float(v.as_py()) for v in pc.min_max(col).values())
        if math.isinf(lo) or math.isinf(hi):
            index = pc.index(pc.is_inf(pc.cast(col, pa.float64())), True).as_py()
            row = row0 + index + 1
            raise InvalidInput(
                f"Column {clip(self.name)!r}, row {row} (line {row + 1}): the value is infinite "
                "or overflows float64 (|x| > 1.8e308); use an empty cell for a missing value.",
                loc=[*FILE_LOC, clip(self.name), "line", row + 1],
                code="non_finite",
            )
        self.count += len(col) - col.null_count
        self.total += total
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)
        if math.isinf(total) or math.isinf(self.total):
            raise InvalidInput(
                f"Column {clip(self.name)!r}: values are too large; their sum overflows float64.",
                loc=[*FILE_LOC, clip(self.name)],
                code="overflow",
            )
        return col

    def _fold_distinct(self, col: pa.ChunkedArray | pa.Array) -> None:
        if self.distinct is None:
            return
        values = col.drop_null()
        if len(values) > 2 * MAX_DISTINCT:
            # A prefix with too many values already settles it, at a fraction of the cost.
            prefix = pc.unique(values.slice(0, 2 * MAX_DISTINCT))
            if len(prefix) > MAX_DISTINCT:
                self.distinct = None
                return
        seen = pc.unique(values)
        if isinstance(seen, pa.ChunkedArray):
            seen = seen.combine_chunks()
        if len(self.distinct):
            seen = pc.unique(pa.concat_arrays([self.distinct, seen]))
        self.distinct = seen if len(seen) <= MAX_DISTINCT else None

    def summary(self) -> dict[str, Any]:
        """The column's ``ColumnSummary`` dict."""
        number = self.kind != "string"
        capped = self.distinct is None
        lo, hi = self.min, self.max
        return {
            "name": self.name,
            "dtype": "number" if number else "string",
            "missing": self.missing,
            "min": lo,
            "max": hi,
            "mean": self.total / self.count if number and self.count else None,
            "max_abs": max(abs(lo), abs(hi)) if lo is not None and hi is not None else None,
            "distinct": MAX_DISTINCT if self.distinct is None else len(self.distinct),
            "distinct_capped": capped,
        }
