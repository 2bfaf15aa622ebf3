"""Prediction: a cache of loaded models bounded in bytes; the adapter from JSON rows to the engine.

The cache holds each model's real arrays (weights and the buffers the network keeps), evicts the
least recently used ones past ``REGULA_MODEL_CACHE_MB``, and loads a model once however many
requests wait for it. A cache hit needs no database: each entry remembers its owner, so the owner
check is a string comparison. A model deleted while its load was in flight is never cached nor
answered from (a tombstone is checked after the load and again before the answer).

Predictions come from the pruned copy of the model (``engine.prune.prune``): a feature whose
first-layer weights are all zero is not read, so a row may leave it out, and its value (an unseen
category included) is ignored. The trained model stays alongside for sparsity, weights and export.

Labels, probabilities and every value check (numbers, finiteness, categories) are the engine's
(``engine.Model.predict_with_proba``); its ``InputError`` becomes ``loc = ["body", "rows", row,
feature]``. The adapter below only refuses what JSON can say but the engine would take silently
or could not hold: ``null`` and ``NaN`` (the engine imputes missing values; a request must say
what it means), ``true``/``false`` (NumPy counts them as numbers), integers beyond float64, and
non-strings for a categorical feature (the engine would ``str()`` them).

Image models (a CNN on an image dataset, ``engine.augment.ImagePreprocessor``) are never pruned
and take ``instances``: one nested list per image, ``(H, W)`` or ``(C, H, W)`` of the model's
input shape, in the dataset's own pixel values (0..255 for uint8 images: the model applies its
scaling). Image files (PNG/JPEG) are decoded by the dataset upload's own code
(``app.datasets.ingest.imagezip``: ``image_size`` resizes, ``color_mode`` converts), so a file
becomes the pixels a zip upload of it would have stored.
"""

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

import engine
from app.core.bodies import INLINE_PARSE_BYTES
from app.core.config import settings
from app.core.errors import MAX_ERRORS, InvalidInput, InvalidInputs, PayloadTooLarge
from app.core.ownership import owned
from app.datasets.ingest.imagezip import (
    COLOR_MODES,
    image_channels,
    open_image,
    parse_image_fields,
    to_pixels,
)
from app.models.orm import Model, weights_checksum
from app.models.service import MAX_ID_LENGTH, ModelCorrupt, corrupt, not_found
from engine.augment import ImagePreprocessor
from engine.conv import AvgPool2D, Conv2D, Flatten, MaxPool2D
from engine.layers import Dense
from engine.preprocess import Preprocessor
from engine.prune import prune

# A row may carry this many keys beyond the model's features before it is refused whole.
KEY_MARGIN = 16
# A batch whose forward pass takes fewer multiply-adds than this, sent in a body of at most
# INLINE_PARSE_BYTES, is predicted on the event loop (microseconds; a hop to the thread pool
# would cost more). Anything larger goes to the pool, so neither a big model nor a big body
# (its rows are checked key by key) holds the loop.
INLINE_COST = 1_000_000
# Longest text of a user's value or key quoted in an error.
MAX_QUOTED = 40
MAX_MESSAGE = 300
# At most this many feature names listed in one message.
MAX_LISTED = 20
# How far probabilities may stray from [0, 1] and from summing to 1 (float32 rounding).
PROBABILITY_TOLERANCE = 1e-3
# Deleted model ids remembered, for loads that were in flight when the model was deleted.
MAX_TOMBSTONES = 10_000


@dataclass(frozen=True)
class Loaded:
    """A cached, ready-to-predict model.

    ``model`` predicts: the pruned copy of the trained model (the trained model itself when
    pruning removes nothing). ``names``, ``numeric`` and ``index`` describe the trained model's
    features (what a request may send, and the order of ``instances``); ``used`` lists the
    positions in ``names`` of the features ``model`` reads.
    """

    id: str
    owner_id: str | None
    model: engine.Model
    names: tuple[str, ...]
    numeric: tuple[bool, ...]  # per feature: numeric (True) or categorical (False)
    index: dict[str, int]  # feature name -> position
    nbytes: int  # the models' arrays in memory (parameters and their gradient buffers)
    n_weights: int  # parameters of ``model``: the multiply-adds of a forward pass, per row
    full: engine.Model | None = None  # the trained model, when ``model`` is its pruned copy
    used: tuple[int, ...] | None = None  # positions of the features ``model`` reads (None: all)
    input_shape: tuple[int, int, int] | None = None  # (C, H, W) of an image model's input

    @cached_property
    def trained(self) -> engine.Model:
        """The model as trained (all features): for sparsity, weights and export."""
        return self.model if self.full is None else self.full

    @cached_property
    def positions(self) -> tuple[int, ...]:
        return tuple(range(len(self.names))) if self.used is None else self.used

    @cached_property
    def required(self) -> tuple[str, ...]:
        """The features a prediction reads, in the trained model's order."""
        return tuple(self.names[j] for j in self.positions)

    @cached_property
    def all_numeric(self) -> bool:
        return all(self.numeric[j] for j in self.positions)


def _preprocessing_arrays(pre: Preprocessor | ImagePreprocessor) -> list[np.ndarray]:
    if isinstance(pre, ImagePreprocessor):
        aug = pre.augmenter
        return [] if aug is None else [a for a in (aug.mean, aug.std) if a is not None]
    return [pre.center, pre.scale, pre.fill]


def model_nbytes(model: engine.Model) -> int:
    """Bytes of a loaded model's arrays: parameters, gradient buffers, preprocessing."""
    params, grads = model.network.parameters()
    arrays = [*params, *grads, *_preprocessing_arrays(model.preprocessor)]
    return sum(int(a.nbytes) for a in arrays)


def max_servable_bytes() -> int:
    """The most bytes of weights (parameters x itemsize) a model may have to be served.

    A loaded model holds each parameter twice (the weights and the network's gradient buffers),
    and it must fit in the model cache (``REGULA_MODEL_CACHE_MB``): half the cache. A job whose
    model would be larger is to be refused at submit.
    """
    return settings.model_cache_bytes // 2


class ModelCache:
    """A thread-safe LRU of loaded models bounded in bytes, with one load per model at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Loaded] = OrderedDict()
        self._bytes = 0
        self._loading: dict[tuple[str, str | None], Future[Loaded]] = {}
        self._deleted: OrderedDict[str, None] = OrderedDict()
        # Lookups answered from the cache, and loads that had to read the model (GET /metrics).
        self.hits = 0
        self.misses = 0

    def get(self, model_id: str) -> Loaded | None:
        with self._lock:
            item = self._items.get(model_id)
            if item is not None:
                self._items.move_to_end(model_id)
                self.hits += 1
            return item

    def _put(self, item: Loaded) -> None:
        # Called with the lock held.
        limit = settings.model_cache_bytes
        if item.nbytes > limit:
            return  # served, but never cached: it would evict everything else
        old = self._items.pop(item.id, None)
        if old is not None:
            self._bytes -= old.nbytes
        self._items[item.id] = item
        self._bytes += item.nbytes
        while self._bytes > limit:
            _, evicted = self._items.popitem(last=False)
            self._bytes -= evicted.nbytes

    def load(self, model_id: str, owner_id: str | None, loader: Callable[[], Loaded]) -> Loaded:
        """The cached model, or ``loader()`` run once for all concurrent callers and cached."""
        key = (model_id, owner_id)
        with self._lock:
            item = self._items.get(model_id)
            if item is not None:
                self._items.move_to_end(model_id)
                self.hits += 1
                return item
            self.misses += 1
            future = self._loading.get(key)
            leader = future is None
            if future is None:
                future = self._loading[key] = Future()
        if not leader:
            return future.result()
        try:
            item = loader()
            with self._lock:
                if model_id in self._deleted:  # deleted while we loaded: deletion wins
                    raise not_found(model_id)
                self._put(item)
            future.set_result(item)
            return item
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._loading.pop(key, None)

    def evict(self, model_id: str) -> None:
        """Forget a deleted model, and refuse to cache or answer from a load in flight."""
        with self._lock:
            item = self._items.pop(model_id, None)
            if item is not None:
                self._bytes -= item.nbytes
            self._deleted[model_id] = None
            while len(self._deleted) > MAX_TOMBSTONES:
                self._deleted.popitem(last=False)

    def is_deleted(self, model_id: str) -> bool:
        return model_id in self._deleted

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self._deleted.clear()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


cache = ModelCache()


def evict(model_id: str) -> None:
    """Forget a model that was just deleted."""
    cache.evict(model_id)


def cached(model_id: str, owner_id: str | None) -> Loaded | None:
    """The cached model if present and the caller's; NotFound if present and someone else's."""
    item = cache.get(model_id)
    if item is not None and item.owner_id != owner_id:
        raise not_found(model_id)
    return item


def check_not_deleted(item: Loaded) -> None:
    """NotFound if ``item``'s model was deleted since it was loaded (checked before answering)."""
    if cache.is_deleted(item.id):
        raise not_found(item.id)


def _read(session: Session, model_id: str, owner_id: str | None) -> Loaded:
    """Read the row, check its checksum and ``engine.load`` it (blocking)."""
    stmt = owned(
        select(Model.weights, Model.weights_sha256).where(Model.id == model_id),
        Model.owner_id,
        owner_id,
    )
    row = session.execute(stmt).first()
    # The bytes are parsed below; the session's transaction (and SQLite snapshot) ends here.
    session.rollback()
    if row is None:
        raise not_found(model_id)
    weights, checksum = row
    if weights_checksum(weights) != checksum:
        raise corrupt(model_id)
    try:
        trained = engine.load(weights)
    except engine.ModelFormatError as exc:
        raise corrupt(model_id) from exc
    del weights, row
    return loaded(model_id, owner_id, trained)


def _n_weights(model: engine.Model) -> int:
    params, _ = model.network.parameters()
    return sum(int(p.size) for p in params)


def _forward_cost(model: engine.Model, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one image's forward pass: each Dense weight once, each Conv2D kernel
    weight once per output position ``(Ho, Wo)``."""
    shape = input_shape
    total = 0
    for layer in model.network.layers:
        if isinstance(layer, Dense):
            W = layer.params["W"]
            total += int(W.size)
            shape = (int(W.shape[1]),)
        elif isinstance(layer, Conv2D | MaxPool2D | AvgPool2D):
            shape = layer.output_shape((shape[0], shape[1], shape[2]))
            if isinstance(layer, Conv2D):
                total += int(layer.params["W"].size) * shape[1] * shape[2]
        elif isinstance(layer, Flatten):
            shape = layer.output_shape(shape)
    return total


def _loaded_images(
    model_id: str, owner_id: str | None, trained: engine.Model, pre: ImagePreprocessor
) -> Loaded:
    """The cache entry of an image model: predicts as trained (pruning is for table features)."""
    C, H, W = pre.input_shape
    name = pre.feature_names[0]
    return Loaded(
        id=model_id,
        owner_id=owner_id,
        model=trained,
        names=(name,),
        numeric=(True,),
        index={name: 0},
        nbytes=model_nbytes(trained),
        n_weights=_forward_cost(trained, (C, H, W)),
        input_shape=(C, H, W),
    )


def loaded(model_id: str, owner_id: str | None, trained: engine.Model) -> Loaded:
    """The cache entry of a trained model: its pruned copy predicts (module docstring)."""
    pre = trained.preprocessor
    if isinstance(pre, ImagePreprocessor):
        return _loaded_images(model_id, owner_id, trained, pre)
    names = tuple(trained.feature_names)
    index = {name: j for j, name in enumerate(names)}
    model = prune(trained)
    # Nothing to prune: one copy, predictions exactly as trained.
    full: engine.Model | None = None if model is trained else trained
    nbytes = model_nbytes(model) + (0 if full is None else model_nbytes(full))
    return Loaded(
        id=model_id,
        owner_id=owner_id,
        model=model,
        names=names,
        numeric=tuple(kind == "numeric" for kind in pre.kinds),
        index=index,
        nbytes=nbytes,
        n_weights=_n_weights(model),
        full=full,
        used=None if full is None else tuple(index[name] for name in model.feature_names),
    )


def load(*, session: Session, model_id: str, owner_id: str | None) -> Loaded:
    """The caller's model: from the cache, or read once and cached (blocking: off the loop)."""
    item = cached(model_id, owner_id)
    if item is not None:
        return item
    if len(model_id) > MAX_ID_LENGTH:
        raise not_found(model_id)
    item = cache.load(model_id, owner_id, lambda: _read(session, model_id, owner_id))
    if item.owner_id != owner_id:
        raise not_found(model_id)
    return item


async def get(
    sessions: Callable[[], AbstractContextManager[Session]], model_id: str, owner_id: str | None
) -> Loaded:
    """The caller's model for an async route: from the cache (no database, no thread hop), else
    :func:`load` in the thread pool with a session of its own."""
    item = cached(model_id, owner_id)
    if item is not None:
        return item

    def read() -> Loaded:
        with sessions() as session:
            return load(session=session, model_id=model_id, owner_id=owner_id)

    return await run_in_threadpool(read)


def required_features(*, session: Session, model_id: str, owner_id: str | None) -> list[str] | None:
    """The features a prediction of the caller's model reads; None if its weights are corrupt
    (the model's description stays readable)."""
    try:
        item = load(session=session, model_id=model_id, owner_id=owner_id)
    except ModelCorrupt:
        return None
    return list(item.required)


def cost(item: Loaded, n_rows: int) -> int:
    """Multiply-adds of predicting ``n_rows`` rows: what decides between inline and a thread."""
    return n_rows * item.n_weights


# --- errors ---------------------------------------------------------------------------------------


def _quote(value: Any) -> str:
    text = repr(value if not isinstance(value, str) else value[: MAX_QUOTED + 1])
    return text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 3] + "..."


def _key_loc(key: str) -> str:
    return key if len(key) <= MAX_QUOTED else key[: MAX_QUOTED - 3] + "..."


def _listing(names: tuple[str, ...]) -> str:
    shown = ", ".join(_key_loc(n) for n in names[:MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")


def _short(msg: str) -> str:
    return msg if len(msg) <= MAX_MESSAGE else msg[: MAX_MESSAGE - 3] + "..."


# --- JSON -> engine input -------------------------------------------------------------------------

_NUMBER = frozenset({float, int})
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
            return "not_numeric", f"{where} must be a number, got {_quote(value)}."
        return None  # numbers, and strings or objects the engine reports as not_numeric
    if kind is str:
        return None
    return "wrong_type", f"{where} must be a string (a training category), got {_quote(value)}."


def _matrix(flat: list[Any], n: int, width: int) -> np.ndarray | None:
    """Plain JSON numbers as a (N, D) float64 matrix, or None when one needs a closer look."""
    if not set(map(type, flat)) <= _NUMBER:  # exact types: bool, None and str look closer
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
    if numeric and set(map(type, values)) <= _NUMBER:
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
                        f"features: {_listing(names)}.",
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
                        "loc": ["body", "rows", i, _key_loc(k)],
                        "msg": f"rows[{i}]: {_quote(k)} is not a feature of this model "
                        f"(features: {_listing(names)}).",
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
                        f"{width} features, in this order: {_listing(names)}.",
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


def _engine_input(item: Loaded, key: str, batch: list[Any]) -> np.ndarray | dict[str, np.ndarray]:
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


def _batch(rows: list[Any] | None, instances: list[Any] | None) -> tuple[str, list[Any]]:
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
    if len(batch) > settings.max_predict_rows:
        raise PayloadTooLarge(
            f"{key} has {len(batch)} rows; this service predicts at most "
            f"{settings.max_predict_rows} rows per request.",
            loc=["body", key],
            code="too_many_rows",
        )
    return key, batch


def batch_size(rows: list[Any] | None, instances: list[Any] | None) -> int:
    """Rows in a request (0 when it sends neither or both: predict says why)."""
    return len(rows if rows is not None else instances or ())


def _non_finite_rows(key: str, values: np.ndarray) -> None:
    """422 naming the rows whose output is not finite (inputs far outside the training range)."""
    # One sum is NaN or inf if any term is; a finite sum that overflows only costs the test.
    if values.size <= SMALL and math.isfinite(sum(values.ravel().tolist())):
        return
    finite = np.isfinite(values)
    if finite.all():
        return
    bad = ~finite.reshape(len(values), -1).all(axis=1)
    raise InvalidInputs(
        [
            {
                "loc": ["body", key, int(row)],
                "msg": f"{key}[{row}]: the model's output is not finite for this row; its "
                "values are too far outside the training range.",
                "type": "non_finite_output",
            }
            for row in np.flatnonzero(bad)[: MAX_ERRORS + 1]
        ],
        summary_loc=["body", key],
    )


def _check_probabilities(item: Loaded, proba: np.ndarray) -> None:
    """The last guard against a model whose stored description does not match its weights."""
    tol = PROBABILITY_TOLERANCE
    if proba.ndim != 2 or proba.shape[1] != len(item.model.classes or ()):
        raise corrupt(item.id)
    # Each of p >= 0, p <= 1 and sum(p) == 1 within tol (NaN fails every comparison).
    if proba.size <= SMALL:
        rows = proba.tolist()
        if all(
            min(row) >= -tol and max(row) <= 1 + tol and abs(sum(row) - 1.0) <= tol for row in rows
        ):
            return
        raise corrupt(item.id)
    low, high, total = proba.min(), proba.max(), proba.sum(axis=1)
    if not (low >= -tol and high <= 1 + tol and (abs(total - 1.0) <= tol).all()):
        raise corrupt(item.id)


def _json_array(values: np.ndarray) -> Any:
    # orjson writes numeric C-contiguous arrays itself; strings (object arrays) go as lists.
    if values.dtype == object:
        return values.tolist()
    return np.ascontiguousarray(values)


def predict(
    item: Loaded, *, rows: list[dict[str, Any]] | None, instances: list[list[Any]] | None
) -> dict[str, Any]:
    """Predictions (+ probabilities for classifiers with a likelihood loss) for a batch.

    Values are NumPy arrays where they are numbers (for an orjson response), lists otherwise.
    """
    key, batch = _batch(rows, instances)
    if item.input_shape is not None:
        return predict_input(item, key, _image_input(item, key, batch))
    return predict_input(item, key, _engine_input(item, key, batch))


def predict_input(item: Loaded, key: str, X: np.ndarray | dict[str, np.ndarray]) -> dict[str, Any]:
    """``predict`` of a batch already in engine form; errors point at ``["body", key, row]``."""
    try:
        labels, proba = item.model.predict_with_proba(X)
    except engine.InputError as exc:
        loc: list[str | int] = ["body", key]
        if exc.row is not None:
            loc.append(exc.row)
            if exc.column is not None and exc.column in item.index and item.input_shape is None:
                loc.append(exc.column if key == "rows" else item.index[exc.column])
        raise InvalidInput(_short(exc.msg), loc=loc, code=exc.code) from exc
    if proba is not None:
        _non_finite_rows(key, proba)
        _check_probabilities(item, proba)
    elif labels.dtype.kind == "f":
        _non_finite_rows(key, labels)
    return {
        "predictions": _json_array(labels),
        "probabilities": None if proba is None else _json_array(proba),
        "classes": item.model.classes,
    }


# --- images -------------------------------------------------------------------------------------


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _accepted(shape: tuple[int, int, int]) -> str:
    C, H, W = shape
    return _shape_text(shape) + (f" or {_shape_text((H, W))}" if C == 1 else "")


def _innermost(value: Any, depth: int) -> list[Any]:
    """The innermost lists of a nested list ``depth`` levels deep (rows of pixels)."""
    rows = [value]
    for _ in range(depth):
        rows = [part for row in rows for part in row]
    return rows


def _pixel_types(rows: list[Any]) -> set[type]:
    types: set[type] = set()
    for row in rows:
        types.update(map(type, row))
    return types


def _image_problem(
    entry: Any, i: int, shape: tuple[int, int, int]
) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """``instances[i]`` as a float64 image ``(C, H, W)``, or the error entry saying why not."""
    C, H, W = shape
    loc: list[str | int] = ["body", "instances", i]

    def bad(code: str, msg: str) -> tuple[None, dict[str, Any]]:
        return None, {"loc": loc, "msg": f"instances[{i}]: {msg}", "type": code}

    try:
        a = np.array(entry)
    except (ValueError, OverflowError):  # rows of different lengths (or depths)
        return bad(
            "ragged_image",
            f"not a rectangular array (rows of different lengths); the model takes one image of "
            f"shape {_accepted(shape)}.",
        )
    depth = a.ndim - 1  # levels of lists above a row of pixels
    if a.ndim == 2 and C == 1:
        a = a[None]
    if a.ndim != 3:
        return bad(
            "wrong_image_shape",
            f"an array of shape {_shape_text(a.shape)}; the model takes one image of shape "
            f"{_accepted(shape)}.",
        )
    if a.shape[1:] != (H, W):
        return bad(
            "wrong_image_size",
            f"the image is {a.shape[1]}x{a.shape[2]} pixels (H x W); the model takes "
            f"{H}x{W} images.",
        )
    if a.shape[0] != C:
        return bad(
            "wrong_channels",
            f"the image has {a.shape[0]} channel(s); the model takes {C} (shape "
            f"{_accepted(shape)}).",
        )
    for row in _innermost(entry, depth):
        for value in row:
            if type(value) not in _NUMBER:
                if value is None:
                    return bad("missing_value", "a pixel is null; every pixel must be a number.")
                return bad("not_numeric", f"pixels must be numbers, got {_quote(value)}.")
    try:
        image = a.astype(np.float64)
    except OverflowError:
        return bad("non_finite", "a pixel is too large for a 64-bit float.")
    if not np.isfinite(image).all():
        return bad("non_finite", "a pixel is NaN or infinite; pixels must be finite numbers.")
    return image, None


def _image_input(item: Loaded, key: str, batch: list[Any]) -> np.ndarray:
    """Instances as float64 images ``(N, C, H, W)``; InvalidInputs names each bad instance.

    One ``np.array`` of the whole batch when every instance is well formed (the common case);
    otherwise each instance is checked on its own, so every error names its index.
    """
    assert item.input_shape is not None
    shape = item.input_shape
    if key == "rows":
        raise InvalidInput(
            "This model takes images: send 'instances', one nested list of shape "
            f"{_accepted(shape)} per image (or POST image files to "
            f"/models/{item.id}/predict/images).",
            loc=["body", "rows"],
            code="images_need_instances",
        )
    n = len(batch)
    try:
        X = np.array(batch)
    except (ValueError, OverflowError):
        X = None
    if (
        X is not None
        and X.dtype.kind in "iuf"
        and X.shape[1:] in (shape, shape[1:] if shape[0] == 1 else shape)
        and _pixel_types(_innermost(batch, X.ndim - 1)) <= _NUMBER
    ):
        X = X.astype(np.float64, copy=False).reshape(n, *shape)
        if np.isfinite(X).all():
            return X
    images: list[np.ndarray] = []
    errors: list[dict[str, Any]] = []
    for i, entry in enumerate(batch):
        image, error = _image_problem(entry, i, shape)
        if error is not None:
            errors.append(error)
            if len(errors) > MAX_ERRORS:
                break
        elif image is not None:
            images.append(image)
    if errors:
        raise InvalidInputs(errors, summary_loc=["body", "instances"])
    return np.stack(images)


def _trained_on_bytes(pre: ImagePreprocessor) -> bool:
    """Whether the model's training pixels were uint8, the values a decoded PNG/JPEG holds."""
    if pre.pixel_dtype is not None:
        return pre.pixel_dtype == "uint8"
    # Saved before pixel_dtype was recorded: uint8 pixels were scaled by 1/255 unless featurewise
    # statistics were fitted (on the raw values); scale 1 without them means float pixels.
    return pre.scale != 1.0 or pre.augmenter is not None


def decode_files(
    item: Loaded, files: list[tuple[str, bytes]], fields: dict[str, str]
) -> np.ndarray:
    """Image files as uint8 ``(N, C, H, W)`` of the model's input shape (module docstring).

    ``fields`` are the dataset upload's ``image_size`` ("H,W": resize to it, bilinear) and
    ``color_mode`` (grayscale|rgb: convert); without them a file must already have the model's
    size and channels. Every file at fault is listed, by name, in one 422.
    """
    pre = item.trained.preprocessor
    if item.input_shape is None or not isinstance(pre, ImagePreprocessor):
        raise InvalidInput(
            "This model was trained on a table, not on images; send rows or instances to "
            f"POST /models/{item.id}/predict.",
            loc=["path", "model_id"],
            code="not_an_image_model",
        )
    C, H, W = item.input_shape
    if C not in COLOR_MODES.values() or not _trained_on_bytes(pre):
        why = (
            f"takes {C}-channel images"
            if C not in COLOR_MODES.values()
            else f"was trained on {pre.pixel_dtype or 'float'} pixels"
        )
        raise InvalidInput(
            f"This model {why}, which PNG/JPEG files (1 or 3 channels of 0..255) do not hold; "
            f"send the pixel values as 'instances' to POST /models/{item.id}/predict.",
            loc=["body", "files"],
            code="images_not_decodable",
        )
    if not files:
        raise InvalidInput(
            "Send at least one image file (PNG or JPEG) in the multipart field 'files'.",
            loc=["body", "files"],
            code="empty_batch",
        )
    if len(files) > settings.max_predict_rows:
        raise PayloadTooLarge(
            f"{len(files)} files; this service predicts at most {settings.max_predict_rows} "
            "rows per request.",
            loc=["body", "files"],
            code="too_many_rows",
        )
    size, channels = parse_image_fields(fields)
    if size is not None and size != (H, W):
        raise InvalidInput(
            f"image_size is {size[0]},{size[1]} but the model takes {H}x{W} images; send "
            f"'{H},{W}' (or leave it out for files of that size).",
            loc=["body", "image_size"],
            code="wrong_image_size",
        )
    if channels is not None and channels != C:
        raise InvalidInput(
            f"color_mode gives {channels} channel(s) but the model takes {C}; send "
            f"{'grayscale' if C == 1 else 'rgb'!r} (or leave it out).",
            loc=["body", "color_mode"],
            code="wrong_channels",
        )
    x = np.empty((len(files), C, H, W), dtype=np.uint8)
    errors: list[dict[str, Any]] = []
    for i, (filename, data) in enumerate(files):
        name = _key_loc(filename or f"files[{i}]")

        def bad(code: str, msg: str, name: str = name) -> None:
            errors.append({"loc": ["body", "files", name], "msg": f"{name!r}: {msg}", "type": code})

        try:
            img = open_image(data)
            w, h = img.size
            mode = img.mode
        except Exception as exc:  # Pillow raises many types for bad files
            bad("corrupt_image", f"cannot be decoded as PNG or JPEG: {_short(str(exc))}")
            continue
        if w * h > settings.max_image_pixels:
            bad(
                "image_too_large",
                f"{w}x{h} pixels, more than the limit of {settings.max_image_pixels} "
                "(REGULA_MAX_IMAGE_PIXELS).",
            )
        elif size is None and (h, w) != (H, W):
            bad(
                "wrong_image_size",
                f"{h}x{w} pixels (H x W) but the model takes {H}x{W} images; resize it, or "
                f"send image_size={H},{W} to resize it as the dataset upload does.",
            )
        elif channels is None and image_channels(mode) != C:
            bad(
                "wrong_channels",
                f"a {mode} image ({image_channels(mode)} channel(s)) but the model takes {C}; "
                f"send color_mode={'grayscale' if C == 1 else 'rgb'} to convert it.",
            )
        else:
            try:
                x[i] = to_pixels(img, (H, W), C)
            except Exception as exc:  # truncated or corrupt pixel data
                bad("corrupt_image", f"cannot be decoded as PNG or JPEG: {_short(str(exc))}")
        if len(errors) > MAX_ERRORS:
            break
    if errors:
        raise InvalidInputs(errors, summary_loc=["body", "files"])
    return x


def predict_files(
    item: Loaded, files: list[tuple[str, bytes]], fields: dict[str, str]
) -> dict[str, Any]:
    """Predictions for image files (``decode_files``), as ``predict`` answers (blocking)."""
    return predict_input(item, "files", decode_files(item, files, fields))


def to_onnx(item: Loaded) -> bytes:
    """The pruned ONNX graph of a loaded model (``engine.onnx_export``); 422 if it cannot be."""
    from engine.onnx_export import to_onnx as export

    if item.input_shape is not None:
        raise InvalidInput(
            "ONNX export covers table models; this one takes images (a CNN): download it as "
            "format=npz (engine.load) instead.",
            loc=["query", "format"],
            code="onnx_unsupported",
        )
    try:
        return export(item.trained, pruned=True, name=f"regula-{item.id}")
    except (ValueError, NotImplementedError) as exc:
        raise InvalidInput(
            f"This model cannot be exported to ONNX: {_short(str(exc))}",
            loc=["query", "format"],
            code="onnx_unsupported",
        ) from exc


def sparsity(item: Loaded, tolerance: float) -> dict[str, Any]:
    """The engine's sparsity statistics of a loaded model."""
    return engine.sparsity(item.trained, tolerance=tolerance)


# The weights endpoint's size limit (values in one response).
MAX_WEIGHT_VALUES = 250_000


def layer_weights(item: Loaded, layer: int) -> dict[str, Any]:
    """One dense layer's ``W (D, M)``, with the encoded feature names of its rows (first layer)."""
    dense = item.trained.network.dense_layers
    if not 0 <= layer < len(dense):
        raise InvalidInput(
            f"layer must be between 0 and {len(dense) - 1}: the model has {len(dense)} dense "
            "layers.",
            loc=["query", "layer"],
            code="unknown_layer",
        )
    W = dense[layer].params["W"]
    if W.size > MAX_WEIGHT_VALUES:
        raise InvalidInput(
            f"layer {layer} has {W.size:,} weights ({W.shape[0]} x {W.shape[1]}), more than the "
            f"{MAX_WEIGHT_VALUES:,} one response carries; see /sparsity for its statistics.",
            loc=["query", "layer"],
            code="layer_too_large",
        )
    name = getattr(dense[layer], "name", None) or f"dense{layer}"
    return {
        "layer": name,
        "shape": [int(W.shape[0]), int(W.shape[1])],
        "values": np.ascontiguousarray(W, dtype=np.float64),
        "row_names": _row_names(item) if layer == 0 else None,
    }


def _row_names(item: Loaded) -> list[str] | None:
    # An image model's first Dense reads the flattened conv output, not named features.
    pre = item.trained.preprocessor
    return None if isinstance(pre, ImagePreprocessor) else list(pre.encoded_names)


__all__ = [
    "Loaded",
    "ModelCache",
    "batch_size",
    "cache",
    "cached",
    "check_not_deleted",
    "cost",
    "decode_files",
    "evict",
    "layer_weights",
    "load",
    "loaded",
    "max_servable_bytes",
    "model_nbytes",
    "predict",
    "predict_files",
    "predict_input",
    "required_features",
    "sparsity",
    "to_onnx",
]


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


async def run(
    item: Loaded,
    *,
    rows: list[dict[str, Any]] | None,
    instances: list[Any] | None,
    body_bytes: int,
) -> dict[str, Any]:
    """:func:`predict` on the event loop when the batch is cheap and came in a small body, else in
    the thread pool (the one rule of every predict route); then the deletion check."""
    n = batch_size(rows, instances)
    if body_bytes <= INLINE_PARSE_BYTES and cost(item, n) < INLINE_COST:
        result = predict(item, rows=rows, instances=instances)
    else:
        result = await run_in_threadpool(predict, item, rows=rows, instances=instances)
    check_not_deleted(item)
    return result
