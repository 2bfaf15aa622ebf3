"""Loaded models: a cache bounded in bytes, and reading a model from the database into it.

The cache holds each model's real arrays (weights and the buffers the network keeps), evicts the
least recently used ones past ``REGULA_MODEL_CACHE_MB``, and loads a model once however many
requests wait for it. A cache hit needs no database: each entry remembers its owner, so the owner
check is a string comparison. A model deleted while its load was in flight is never cached nor
answered from (a tombstone is checked after the load and again before the answer).

Predictions come from the pruned copy of the model (``engine.prune.prune``): a feature whose
first-layer weights are all zero is not read, so a row may leave it out, and its value (an unseen
category included) is ignored. The trained model stays alongside for sparsity, weights and export.
Image models (a CNN on an image dataset, ``engine.augment.ImagePreprocessor``) are never pruned.
"""

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

import engine
from app.core.config import settings
from app.core.ownership import owned
from app.models.orm import Model, weights_checksum
from app.models.service import MAX_ID_LENGTH, ModelCorrupt, corrupt, not_found
from engine.augment import ImagePreprocessor
from engine.conv import Conv2D
from engine.layers import Dense
from engine.pooling import AvgPool2D, Flatten, MaxPool2D
from engine.preprocess import Preprocessor
from engine.prune import prune

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
            return self._hit(model_id)

    def _hit(self, model_id: str) -> Loaded | None:
        # Called with the lock held: the cached model, counted and made the most recent.
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
            item = self._hit(model_id)
            if item is not None:
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


__all__ = [
    "Loaded",
    "ModelCache",
    "cache",
    "cached",
    "check_not_deleted",
    "evict",
    "get",
    "load",
    "loaded",
    "max_servable_bytes",
    "model_nbytes",
    "required_features",
]
