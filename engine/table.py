"""Raw input read once: the one adapter between the containers a user passes and the encoder.

``X`` is a mapping ``{column name: 1-D array}`` (scalars for a single row), a DataFrame-like table
(an object with ``columns`` and ``__getitem__``, read column by column) or a 2-D array ``(N, D)``
whose columns are named by ``feature_names``. :func:`read_table` turns each into a :class:`Table`:
an all-numeric float64 matrix when it can, else 1-D columns. ``engine.preprocess`` fits and
encodes Tables only, so the same values give the same encoding whatever the container.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import InputError

__all__ = ["Table", "is_missing", "is_real", "read_table"]


@dataclass
class Table:
    """Raw input read once: column names plus either one all-numeric matrix or 1-D columns.

    Attributes
    ----------
    names : list of str
        Raw column names, length ``D``.
    matrix : ndarray (N, D) float32 / float64 or None
        The input itself (never written to) when it is plainly numeric: a 2-D bool / int /
        float array, a mapping of 1-D float arrays (stacked), or one row of python numbers.
    columns : list of ndarray (N,) or None
        Otherwise the raw columns, in ``names`` order.
    owned : bool
        ``matrix`` was made here (columns stacked, a row of numbers), not the caller's array:
        the encoder may overwrite it.
    """

    names: list[str]
    matrix: np.ndarray | None = None
    columns: list[np.ndarray] | None = None
    owned: bool = False

    @property
    def n_rows(self) -> int:
        if self.matrix is not None:
            return int(self.matrix.shape[0])
        assert self.columns is not None
        return len(self.columns[0])

    def column(self, j: int) -> np.ndarray:
        """Raw column ``j`` (N,)."""
        if self.matrix is not None:
            return self.matrix[:, j]
        assert self.columns is not None
        return self.columns[j]


def _as_mapping(X: Any) -> Mapping[str, Any] | None:
    """``X`` as a mapping of columns: a Mapping itself, or a DataFrame-like table (an object with
    ``columns`` and ``__getitem__``, e.g. pandas / polars) read column by column."""
    if isinstance(X, Mapping):
        return X
    if isinstance(X, np.ndarray) or not hasattr(X, "columns") or not hasattr(X, "__getitem__"):
        return None
    return {str(name): np.asarray(X[name]) for name in list(X.columns)}


def read_table(X: Any, feature_names: Sequence[str] | None = None) -> Table:
    """Read raw ``X`` into a :class:`Table`: the one adapter between containers and the encoder.

    Parameters
    ----------
    X : mapping of str to array-like, DataFrame-like, or array-like (N, D)
        The raw table; a mapping may hold scalars for a single row.
    feature_names : sequence of str, optional
        For a mapping: the columns to use, in order (default: all keys, in mapping order; extra
        keys are ignored). For a 2-D array: the names of its ``D`` columns (default ``"x0", "x1",
        ..."``).

    Raises
    ------
    InputError
        ``missing_column``, ``bad_shape``, ``length_mismatch``, ``empty``, ``duplicate_column``.
    """
    mapping = _as_mapping(X)
    if mapping is not None:
        names = [str(name) for name in mapping] if feature_names is None else list(feature_names)
        _check_names(names)
        for name in names:
            if name not in mapping:
                raise InputError(f"Column {name!r} is missing.", "missing_column", column=name)
        cols = _float_columns(mapping, names)
        if cols is not None:
            return Table(names, matrix=_stack(cols), owned=True)
        values = [mapping[name] for name in names]
        # Exact types: bool (an int subclass), numpy scalars, str and None take the column path.
        if all(type(v) is float or type(v) is int for v in values):
            try:
                return Table(names, matrix=np.array([values], dtype=np.float64), owned=True)
            except OverflowError:  # an int beyond float64: the column path reports it
                pass
        columns = [_column(value, name) for name, value in zip(names, values, strict=True)]
        n = len(columns[0])
        for name, col in zip(names, columns, strict=True):
            if len(col) != n:
                raise InputError(
                    f"Column {name!r} has {len(col)} rows but column {names[0]!r} has {n}.",
                    "length_mismatch",
                    column=name,
                )
        return Table(names, columns=columns)
    arr = np.asarray(X)
    names = _array_names(arr, feature_names)
    _check_names(names)
    if arr.dtype.kind in "biuf":
        return Table(names, matrix=_as_float(arr))
    return Table(names, columns=[arr[:, j] for j in range(arr.shape[1])])


def _column(value: Any, name: str) -> np.ndarray:
    col = np.asarray(value)
    if col.ndim == 0:
        # A single row given as scalars: {"age": 31, "city": "Oslo"}.
        col = col.reshape(1)
    if col.ndim != 1:
        raise InputError(
            f"Column {name!r} must be one-dimensional, got shape {col.shape}.",
            "bad_shape",
            column=name,
        )
    return col


def _array_names(arr: np.ndarray, feature_names: Sequence[str] | None) -> list[str]:
    """Column names of a 2-D array ``(N, D)``; raises ``bad_shape``."""
    if arr.ndim != 2:
        raise InputError(
            "X must be a 2-D array (rows, features) or a mapping of columns, "
            f"got shape {arr.shape}.",
            "bad_shape",
        )
    if feature_names is None:
        return [f"x{j}" for j in range(arr.shape[1])]
    names = [str(name) for name in feature_names]
    if len(names) != arr.shape[1]:
        raise InputError(
            f"feature_names has {len(names)} names but X has {arr.shape[1]} columns.",
            "bad_shape",
        )
    return names


def _check_names(names: list[str]) -> None:
    if len(set(names)) != len(names):
        dup = next(name for name in names if names.count(name) > 1)
        raise InputError(f"Column {dup!r} appears twice.", "duplicate_column", column=dup)
    if not names:
        raise InputError("X has no feature columns.", "empty")


def _float_columns(X: Mapping, names: Sequence[str]) -> list[np.ndarray] | None:
    """The mapping's columns ``names`` when every one is a 1-D float ndarray of one length."""
    cols = []
    for name in names:
        col = X.get(name)
        if not isinstance(col, np.ndarray) or col.ndim != 1 or col.dtype.kind != "f":
            return None
        cols.append(col)
    if any(len(col) != len(cols[0]) for col in cols):
        return None
    return cols


def _stack(cols: list[np.ndarray]) -> np.ndarray:
    """Columns ``(N,)`` as one C-ordered float64 matrix ``(N, D)``."""
    R = np.empty((len(cols[0]), len(cols)), dtype=np.float64)
    for j, col in enumerate(cols):
        R[:, j] = col
    return R


_FLOATS = (np.float32, np.float64)


def _as_float(X: np.ndarray) -> np.ndarray:
    """``X`` itself when float32 / float64 (the ufuncs promote it exactly where float64 math is
    needed), else ``X`` as float64."""
    return X if X.dtype.type in _FLOATS else X.astype(np.float64)


def is_missing(value: Any) -> bool:
    """A raw value that stands for "missing": ``None`` or a float NaN."""
    return value is None or (isinstance(value, float | np.floating) and value != value)


def is_real(value: Any) -> bool:
    """A raw value that is a real number (bool, int, float and NumPy's numbers included)."""
    return isinstance(value, numbers.Real)
