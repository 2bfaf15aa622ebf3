"""Feature preprocessing, fitted on the training split and stored with the model.

Raw input is read once into an ``engine.table.Table`` (whatever the container); one statistics
function and one encoder work on that, so the same values give bit-identical encodings whatever
the container. Each raw column is one of two kinds, decided at fit time from its values:

- **numeric** (bool, int, float, or an object array of numbers / ``None``): a value ``v`` is encoded
  as ``z = (v - center) / scale`` with ``center = mean`` and ``scale = std`` (population std,
  ``ddof=0``, of the training split, ``std == 0 -> 1``) when ``standardize`` is on, else ``center =
  0, scale = 1``. A missing value (NaN or ``None``) is first imputed with the training mean, so it
  encodes to ``(mean - center) / scale`` (``0`` under standardization). ``+-inf`` is an error
  (``non_finite``).
- **categorical** (str values, ``None`` for missing): one-hot over the sorted categories seen in the
  training split. Missing encodes to an all-zero row; a category not seen in training is an error at
  predict (``unknown_category``) and an all-zero row for the validation split at fit.

The encoded matrix ``Z (N, F)`` keeps the raw column order; a categorical column with ``K``
categories takes ``K`` consecutive columns. Labels and regression targets: ``engine.labels``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.table import Table, is_missing, is_real, read_table

__all__ = ["CATEGORICAL", "NUMERIC", "Preprocessor"]

NUMERIC = "numeric"
CATEGORICAL = "categorical"
# Above this many rows one-hot encoding is vectorised; below, a dict lookup per value is faster.
_VECTOR_MIN_ROWS = 64
# Up to this many values (a prediction request's few rows) a Python pass checks them faster than
# NumPy can start one: each NumPy call costs microseconds of dispatch on a cold cache.
_PYTHON_MAX_VALUES = 256


def _column_kind(col: np.ndarray, name: str) -> str:
    kind = col.dtype.kind
    if kind in "biuf":
        return NUMERIC
    if kind in "US":
        return CATEGORICAL
    if kind != "O":
        raise InputError(
            f"Column {name!r} has unsupported dtype {col.dtype}; use numbers or strings.",
            "unsupported_type",
            column=name,
        )
    # Fast path: the set of python types is found at C speed; only odd columns take the row loop.
    types = set(map(type, col.tolist()))
    if types <= {str, type(None)}:
        return CATEGORICAL
    if types <= {int, float, bool, type(None)}:
        return NUMERIC
    first_kind = None
    for row, value in enumerate(col):
        if is_missing(value):
            continue
        if isinstance(value, str):
            value_kind = CATEGORICAL
        elif is_real(value):
            value_kind = NUMERIC
        else:
            raise InputError(
                f"Column {name!r}, row {row}: unsupported value {value!r}; use numbers or strings.",
                "unsupported_type",
                column=name,
                row=row,
            )
        if first_kind is None:
            first_kind = value_kind
        elif value_kind != first_kind:
            raise InputError(
                f"Column {name!r} mixes numbers and strings (row {row} is {value!r}).",
                "mixed_types",
                column=name,
                row=row,
            )
    return first_kind or NUMERIC


def _present_as_str(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, values)``: indices of the non-missing entries of a categorical column and those
    entries as a unicode array (non-str values through ``str``)."""
    if col.dtype.kind != "O":
        return np.arange(len(col)), col.astype(str)
    # np.equal(col, None) / col != col compare element-wise in C: None and NaN are missing.
    missing = np.equal(col, np.array(None, dtype=object)) | (col != col)
    rows = np.flatnonzero(~missing)
    return rows, col[rows].astype(str)


def _categories(col: np.ndarray) -> list[str]:
    """Sorted distinct non-missing values of a categorical column."""
    return np.unique(_present_as_str(col)[1]).tolist()


def _numeric_values(col: np.ndarray, name: str, *, check_inf: bool = True) -> np.ndarray:
    """Raw numeric column as float64 (N,), NaN for missing; raises not_numeric / non_finite."""
    if col.dtype.kind in "biuf":
        v = col.astype(np.float64, copy=False)
    else:
        v = np.empty(len(col), dtype=np.float64)
        for row, value in enumerate(col):
            if is_missing(value):
                v[row] = np.nan
            elif is_real(value):
                v[row] = float(value)
            else:
                raise InputError(
                    f"Column {name!r}, row {row}: {value!r} is not a number.",
                    "not_numeric",
                    column=name,
                    row=row,
                )
    if check_inf:
        _check_no_inf(v, name)
    return v


def _check_no_inf(v: np.ndarray, name: str, rows: np.ndarray | None = None) -> None:
    """Raise ``non_finite`` at the first inf of ``v``; ``rows`` maps positions in ``v`` to the
    rows of the input (``v`` is then the training split)."""
    if np.isinf(v).any():
        k = int(np.flatnonzero(np.isinf(v))[0])
        row = k if rows is None else int(rows[k])
        raise InputError(
            f"Column {name!r}, row {row}: {v[k]} is not a finite number.",
            "non_finite",
            column=name,
            row=row,
        )


def _check_matrix_no_inf(R: np.ndarray, names: Sequence[str], rows: np.ndarray | None) -> None:
    """``_check_no_inf`` for ``R (N, D)``: the first column with an inf, its first inf row."""
    bad = np.isinf(R).any(axis=0)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        _check_no_inf(R[:, j], names[j], rows)


# Row chunks of about 1 MiB for the column statistics: temporaries stay in cache.
_CHUNK_BYTES = 1 << 20


def _column_stats(
    R: np.ndarray, names: Sequence[str], rows: np.ndarray | None, *, with_std: bool
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-column ``(mean, std, finite)`` of the non-NaN entries of ``R[rows]`` (N, D), float64.

    The one statistics function, whatever the container: ``R`` is read in chunks of rows, each
    copied to a C-ordered float64 array and reduced along axis 0, so the same values give the
    same bits from any layout or dtype (a float32 matrix, a Fortran-ordered frame, stacked
    columns). ``std`` is the population std ``sqrt(sum((v - mean)^2) / count)`` (zeros unless
    ``with_std``); a column without values has mean 0 and std 0. ``finite`` says whether the
    training rows hold no NaN. Raises ``non_finite`` (column and input row) for an inf.
    """
    n, d = (R.shape[0] if rows is None else len(rows)), R.shape[1]
    step = max(1, _CHUNK_BYTES // (8 * max(d, 1)))

    def block(start: int) -> np.ndarray:
        # The training rows chunk by chunk: R[rows] whole would be a copy of most of R.
        stop = start + step
        return R[start:stop] if rows is None else R[rows[start:stop]]

    total, count = np.zeros(d), np.full(d, float(n))
    finite = True
    chunks = range(0, n, step)
    # quiet: inf - inf or an overflow only sends us to the exact checks
    with np.errstate(invalid="ignore", over="ignore"):
        for start in chunks:
            chunk = block(start)
            if chunk.dtype != np.float64 or not chunk.flags.c_contiguous:
                chunk = np.array(chunk, dtype=np.float64, order="C")
            part = np.add.reduce(chunk, axis=0)
            if not np.isfinite(part).all():
                _check_matrix_no_inf(R if rows is None else R[rows], names, rows)
                finite = False
                chunk = np.array(chunk, dtype=np.float64, order="C")  # ours to write
                nan = np.isnan(chunk)
                chunk[nan] = 0.0
                count -= np.count_nonzero(nan, axis=0)
                part = np.add.reduce(chunk, axis=0)
            total += part
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(count > 0, total / count, 0.0)
    std = np.zeros(d)
    if with_std:
        acc = np.zeros(d)
        for start in chunks:
            dev = np.subtract(block(start), mean, dtype=np.float64, order="C")
            if not finite:
                dev[np.isnan(dev)] = 0.0
            dev *= dev
            acc += np.add.reduce(dev, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            std = np.where(count > 0, np.sqrt(acc / count), 0.0)
    return mean, std, finite


def _all_finite(R: np.ndarray) -> bool:
    """``np.isfinite(R).all()`` without its (N, D) mask: a NaN or inf makes its column's sum
    non-finite (a sum that merely overflows sends the caller to its exact, slower path)."""
    if R.size <= _PYTHON_MAX_VALUES:
        return math.isfinite(sum(R.ravel().tolist()))
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.add.reduce(R, axis=0)).all())


def _rows(col: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return col if rows is None else col[rows]


def _numeric_part(table: Table, num: list[int]) -> np.ndarray:
    """The numeric columns ``num`` of ``table`` as ``R (N, len(num))``: the input matrix itself
    when every column is numeric, else a C-ordered float64 stack (NaN for missing; checked
    conversion of object columns, ``not_numeric`` with column and row)."""
    all_numeric = len(num) == len(table.names)
    if table.matrix is not None and all_numeric:
        return table.matrix
    R = np.empty((table.n_rows, len(num)), dtype=np.float64)
    for k, j in enumerate(num):
        col = table.column(j)
        # Float columns are copied as they are; others go through the checked conversion.
        R[:, k] = (
            col if col.dtype.kind == "f" else _numeric_values(col, table.names[j], check_inf=False)
        )
    return R


# --- the fitted transform -------------------------------------------------------------------------


class Preprocessor:
    """Per-column encoding of raw features into a dense matrix ``Z (N, F)``.

    Attributes
    ----------
    feature_names : list of str
        Raw input columns, in order (length ``D``).
    kinds : list of str
        ``"numeric"`` or ``"categorical"`` per raw column.
    categories : list of list of str
        Sorted training categories per raw column (``[]`` for numeric columns).
    center, scale, fill : ndarray (D,)
        Numeric encoding ``z = (v - center) / scale``, missing ``v`` replaced by ``fill`` (the
        training mean). Unused (0, 1, 0) for categorical columns.
    standardize : bool
    groups : list of (int, int)
        ``[start, stop)`` of each raw column's encoded columns in ``Z``.
    encoded_names : list of str
        Name of each encoded column: the raw name, or ``"name=category"`` for one-hot columns.
    """

    def __init__(
        self,
        feature_names: list[str],
        kinds: list[str],
        categories: list[list[str]],
        center: np.ndarray,
        scale: np.ndarray,
        fill: np.ndarray,
        *,
        standardize: bool,
    ) -> None:
        self.feature_names = list(feature_names)
        self.kinds = list(kinds)
        self.categories = [list(c) for c in categories]
        self.center = np.asarray(center, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.fill = np.asarray(fill, dtype=np.float64)
        self.standardize = bool(standardize)
        self._compile()

    def _compile(self) -> None:
        # Everything transform needs per call is precomputed here: predicting one row stays cheap.
        self.groups: list[tuple[int, int]] = []
        self.encoded_names: list[str] = []
        start = 0
        for name, kind, cats in zip(self.feature_names, self.kinds, self.categories, strict=True):
            width = 1 if kind == NUMERIC else len(cats)
            self.groups.append((start, start + width))
            if kind == NUMERIC:
                self.encoded_names.append(name)
            else:
                self.encoded_names.extend(f"{name}={cat}" for cat in cats)
            start += width
        self.n_features_out = start
        num = [j for j, kind in enumerate(self.kinds) if kind == NUMERIC]
        self._num_idx = np.array(num, dtype=np.intp)
        self._num_pos = np.array([self.groups[j][0] for j in num], dtype=np.intp)
        self._num_center = self.center[self._num_idx]
        self._num_scale = self.scale[self._num_idx]
        self._num_fill = self.fill[self._num_idx]
        self._cat_idx = [j for j, kind in enumerate(self.kinds) if kind == CATEGORICAL]
        self._cat_lookup = {
            j: {cat: self.groups[j][0] + k for k, cat in enumerate(self.categories[j])}
            for j in self._cat_idx
        }
        # Sorted unicode arrays for np.searchsorted in the vectorised one-hot of large inputs.
        self._cat_sorted = {j: np.array(self.categories[j], dtype=str) for j in self._cat_idx}
        self._all_numeric = not self._cat_idx
        self._identity = bool(np.all(self.center == 0.0) and np.all(self.scale == 1.0))

    @property
    def n_features_in(self) -> int:
        return len(self.feature_names)

    # -- fit --

    # -- fit --

    @classmethod
    def fit(
        cls, table: Table, *, rows: np.ndarray | None = None, standardize: bool = True
    ) -> Preprocessor:
        """Fit the encoding on the rows ``rows`` of ``table`` (the training split).

        Kinds are decided on all rows, statistics (:func:`_column_stats`) and categories only
        on ``rows`` (default: all rows).

        Raises
        ------
        InputError
            ``mixed_types``, ``unsupported_type``, ``not_numeric``, ``non_finite`` (with column
            and row).
        """
        return cls._fit(table, rows, standardize)[0]

    @classmethod
    def fit_transform(
        cls,
        table: Table,
        *,
        rows: np.ndarray | None = None,
        standardize: bool = True,
        dtype: Any = np.float64,
    ) -> tuple[Preprocessor, np.ndarray]:
        """:meth:`fit` on ``rows``, then the encoding of every row of ``table``: ``(pre, Z)``.

        Categories seen only outside ``rows`` encode as all zeros (like a missing value): the
        model never saw them. ``Z`` may be ``table.matrix`` itself when the encoding is the
        identity (no standardization, nothing missing, the matrix already in ``dtype``): read
        it, never write to it.
        """
        pre, R, finite = cls._fit(table, rows, standardize)
        Z = pre._encode(
            table, R, dtype, unknown="ignore", copy=False, finite=finite and rows is None
        )
        return pre, Z

    @classmethod
    def _fit(
        cls, table: Table, rows: np.ndarray | None, standardize: bool
    ) -> tuple[Preprocessor, np.ndarray, bool]:
        names = table.names
        d = len(names)
        if table.matrix is not None:
            kinds = [NUMERIC] * d
        else:
            kinds = [_column_kind(table.column(j), name) for j, name in enumerate(names)]
        categories = [
            [] if kind == NUMERIC else _categories(_rows(table.column(j), rows))
            for j, kind in enumerate(kinds)
        ]
        num = [j for j, kind in enumerate(kinds) if kind == NUMERIC]
        R = _numeric_part(table, num)
        mean, std, finite = _column_stats(R, [names[j] for j in num], rows, with_std=standardize)
        center, scale, fill = np.zeros(d), np.ones(d), np.zeros(d)
        fill[num] = mean
        if standardize:
            center[num] = mean
            # A constant column carries no signal: scale 1 keeps it at 0, no division by 0.
            scale[num] = np.where((std > 0) & np.isfinite(std), std, 1.0)
        pre = cls(names, kinds, categories, center, scale, fill, standardize=standardize)
        return pre, R, finite

    # -- transform --

    def transform(self, X: Any, *, dtype: Any = np.float64, unknown: str = "error") -> np.ndarray:
        """Encode raw ``X`` into ``Z (N, F)`` (read by :func:`read_table`).

        Parameters
        ----------
        X : mapping of str to array-like, DataFrame-like, or array-like (N, D)
            A mapping must contain every feature (extra keys are ignored); a 2-D array must have
            the ``D`` columns in ``feature_names`` order.
        dtype : numpy dtype
            dtype of ``Z``.
        unknown : {"error", "ignore"}
            What to do with a category not seen in training: raise ``unknown_category``
            (predict), or encode it as all zeros like a missing value.

        Raises
        ------
        InputError
            ``missing_column``, ``bad_shape``, ``length_mismatch``, ``not_numeric``,
            ``non_finite``, ``unknown_category``.
        """
        table = read_table(X, self.feature_names)
        return self._encode(table, None, dtype, unknown=unknown, copy=True, finite=False)

    def _encode(
        self,
        table: Table,
        R: np.ndarray | None,
        dtype: Any,
        *,
        unknown: str,
        copy: bool,
        finite: bool,
    ) -> np.ndarray:
        """The one encoder: ``Z_num = (R - center) / scale`` in float64 (missing values first
        replaced by ``fill``; ``R`` the numeric columns, from :func:`_numeric_part` unless
        given), cast to ``dtype``, then the one-hot columns. ``finite=True`` when ``R`` is known
        to hold no NaN / inf; ``copy=False`` lets ``Z`` be ``R`` for the identity encoding."""
        num = self._num_idx
        if R is None:
            R = _numeric_part(table, num.tolist())
        # A stack made here is ours to overwrite; the caller's matrix never is.
        owned = R is not table.matrix or table.owned
        if not finite and not _all_finite(R):
            _check_matrix_no_inf(R, [self.feature_names[j] for j in num], None)
            R = np.where(np.isnan(R), self._num_fill, R)
            owned = True
        if self._identity:
            # (v - 0) / 1 == v exactly: skip two passes over the matrix.
            Z_num = R
        else:
            # In place on our own stack: one float64 matrix fewer at the peak, same values.
            Z_num = np.subtract(R, self._num_center, out=R if owned else None)
            Z_num /= self._num_scale
            owned = True
        if self._all_numeric:
            return Z_num.astype(dtype, copy=copy and not owned)
        Z = np.zeros((table.n_rows, self.n_features_out), dtype=dtype)
        Z[:, self._num_pos] = Z_num  # cast to dtype on the way, as astype would
        for j in self._cat_idx:
            self._one_hot(Z, table.column(j), j, unknown)
        return Z

    def _one_hot(self, Z: np.ndarray, col: np.ndarray, j: int, unknown: str) -> None:
        if len(col) > _VECTOR_MIN_ROWS:
            self._one_hot_vectorised(Z, col, j, unknown)
            return
        # A dict lookup per value: cheapest for the few rows of a predict request.
        lookup = self._cat_lookup[j]
        for row, value in enumerate(col.tolist()):
            if is_missing(value):
                continue
            pos = lookup.get(value if isinstance(value, str) else str(value))
            if pos is not None:
                Z[row, pos] = 1.0
            elif unknown == "error":
                raise self._unknown_category(j, row, value)

    def _one_hot_vectorised(self, Z: np.ndarray, col: np.ndarray, j: int, unknown: str) -> None:
        rows, values = _present_as_str(col)
        cats = self._cat_sorted[j]
        if len(cats) == 0:
            pos = np.zeros(len(values), dtype=np.intp)
            known = np.zeros(len(values), dtype=bool)
        else:
            pos = np.minimum(np.searchsorted(cats, values), len(cats) - 1)
            known = cats[pos] == values
        if unknown == "error" and not known.all():
            row = int(rows[np.flatnonzero(~known)[0]])
            raise self._unknown_category(j, row, col[row])
        Z[rows[known], self.groups[j][0] + pos[known]] = 1.0

    def _unknown_category(self, j: int, row: int, value: Any) -> InputError:
        name = self.feature_names[j]
        known = self.categories[j]
        return InputError(
            f"Column {name!r}, row {row}: category {value!r} was not seen in training "
            f"(known: {', '.join(map(repr, known[:20]))}{', ...' if len(known) > 20 else ''}).",
            "unknown_category",
            column=name,
            row=row,
        )

    # -- serialization --

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Return ``(meta, arrays)``: a JSON-able dict and float64 arrays ``center``, ``scale``,
        ``fill``."""
        meta = {
            "feature_names": self.feature_names,
            "kinds": self.kinds,
            "categories": self.categories,
            "standardize": self.standardize,
        }
        return meta, {"center": self.center, "scale": self.scale, "fill": self.fill}

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Preprocessor:
        """Inverse of :meth:`to_state`."""
        return cls(
            meta["feature_names"],
            meta["kinds"],
            meta["categories"],
            arrays["center"],
            arrays["scale"],
            arrays["fill"],
            standardize=meta["standardize"],
        )
