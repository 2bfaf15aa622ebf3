"""Targets: labels of a classification encoded as indices into ``classes``, and regression targets.

``classes`` are the sorted unique original labels as plain Python values (``int``, ``float``,
``str``, ``bool``), so they are JSON-able and come back unchanged from ``predict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.table import is_missing, is_real

__all__ = ["classes_array", "encode_labels", "regression_target"]


def _target(y: Any) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputError(f"y must be one-dimensional, got shape {y.shape}.", "bad_shape")
    if y.dtype.kind not in "biufOUS":
        raise InputError(f"y has unsupported dtype {y.dtype}.", "unsupported_type")
    return y


def _missing_target(row: int) -> InputError:
    return InputError(f"The target is missing in row {row}.", "missing_target", row=row)


def _python_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def encode_labels(y: Any) -> tuple[list[Any], np.ndarray]:
    """Encode classification labels.

    Parameters
    ----------
    y : array-like (N,)
        Labels: numbers, bools or strings; NaN / ``None`` are errors.

    Returns
    -------
    classes : list
        Sorted unique labels as python values (``int``, ``float``, ``str``, ``bool``), length ``C``.
    idx : ndarray of int64 (N,)
        ``classes[idx[i]] == y[i]``.

    Raises
    ------
    InputError
        ``missing_target``, ``non_finite``, ``mixed_types``, ``bad_shape``.
    """
    y = _target(y)
    if y.dtype.kind == "O":
        y = _typed_labels(y)
    if y.dtype.kind == "f":
        if np.isnan(y).any():
            raise _missing_target(int(np.flatnonzero(np.isnan(y))[0]))
        if np.isinf(y).any():
            row = int(np.flatnonzero(np.isinf(y))[0])
            raise InputError(f"The target in row {row} is {y[row]}.", "non_finite", row=row)
    uniq, idx = np.unique(y, return_inverse=True)
    classes = [_python_value(value) for value in uniq.tolist()]
    return classes, idx.reshape(-1).astype(np.int64)


def _typed_labels(y: np.ndarray) -> np.ndarray:
    """An object label array as a typed array when it is homogeneous (so np.unique sorts in C),
    else validated row by row and returned as is."""
    values = y.tolist()
    types = set(map(type, values))
    typed = {str: str, float: np.float64, bool: np.bool_, int: np.int64}
    if len(types) == 1 and next(iter(types)) in typed:
        try:
            return np.array(values, dtype=typed[next(iter(types))])
        except OverflowError:  # python ints beyond int64 stay objects
            pass
    kinds = set()
    for row, value in enumerate(y):
        if is_missing(value):
            raise _missing_target(row)
        if isinstance(value, bool | np.bool_):
            kinds.add("bool")
        elif isinstance(value, str):
            kinds.add("str")
        elif is_real(value):
            if not np.isfinite(value):
                raise InputError(f"The target in row {row} is {value}.", "non_finite", row=row)
            kinds.add("number")
        else:
            raise InputError(
                f"The target in row {row} is {value!r}; labels must be numbers or strings.",
                "unsupported_type",
                row=row,
            )
        if len(kinds) > 1:
            raise InputError(
                f"The target mixes {' and '.join(sorted(kinds))} labels (row {row}).",
                "mixed_types",
                row=row,
            )
    return y


def classes_array(classes: Sequence[Any]) -> np.ndarray:
    """Array for decoding predictions: ``classes_array(classes)[idx]``.

    Strings stay an object array of python ``str`` (the engine's convention for string columns);
    numbers and bools use their natural numpy dtype, whose ``tolist()`` gives back python ``int`` /
    ``float`` / ``bool``.
    """
    if any(isinstance(c, str) for c in classes):
        out = np.empty(len(classes), dtype=object)
        out[:] = list(classes)
        return out
    return np.asarray(list(classes))


def regression_target(y: Any) -> np.ndarray:
    """Regression target as float64 (N,), in the user's units.

    Raises
    ------
    InputError
        ``missing_target`` (NaN / ``None``), ``non_finite`` (inf), ``not_numeric``, ``bad_shape``.
    """
    y = _target(y)
    if y.dtype.kind in "biuf":
        v = y.astype(np.float64)
    else:
        v = np.empty(len(y), dtype=np.float64)
        for row, value in enumerate(y):
            if is_missing(value):
                raise _missing_target(row)
            if isinstance(value, str) or not is_real(value):
                raise InputError(
                    f"The target in row {row} is {value!r}, not a number; use a classification "
                    "loss for labels.",
                    "not_numeric",
                    row=row,
                )
            v[row] = float(value)
    if np.isnan(v).any():
        raise _missing_target(int(np.flatnonzero(np.isnan(v))[0]))
    if np.isinf(v).any():
        row = int(np.flatnonzero(np.isinf(v))[0])
        raise InputError(f"The target in row {row} is {v[row]}.", "non_finite", row=row)
    return v
