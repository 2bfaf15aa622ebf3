"""A request's JSON batch (``rows`` or ``instances``) as the engine's input, after the checks
JSON needs.

Labels, probabilities and every value check (numbers, finiteness, categories) are the engine's
(``engine.Model.predict_with_proba``). The checks here only refuse what JSON can say but the
engine would take silently or could not hold: ``null`` and ``NaN`` (the engine imputes missing
values; a request must say what it means), ``true``/``false`` (NumPy counts them as numbers),
integers beyond float64, and non-strings for a categorical feature (the engine would ``str()``
them); and, before a body is parsed, an object of more keys than any model reads
(:func:`check_key_density`). Only the features the loaded model reads are checked and passed on
(``Loaded.required``: a pruned model's rows may leave the others out). When every value is a plain
number the batch becomes one float64 matrix, the path of a single-row prediction; otherwise
columns, and every failing value is listed in one 422.
"""

from typing import Any

import numpy as np

from app.core.config import settings
from app.core.errors import MAX_ERRORS, InvalidInput, InvalidInputs, PayloadTooLarge
from app.models.loading import Loaded
from app.models.messages import key_loc, listing, quote

# A row may carry this many keys beyond the model's features before it is refused whole.
KEY_MARGIN = 16
# The exact types of a plain JSON number (``bool`` is a subclass of ``int``, not one of them).
NUMBER = frozenset({float, int})
# Up to this many values, checks run in Python: cheaper than NumPy's per-call overhead.
SMALL = 64


def _json_problem(value: Any, numeric: bool, where: str) -> tuple[str, str] | None:
    """None if the engine may judge ``value``; else (code, sentence) for what JSON cannot mean."""
    kind = type(value)
    if value is None:
        return "missing_value", f"{where} is null; every feature needs a value to predict."
    if numeric:
        if kind is float and value != value:
            return "non_finite", f"{where} is NaN; it must be a finite number."
        if kind is int:
            try:
                float(value)
            except OverflowError:
                return "non_finite", f"{where} is too large for a 64-bit float."
        elif kind is bool:
            return "not_numeric", f"{where} must be a number, got {quote(value)}."
        return None  # numbers, and strings or objects the engine reports as not_numeric
    if kind is str:
        return None
    return "wrong_type", f"{where} must be a string (a training category), got {quote(value)}."


def _matrix(flat: list[Any], n: int, width: int) -> np.ndarray | None:
    """Plain JSON numbers as a (N, D) float64 matrix, or None when one needs a closer look."""
    if not set(map(type, flat)) <= NUMBER:  # exact types: bool, None and str look closer
        return None
    try:
        matrix = np.array(flat, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        return None
    # NaN (the engine would impute it) is the one value unequal to itself; for a request's few
    # values a Python pass is cheaper than starting a NumPy one.
    if any(v != v for v in flat) if len(flat) <= SMALL else np.isnan(matrix).any():
        return None
    return matrix.reshape(n, width)


def _column(values: list[Any], numeric: bool) -> np.ndarray:
    if numeric and set(map(type, values)) <= NUMBER:
        return np.array(values, dtype=np.float64)
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):  # element-wise: a list value must stay one object
        column[i] = value
    return column


def _columns(item: Loaded, key: str, batch: list[Any]) -> dict[str, np.ndarray]:
    """The batch as engine columns, after the JSON checks; InvalidInputs lists what fails them.

    Only the features the model reads are checked and passed on; a row may omit the others.
    """
    names, numeric, index = item.names, item.numeric, item.index
    used, required = item.positions, item.required
    width = len(names)
    errors: list[dict[str, Any]] = []
    columns: list[list[Any]] = [[] for _ in used]
    for i, entry in enumerate(batch):
        if len(errors) > MAX_ERRORS:
            break
        if key == "rows":
            if len(entry) > width + KEY_MARGIN:
                errors.append(
                    {
                        "loc": ["body", "rows", i],
                        "msg": f"rows[{i}] has {len(entry)} keys but the model has {width} "
                        f"features: {listing(names)}.",
                        "type": "too_many_keys",
                    }
                )
                continue
            # With as many keys as features and none unknown, every feature is there.
            if any(k not in index for k in entry) or (
                len(entry) != width and any(name not in entry for name in required)
            ):
                errors += [
                    {
                        "loc": ["body", "rows", i, key_loc(k)],
                        "msg": f"rows[{i}]: {quote(k)} is not a feature of this model "
                        f"(features: {listing(names)}).",
                        "type": "unknown_feature",
                    }
                    for k in entry
                    if k not in index
                ]
                errors += [
                    {
                        "loc": ["body", "rows", i, name],
                        "msg": f"rows[{i}]: feature {name!r} is missing.",
                        "type": "missing_feature",
                    }
                    for name in required
                    if name not in entry
                ]
                continue
            values = [entry[name] for name in required]
        else:
            if len(entry) != width:
                errors.append(
                    {
                        "loc": ["body", "instances", i],
                        "msg": f"instances[{i}] has {len(entry)} values but the model takes "
                        f"{width} features, in this order: {listing(names)}.",
                        "type": "wrong_width",
                    }
                )
                continue
            values = entry if item.used is None else [entry[j] for j in used]
        for k, (j, value) in enumerate(zip(used, values, strict=True)):
            where = f"rows[{i}].{names[j]}" if key == "rows" else f"instances[{i}][{j}]"
            problem = _json_problem(value, numeric[j], f"{where} (feature {names[j]!r})")
            if problem is None:
                columns[k].append(value)
            else:
                loc = ["body", key, i, names[j] if key == "rows" else j]
                errors.append({"loc": loc, "msg": problem[1], "type": problem[0]})
    if errors:
        raise InvalidInputs(errors, summary_loc=["body", key])
    return {names[j]: _column(columns[k], numeric[j]) for k, j in enumerate(used)}


def engine_input(item: Loaded, key: str, batch: list[Any]) -> np.ndarray | dict[str, np.ndarray]:
    """A float64 matrix of the used features when every value is a plain number, else columns."""
    if item.all_numeric:
        width, required = len(item.names), item.required
        flat: list[Any] | None = None
        try:
            if key == "rows":
                known = item.index.keys()
                if (
                    all(len(row) == width for row in batch)
                    if item.used is None
                    else all(row.keys() <= known for row in batch)
                ):
                    flat = [row[name] for row in batch for name in required]
            elif all(len(entry) == width for entry in batch):
                if item.used is not None:
                    flat = [entry[j] for entry in batch for j in item.used]
                elif len(batch) == 1:
                    flat = batch[0]
                else:
                    flat = [v for entry in batch for v in entry]
        except KeyError:
            flat = None
        if flat is not None:
            matrix = _matrix(flat, len(batch), len(required))
            if matrix is not None:
                return matrix
    return _columns(item, key, batch)


def checked_batch(rows: list[Any] | None, instances: list[Any] | None) -> tuple[str, list[Any]]:
    """``("rows", rows)`` or ``("instances", instances)``: exactly one, not empty, at most
    ``REGULA_MAX_PREDICT_ROWS`` long."""
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
    key, batch = ("rows", rows) if rows is not None else ("instances", instances)
    assert batch is not None
    if not batch:
        raise InvalidInput(
            f"{key} is empty; send at least one row.", loc=["body", key], code="empty_batch"
        )
    check_row_count(len(batch), key)
    return key, batch


def check_row_count(n: int, key: str) -> None:
    """413 ``too_many_rows`` at ``["body", key]`` past REGULA_MAX_PREDICT_ROWS (rows, instances
    or image files)."""
    if n > settings.max_predict_rows:
        raise PayloadTooLarge(
            f"{key} has {n} rows; this service predicts at most "
            f"{settings.max_predict_rows} rows per request.",
            loc=["body", key],
            code="too_many_rows",
        )


def batch_size(rows: list[Any] | None, instances: list[Any] | None) -> int:
    """Rows in a request (0 when it sends neither or both: predict says why)."""
    return len(rows if rows is not None else instances or ())


def check_key_density(raw: bytes, key: str = "rows") -> None:
    """Refuse, before parsing, a JSON body with an object of more keys than any model reads
    (``REGULA_MAX_COLUMNS`` features plus ``KEY_MARGIN``): parsing a row of a million keys holds
    the interpreter for seconds. Keys end in ``":``; a first count over the bytes trips only when
    the objects (``{``) hold more keys on average than that, and then NumPy finds the first such
    object (the body itself is object 0, so object ``k`` is ``key[k - 1]``). A string value
    holding ``{`` or ``":`` only makes the count more lenient, or needs thousands per row."""
    limit = settings.max_columns + KEY_MARGIN
    if raw.count(b'":') <= max(raw.count(b"{"), 1) * limit:
        return
    data = np.frombuffer(raw, dtype=np.uint8)
    braces = np.flatnonzero(data == ord("{"))
    ends = np.flatnonzero((data[:-1] == ord('"')) & (data[1:] == ord(":")))
    per_object = np.bincount(np.searchsorted(braces, ends), minlength=len(braces) + 1)
    # per_object[0]: keys before any brace (not JSON an object would parse); [k + 1]: object k
    over = np.flatnonzero(per_object[1:] > limit)
    if len(over) == 0:
        return
    k, count = int(over[0]), int(per_object[over[0] + 1])
    where = "The body" if k == 0 else f"{key}[{k - 1}]"
    raise InvalidInput(
        f"{where} has {count} keys, more than any model reads ({settings.max_columns:,} "
        "features at most, REGULA_MAX_COLUMNS); send only the model's features.",
        loc=["body"] if k == 0 else ["body", key, k - 1],
        code="too_many_keys",
    )


__all__ = [
    "KEY_MARGIN",
    "NUMBER",
    "SMALL",
    "batch_size",
    "check_key_density",
    "checked_batch",
    "engine_input",
]
