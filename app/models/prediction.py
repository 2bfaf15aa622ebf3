"""Prediction: an LRU cache of loaded models, and the checks that turn JSON rows into engine input.

A cache hit needs no database: each entry remembers its owner, so the owner check is a string
comparison. Every bad value is reported with its place, ``["body", "rows", row, feature]`` (or
``["body", "instances", row, index]``), before the engine sees anything; the engine's own
``InputError`` (an unseen category, say) is mapped to the same shape.
"""

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

import engine
from app.core.config import settings
from app.core.db import get_sessionmaker
from app.core.errors import InvalidInput, NotFound, PayloadTooLarge
from app.core.ownership import owned
from app.models.orm import Model
from engine.preprocess import classes_array

# More than this many bad values in one request: the rest are summarised, not listed.
MAX_REPORTED = 50


@dataclass(frozen=True)
class Loaded:
    """A cached, ready-to-predict model."""

    id: str
    owner_id: str | None
    model: engine.Model
    names: tuple[str, ...]
    numeric: tuple[bool, ...]  # per feature: numeric (True) or categorical (False)
    name_set: frozenset[str]
    labels: np.ndarray | None  # classes as an array, for decoding argmax indices

    @property
    def all_numeric(self) -> bool:
        return all(self.numeric)


class ModelCache:
    """A thread-safe LRU of loaded models, keyed by model id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Loaded] = OrderedDict()

    def get(self, model_id: str) -> Loaded | None:
        with self._lock:
            item = self._items.get(model_id)
            if item is not None:
                self._items.move_to_end(model_id)
            return item

    def put(self, item: Loaded) -> None:
        capacity = settings.model_cache_size
        if capacity <= 0:
            return
        with self._lock:
            self._items[item.id] = item
            self._items.move_to_end(item.id)
            while len(self._items) > capacity:
                self._items.popitem(last=False)

    def pop(self, model_id: str) -> None:
        with self._lock:
            self._items.pop(model_id, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


cache = ModelCache()


def evict(model_id: str) -> None:
    """Forget a cached model (it was deleted)."""
    cache.pop(model_id)


def _not_found(model_id: str) -> NotFound:
    return NotFound(f"Model {model_id!r} does not exist.", loc=["path", "model_id"])


def cached(model_id: str, owner_id: str | None) -> Loaded | None:
    """The cached model if present and the caller's; NotFound if present and someone else's."""
    item = cache.get(model_id)
    if item is not None and item.owner_id != owner_id:
        raise _not_found(model_id)
    return item


def load(model_id: str, owner_id: str | None) -> Loaded:
    """Cache hit, or read the row, ``engine.load`` it and cache it (blocking: call off the loop)."""
    item = cached(model_id, owner_id)
    if item is not None:
        return item
    if len(model_id) > 64:  # ids are 32 hex digits; do not send absurd keys to the database
        raise _not_found(model_id)
    with get_sessionmaker(settings.database_url)() as session:
        stmt = owned(select(Model.weights).where(Model.id == model_id), Model.owner_id, owner_id)
        weights = session.scalar(stmt)
    if weights is None:
        raise _not_found(model_id)
    model = engine.load(weights)
    kinds = getattr(model.preprocessor, "kinds", None) or ["numeric"] * len(model.feature_names)
    names = tuple(model.feature_names)
    item = Loaded(
        id=model_id,
        owner_id=owner_id,
        model=model,
        names=names,
        numeric=tuple(kind == "numeric" for kind in kinds),
        name_set=frozenset(names),
        labels=None if model.classes is None else classes_array(model.classes),
    )
    cache.put(item)
    return item


# --- request checks -------------------------------------------------------------------------------


class PredictInvalid(InvalidInput):
    """Bad prediction input; lists every bad value found (up to MAX_REPORTED)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["msg"], loc=errors[0]["loc"], code=errors[0]["type"])
        self.errors = errors

    def detail(self) -> list[dict[str, Any]]:
        return self.errors


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_value(value: Any, numeric: bool, where: str) -> tuple[str, str] | None:
    """None if ``value`` fits the feature, else (code, sentence)."""
    if value is None:
        return "missing_value", f"{where} is null; every feature needs a value to predict."
    if numeric:
        kind = type(value)
        if kind is float:
            if math.isfinite(value):
                return None
            return "non_finite", f"{where} is {value}; it must be a finite number."
        if kind is int:  # JSON integers are unbounded; float() of a huge one overflows
            try:
                float(value)
            except OverflowError:
                return "non_finite", f"{where} is too large for a 64-bit float."
            return None
        # true/false included: JSON booleans are not numbers, even though Python's bool is an int.
        return "not_numeric", f"{where} must be a number, got {_describe(value)}."
    if isinstance(value, str):
        return None
    return "wrong_type", f"{where} must be a string (a training category), got {_describe(value)}."


def _batch_size_check(key: str, n: int) -> None:
    if n == 0:
        raise InvalidInput(
            f"{key} is empty; send at least one row.", loc=["body", key], code="empty_batch"
        )
    if n > settings.max_predict_rows:
        raise PayloadTooLarge(
            f"{key} has {n} rows; this service predicts at most {settings.max_predict_rows} "
            "rows per request.",
            loc=["body", key],
            code="too_many_rows",
        )


_REAL = frozenset({float, int})


# Up to this many values, one Python sum tests them all for NaN / inf faster than NumPy can start.
_SUM_TEST_MAX = 4096


def _flat_matrix(flat: list[Any], n: int, width: int) -> np.ndarray | None:
    """``flat`` (N * D values, row-major) as a (N, D) float64 matrix, or None when some value
    needs a closer look (the slow path names it)."""
    # Exact types: bool (an int subclass), str and None go to the slow path, which names them.
    if not set(map(type, flat)) <= _REAL:
        return None
    try:
        # NaN or inf anywhere makes the sum NaN or inf. A finite sum that overflows only sends
        # the batch to the slow path, which accepts it.
        if len(flat) <= _SUM_TEST_MAX and not math.isfinite(sum(flat)):
            return None
        matrix = np.array(flat, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        return None
    if len(flat) > _SUM_TEST_MAX and not np.isfinite(matrix).all():
        return None
    return matrix.reshape(n, width)


def _fast_matrix(item: Loaded, values: list[list[Any]]) -> np.ndarray | None:
    """All-numeric input as a (N, D) float64 matrix, or None when some value needs a closer look."""
    width = len(item.names)
    if any(len(v) != width for v in values):
        return None
    flat = values[0] if len(values) == 1 else [x for v in values for x in v]
    return _flat_matrix(flat, len(values), width)


def _matrix_from_rows(item: Loaded, rows: list[dict[str, Any]]) -> np.ndarray | None:
    names = item.names
    try:
        flat = [row[name] for row in rows for name in names]
    except KeyError:
        return None
    if any(len(row) != len(names) for row in rows):
        return None  # extra keys: reported by the slow path
    return _flat_matrix(flat, len(rows), len(names))


def _columns_from_rows(item: Loaded, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    errors: list[dict[str, Any]] = []
    names, numeric, name_set = item.names, item.numeric, item.name_set
    values: list[list[Any]] = [[] for _ in names]
    for i, row in enumerate(rows):
        if len(row) != len(names) or not name_set.issuperset(row):
            for key in row:
                if key not in name_set:
                    errors.append(
                        {
                            "loc": ["body", "rows", i, key],
                            "msg": f"rows[{i}]: {key!r} is not a feature of this model "
                            f"(features: {', '.join(names)}).",
                            "type": "unknown_feature",
                        }
                    )
            for name in names:
                if name not in row:
                    errors.append(
                        {
                            "loc": ["body", "rows", i, name],
                            "msg": f"rows[{i}]: feature {name!r} is missing.",
                            "type": "missing_feature",
                        }
                    )
            continue
        for j, name in enumerate(names):
            value = row[name]
            problem = _check_value(value, numeric[j], f"rows[{i}].{name}")
            if problem is None:
                values[j].append(value)
            else:
                errors.append(
                    {"loc": ["body", "rows", i, name], "msg": problem[1], "type": problem[0]}
                )
        if len(errors) >= MAX_REPORTED:
            break
    if errors:
        raise PredictInvalid(errors[:MAX_REPORTED])
    return _arrays(item, values)


def _columns_from_instances(item: Loaded, instances: list[list[Any]]) -> dict[str, np.ndarray]:
    errors: list[dict[str, Any]] = []
    names, numeric = item.names, item.numeric
    values: list[list[Any]] = [[] for _ in names]
    for i, instance in enumerate(instances):
        if len(instance) != len(names):
            errors.append(
                {
                    "loc": ["body", "instances", i],
                    "msg": f"instances[{i}] has {len(instance)} values but the model takes "
                    f"{len(names)} features, in this order: {', '.join(names)}.",
                    "type": "wrong_width",
                }
            )
            continue
        for j, value in enumerate(instance):
            where = f"instances[{i}][{j}] (feature {names[j]!r})"
            problem = _check_value(value, numeric[j], where)
            if problem is None:
                values[j].append(value)
            else:
                errors.append(
                    {"loc": ["body", "instances", i, j], "msg": problem[1], "type": problem[0]}
                )
        if len(errors) >= MAX_REPORTED:
            break
    if errors:
        raise PredictInvalid(errors[:MAX_REPORTED])
    return _arrays(item, values)


def _arrays(item: Loaded, values: list[list[Any]]) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    for name, is_numeric, column in zip(item.names, item.numeric, values, strict=True):
        if is_numeric:
            columns[name] = np.asarray(column, dtype=np.float64)
        else:
            array = np.empty(len(column), dtype=object)
            array[:] = column
            columns[name] = array
    return columns


def predict(
    item: Loaded, *, rows: list[dict[str, Any]] | None, instances: list[list[Any]] | None
) -> dict[str, Any]:
    """Predictions (+ probabilities for classifiers with a likelihood loss) for a batch."""
    if rows is not None and instances is not None:
        raise InvalidInput(
            "Send either 'rows' or 'instances', not both.",
            loc=["body", "rows"],
            code="rows_and_instances",
        )
    if rows is None and instances is None:
        raise InvalidInput(
            "Send 'rows' (a list of {feature: value} objects) or 'instances' (a list of value "
            "lists in feature_names order).",
            loc=["body", "rows"],
            code="rows_or_instances",
        )
    key = "rows" if rows is not None else "instances"
    X: np.ndarray | dict[str, np.ndarray] | None = None
    if rows is not None:
        _batch_size_check(key, len(rows))
        if item.all_numeric:
            X = _matrix_from_rows(item, rows)
        if X is None:
            X = _columns_from_rows(item, rows)
    else:
        assert instances is not None
        _batch_size_check(key, len(instances))
        if item.all_numeric:
            X = _fast_matrix(item, instances)
        if X is None:
            X = _columns_from_instances(item, instances)
    try:
        # One forward pass for labels and probabilities alike (predict + predict_proba would
        # encode the rows and run the network twice).
        out = item.model.decision_function(X)
    except engine.InputError as exc:
        loc: list[str | int] = ["body", key]
        if exc.row is not None:
            loc.append(exc.row)
            if exc.column is not None:
                loc.append(exc.column if key == "rows" else item.names.index(exc.column))
        raise InvalidInput(exc.msg, loc=loc, code=exc.code) from exc
    # One whole-array test for the usual all-finite case; only a failure pays for the rows. (Not
    # a NumPy sum: inf - inf would warn. A Python sum of a few values does not, and is cheaper
    # than np.isfinite for one row; a finite sum that overflows only costs the per-row test.)
    if out.size <= _SUM_TEST_MAX:
        finite = math.isfinite(sum(out.ravel().tolist()))
    else:
        finite = bool(np.isfinite(out).all())
    bad = None if finite else ~np.isfinite(out).all(axis=1)
    if bad is not None and bad.any():
        # Finite inputs far outside the training range can overflow the network (float32); a
        # NaN is not JSON and would be a silent wrong answer.
        raise PredictInvalid(
            [
                {
                    "loc": ["body", key, int(row)],
                    "msg": f"{key}[{row}]: the model's output is not finite for this row; its "
                    "values are too far outside the training range.",
                    "type": "non_finite_output",
                }
                for row in np.flatnonzero(bad)[:MAX_REPORTED]
            ]
        )
    predictions, probabilities = _decide(item, out)
    return {
        "predictions": predictions,
        "probabilities": probabilities,
        "classes": item.model.classes,
    }


def _decide(item: Loaded, out: np.ndarray) -> tuple[list[Any], list[list[float]] | None]:
    """Labels and probabilities from the network output, by ``engine.Model.predict``'s rules.

    Regression: the value. Binary cross-entropy: ``p >= 0.5 -> classes[1]``, probabilities
    ``[1 - p, p]``. Softmax: argmax, the softmax rows. Hinge: argmax of the scores, no
    probabilities (they are not calibrated).
    """
    model = item.model
    if model.task == "regression":
        return out[:, 0].tolist(), None
    assert item.labels is not None
    if model.spec["loss"] == "binary_cross_entropy":
        p = out[:, 0]
        labels = item.labels[(p >= 0.5).astype(np.intp)]
        return labels.tolist(), np.stack([1.0 - p, p], axis=1).tolist()
    labels = item.labels[out.argmax(axis=1)]
    return labels.tolist(), (out.tolist() if model.has_proba else None)


def sparsity(item: Loaded, tolerance: float) -> dict[str, Any]:
    """The engine's sparsity statistics of a loaded model."""
    return engine.sparsity(item.model, tolerance=tolerance)
