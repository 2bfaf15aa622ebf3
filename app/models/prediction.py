"""Prediction of a loaded model (``app.models.loading``): the answers of every predict route and
serving protocol, and a model's sparsity, weights and ONNX export.

:func:`predict` turns a request's batch into the engine's input (``app.models.rows`` for table
models, ``app.models.images`` for image models) and answers from
``engine.Model.predict_with_proba``: labels, and probabilities for classifiers with a likelihood
loss. The engine's ``InputError`` becomes a 422 at ``loc = ["body", key, row, feature]``; an
output that is not finite is a 422 naming its rows, and probabilities that are not a distribution
mean the stored model is corrupt.
:func:`run` decides between the event loop and the thread pool.
"""

import math
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool

import engine
from app.core.bodies import INLINE_PARSE_BYTES
from app.core.errors import MAX_ERRORS, InvalidInput, InvalidInputs
from app.models.images import decode_files, image_input
from app.models.loading import Loaded, check_not_deleted
from app.models.messages import short
from app.models.rows import SMALL, batch_size, checked_batch, engine_input
from app.models.service import corrupt
from engine.augment import ImagePreprocessor

# A batch whose forward pass takes fewer multiply-adds than this, sent in a body of at most
# INLINE_PARSE_BYTES, is predicted on the event loop (microseconds; a hop to the thread pool
# would cost more). Anything larger goes to the pool, so neither a big model nor a big body
# (its rows are checked key by key) holds the loop.
INLINE_COST = 1_000_000
# How far probabilities may stray from [0, 1] and from summing to 1 (float32 rounding).
PROBABILITY_TOLERANCE = 1e-3


def cost(item: Loaded, n_rows: int) -> int:
    """Multiply-adds of predicting ``n_rows`` rows: what decides between inline and a thread."""
    return n_rows * item.n_weights


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
    key, batch = checked_batch(rows, instances)
    if item.input_shape is not None:
        return predict_input(item, key, image_input(item, key, batch))
    return predict_input(item, key, engine_input(item, key, batch))


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
        raise InvalidInput(short(exc.msg), loc=loc, code=exc.code) from exc
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
            f"This model cannot be exported to ONNX: {short(str(exc))}",
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
    "cost",
    "layer_weights",
    "predict",
    "predict_files",
    "predict_input",
    "run",
    "sparsity",
    "to_onnx",
]
