"""The inputs of a regularization path: the spec at one value of its parameter, the data read once.

A path varies one spec field ``param = "<section>.<key>"`` (one of :data:`PARAMS`): the model of
grid point ``v`` is the one ``engine.fit`` trains from ``spec`` with ``spec[section][key] = v``
(:func:`with_value`). The spec is normalized without its ``search`` section (:func:`base_spec`:
the path's own settings, not ``engine.fit``'s).

Which solver (:func:`is_exact`): a linear model (empty ``hidden_layers``, no ``layers``) with
``loss == "mse"``, no dropout and a penalty ``param`` (``regularization.*``) runs the exact Gram
path (``engine.gram``, ``engine.lasso_path``); every other spec runs an ``engine.fit`` per value
(``engine.fit_path``). The final model of an exact path is trained by ``fista``, the optimizer of
``engine.fit`` that converges to the optimum the path computed (:func:`final_spec`).

The data (:class:`PathData`) is the input, a matrix ``X (N, D)`` or ``D`` columns, read once by
the preprocessor's one adapter, with its target and the rows ``engine.fit`` trains on
(``train_rows``: all ``N`` rows minus the spec's validation split) and validates on
(``val_rows``). :class:`Clock` reports each point to the callbacks and stops the path on a cancel
or at its deadline.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import InputError, SpecError, TrainingTimeout
from engine.labels import encode_labels, regression_target
from engine.model import split
from engine.preprocess import Preprocessor
from engine.spec_parse import normalize_spec
from engine.spec_search import SEARCH_PARAMS
from engine.table import Table, read_table

__all__ = [
    "PARAMS",
    "Callback",
    "Clock",
    "PathCancelled",
    "PathData",
    "base_spec",
    "check_param",
    "final_spec",
    "is_exact",
    "is_linear",
    "prepare_data",
    "with_value",
]

PARAMS: tuple[str, ...] = SEARCH_PARAMS

Callback = Callable[[dict[str, Any]], bool | None]


class PathCancelled(RuntimeError):
    """A callback returned True or ``cancel()`` did: the path stopped between two points."""


# --- spec -----------------------------------------------------------------------------------------


def base_spec(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The normalized spec of every point, its ``search`` section dropped."""
    raw = dict(spec or {})
    raw.pop("search", None)  # the path's own settings, not engine.fit's
    return normalize_spec(raw)


def check_param(param: str) -> tuple[str, str]:
    """``(section, key)`` of ``param``, or ``SpecError`` ``unknown_param``."""
    if param not in PARAMS:
        raise SpecError(
            ("search", "param"),
            f"search.param must be one of {', '.join(PARAMS)}; got {param!r}.",
            "unknown_param",
        )
    section, key = param.split(".")
    return section, key


def with_value(spec: dict, param: str, value: float) -> dict:
    """A copy of ``spec`` with ``spec[section][key] = value``."""
    section, key = check_param(param)
    out = copy.deepcopy(spec)
    out[section][key] = float(value)
    return out


def is_linear(spec: dict) -> bool:
    """Whether the model is linear: no hidden layers."""
    model = spec["model"]
    return not model.get("hidden_layers") and not model.get("layers")


def is_exact(spec: dict, param: str) -> bool:
    """Whether the exact Gram path applies: linear mse, no dropout, a penalty parameter."""
    return (
        is_linear(spec)
        and spec["loss"] == "mse"
        and param.startswith("regularization.")
        and not spec["dropout"]["input"]
        and not spec["dropout"]["hidden"]
    )


def final_spec(spec: Mapping[str, Any] | None, param: str, value: float) -> dict[str, Any]:
    """The spec ``engine.fit`` trains the final model with: ``param = value``.

    For the exact linear mse path the optimizer becomes ``fista`` (if it is not already): the
    path computed the convex optimum, and FISTA is the optimizer of ``engine.fit`` that converges
    to it.
    """
    out = with_value(base_spec(spec), param, value)
    if is_exact(out, param) and out["optimizer"]["name"] != "fista":
        out["optimizer"] = {"name": "fista"}
        out = normalize_spec(out)
    return out


# --- data -----------------------------------------------------------------------------------------


@dataclass
class PathData:
    """The input of a path, read once: the table, the target and engine.fit's row split."""

    table: Table  # the raw input, read once by the preprocessor's one adapter
    n: int
    task: str
    y_reg: np.ndarray | None
    classes: list[Any] | None
    y_idx: np.ndarray | None
    train_rows: np.ndarray  # engine.fit's training split
    val_rows: np.ndarray  # engine.fit's validation split

    @property
    def names(self) -> list[str]:
        return self.table.names

    @property
    def target(self) -> np.ndarray:
        """The regression target (N,)."""
        if self.y_reg is None:
            raise TypeError("a classification target has no regression values")
        return self.y_reg

    @property
    def labels(self) -> tuple[list[Any], np.ndarray]:
        """``(classes, y_idx (N,))`` of a classification target."""
        if self.classes is None or self.y_idx is None:
            raise TypeError("a regression target has no classes")
        return self.classes, self.y_idx

    @property
    def R(self) -> np.ndarray | None:
        """All-numeric input as one matrix (N, D), else None."""
        return self.table.matrix

    def take_x(self, rows: np.ndarray) -> Any:
        if self.table.matrix is not None:
            return self.table.matrix[rows]
        columns = self.table.columns or []
        return {name: col[rows] for name, col in zip(self.names, columns, strict=True)}

    def take_y(self, rows: np.ndarray) -> np.ndarray:
        if self.task == "regression":
            assert self.y_reg is not None
            return self.y_reg[rows]
        assert self.y_idx is not None
        return np.asarray(self.classes, dtype=object)[self.y_idx[rows]]

    def encode(self, rows: np.ndarray, standardize: bool) -> tuple[Preprocessor, np.ndarray]:
        """Preprocessing fitted on ``rows``, applied to every row: ``(pre, Z (N, F) float64)``."""
        return Preprocessor.fit_transform(
            self.table, rows=rows, standardize=standardize, dtype=np.float64
        )


def prepare_data(spec: dict, X: Any, y: Any, feature_names: Sequence[str] | None) -> PathData:
    """Read ``X``, ``y`` once and split the rows as ``engine.fit`` does; ``InputError`` if bad."""
    table = read_table(X, feature_names)
    n = table.n_rows
    task = spec["task"]
    y_reg = classes = y_idx = None
    if task == "classification":
        classes, y_idx = encode_labels(y)
        n_y = len(y_idx)
    else:
        y_reg = regression_target(y)
        n_y = len(y_reg)
    if n_y != n:
        raise InputError(f"X has {n} rows but y has {n_y}.", "length_mismatch")
    if n < 2:
        raise InputError(f"A path needs at least 2 rows, got {n}.", "too_few_rows")
    # the table read above, not X again (a mapping of columns would be stacked a second time)
    if table.matrix is not None:
        train_rows, val_rows = split(spec, table.matrix, y, feature_names=table.names)
    else:
        train_rows, val_rows = split(spec, X, y, feature_names=feature_names)
    return PathData(table, n, task, y_reg, classes, y_idx, train_rows, val_rows)


# --- callbacks, cancel and the deadline -----------------------------------------------------------


class Clock:
    """Callbacks, cancel and the deadline of a path, checked between points."""

    def __init__(
        self,
        callbacks: Sequence[Callback],
        cancel: Callable[[], bool] | None,
        max_seconds: float | None,
    ) -> None:
        self.callbacks = list(callbacks)
        self.cancel = cancel
        self.deadline = None if max_seconds is None else time.monotonic() + max_seconds

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        if self.cancel is not None and self.cancel():
            raise PathCancelled("the path was cancelled")
        left = self.remaining()
        if left is not None and left <= 0:
            raise TrainingTimeout("the path reached its time limit", 0)

    def report(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            if cb(record):
                raise PathCancelled("the path was cancelled by a callback")
