"""Adapters from the serving protocols to the one prediction service (``app.models.prediction``).

Each protocol's body becomes the ``rows`` (``{feature: value}`` objects) or ``instances`` (value
lists in ``feature_names`` order) that ``prediction.predict`` takes, so every value check, label
and probability is the one ``/models/{id}/predict`` gives; the answer is then written back in the
protocol's shape. What is checked here is only the protocol's own structure: tensor names, shapes,
datatypes and byte sizes (OIP v2), the JSON keys and CSV text of MLflow's formats.
"""

import csv
import io
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.auth import sessions_for
from app.core.bodies import INLINE_PARSE_BYTES
from app.core.errors import InvalidInput, NotFound, RegulaError, UnsupportedMediaType
from app.models import loading, prediction
from app.models.orm import Model
from app.models.rows import check_key_density
from app.models.service import MAX_ID_LENGTH, not_found
from app.serving.schemas import DTYPES, NUMERIC_DTYPES, InferRequest, RequestInput

log = logging.getLogger("regula")

SERVER_NAME = "regula"
SERVER_VERSION = "0.1.0"
PLATFORM = "regula"
MODEL_VERSION = "1"
HEADER_LENGTH = "inference-header-content-length"
# Quoted user text (tensor or column names) is cut to this many characters.
MAX_QUOTED = 40


# --- shared -------------------------------------------------------------------------------------


def table_model(item: loading.Loaded) -> loading.Loaded:
    """``item``, unless it is an image model: the protocols here describe one tensor per table
    feature, so an image model is refused (400) and pointed at its own predict routes."""
    if item.input_shape is not None:
        raise InvalidInput(
            f"Model {item.id} takes images, which this protocol does not serve here; use "
            f"POST /models/{item.id}/predict (instances) or /models/{item.id}/predict/images.",
            loc=["path", "model_id"],
            code="images_not_supported",
        )
    return item


async def get_loaded(
    request: Request, model_id: str, owner: str | None, *, version: str | None = None
) -> loading.Loaded:
    """The caller's model: from the cache (no database), else loaded in the thread pool.

    With ``version`` (OIP's ``/versions/{version}`` routes), NotFound unless it is one of the
    model's ``versions`` (checked after the model, so an unknown model is named as such).
    """
    item = await loading.get(sessions_for(request), model_id, owner)
    if version is not None and version != MODEL_VERSION:
        raise NotFound(
            f"Model {item.id!r} has no version {_quote(version)}; its versions are "
            f"[{MODEL_VERSION!r}].",
            loc=["path", "version"],
        )
    return table_model(item)


def error_status(exc: RegulaError) -> int:
    """The protocols answer 400 for any bad request; 401, 404, 413 and 415 keep their meaning."""
    if exc.status_code in (401, 404, 413, 415):
        return exc.status_code
    return 500 if exc.status_code >= 500 else 400


def error_message(exc: RegulaError) -> str:
    """Our sentence for ``exc``; a list of bad values is its first one and how many follow."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and len(errors) > 1:
        more = len(errors) - 1
        return f"{exc.msg} ({more} more problem{'s' if more > 1 else ''} in this request.)"
    return exc.msg


def _quote(text: str) -> str:
    return repr(text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 3] + "...")


def _bad(msg: str, *loc: str | int, code: str = "invalid_request") -> InvalidInput:
    return InvalidInput(msg, loc=["body", *loc], code=code)


def _is_classifier(item: loading.Loaded) -> bool:
    return item.model.classes is not None


def load_any(*, session: Session, model_id: str) -> loading.Loaded:
    """A model by id whoever owns it (``regula serve-model``: the operator reads the database)."""
    if len(model_id) > MAX_ID_LENGTH:
        raise not_found(model_id)
    found = session.execute(select(Model.owner_id).where(Model.id == model_id)).first()
    session.rollback()
    if found is None:
        raise not_found(model_id)
    return table_model(loading.load(session=session, model_id=model_id, owner_id=found[0]))


# --- Open Inference Protocol v2 -----------------------------------------------------------------


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}


def _label_datatype(classes: list[Any]) -> str:
    kinds = {type(c) for c in classes}
    if kinds <= {str}:
        return "BYTES"
    if kinds <= {bool}:
        return "BOOL"
    if kinds <= {int}:
        return "INT64"
    return "FP64"


def _float_datatype(item: loading.Loaded) -> str:
    return "FP64" if item.model.network.dtype == np.float64 else "FP32"


def _outputs(item: loading.Loaded) -> list[dict[str, Any]]:
    classes = item.model.classes
    if classes is None:
        return [{"name": "predictions", "datatype": "FP64", "shape": [-1]}]
    outputs = [{"name": "label", "datatype": _label_datatype(classes), "shape": [-1]}]
    if item.model.has_proba:
        outputs.append(
            {
                "name": "probabilities",
                "datatype": _float_datatype(item),
                "shape": [-1, len(classes)],
            }
        )
    return outputs


def model_metadata(item: loading.Loaded) -> dict[str, Any]:
    """Name, platform, one [N, 1] input per feature a prediction reads, and the outputs."""
    inputs = [
        {
            "name": item.names[j],
            "datatype": "FP64" if item.numeric[j] else "BYTES",
            "shape": [-1, 1],
        }
        for j in item.positions
    ]
    parameters: dict[str, Any] = {
        "task": "classification" if _is_classifier(item) else "regression",
        "classes": item.model.classes,
        "features": list(item.names),
        "required_features": list(item.required),
        "matrix_input": all(item.numeric),
    }
    return {
        "name": item.id,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": _outputs(item),
        "parameters": parameters,
    }


@dataclass
class Decoded:
    """An infer request as predict's input, with what the answer needs."""

    request: InferRequest
    rows: list[dict[str, Any]] | None
    instances: list[list[Any]] | None


def _flatten(data: Any, where: Callable[[], str]) -> list[Any]:
    if not isinstance(data, list):
        raise _bad(f"{where()}: 'data' must be a list of values (flat or nested).", "data")
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _bytes_elements(chunk: memoryview, count: int, where: str) -> list[Any]:
    """BYTES in binary form: each element a 4-byte little-endian length, then its bytes."""
    out: list[Any] = []
    pos, end = 0, len(chunk)
    while pos < end:
        if pos + 4 > end:
            raise _bad(f"{where}: its binary data ends inside an element's length.", "inputs")
        (size,) = struct.unpack_from("<I", chunk, pos)
        pos += 4
        if pos + size > end:
            raise _bad(f"{where}: an element is longer than its binary data.", "inputs")
        out.append(bytes(chunk[pos : pos + size]))
        pos += size
    if len(out) != count:
        raise _bad(f"{where}: its binary data holds {len(out)} elements, its shape {count}.")
    return out


DATATYPES = frozenset(DTYPES) | {"BYTES"}


def _where(inp: RequestInput, k: int) -> str:
    return f"input {_quote(inp.name)} (inputs[{k}])"


def _values(inp: RequestInput, binary: memoryview, offset: int, k: int) -> tuple[list[Any], int]:
    """The tensor's elements as Python values (row-major), and the offset after its bytes."""
    datatype = inp.datatype
    if datatype not in DATATYPES:
        raise _bad(f"{_where(inp, k)}: unknown datatype {_quote(datatype)}.", "inputs")
    count = 1
    for d in inp.shape:
        if d < 0:
            raise _bad(f"{_where(inp, k)}: shape {inp.shape} has a negative dimension.", "inputs")
        count *= d
    params = inp.parameters
    size = None if params is None else params.get("binary_data_size")
    if size is None:
        data = inp.data
        if type(data) is not list or any(type(v) is list for v in data):
            data = _flatten(data, lambda: _where(inp, k))
        if len(data) != count:
            raise _bad(
                f"{_where(inp, k)}: 'data' holds {len(data)} values, shape {inp.shape} needs "
                f"{count}.",
                "inputs",
            )
        return data, offset
    if type(size) is not int or size < 0 or offset + size > len(binary):
        raise _bad(
            f"{_where(inp, k)}: binary_data_size {size!r} runs past the end of the body.", "inputs"
        )
    chunk = binary[offset : offset + size]
    if datatype == "BYTES":
        return _bytes_elements(chunk, count, _where(inp, k)), offset + size
    dtype = np.dtype(DTYPES[datatype])
    if size != count * dtype.itemsize:
        raise _bad(
            f"{_where(inp, k)}: {size} bytes of binary data, but shape {inp.shape} of "
            f"{datatype} is {count * dtype.itemsize}.",
            "inputs",
        )
    return np.frombuffer(chunk, dtype=dtype).tolist(), offset + size


def _text(values: list[Any], where: str) -> list[Any]:
    out = []
    for value in values:
        if isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError:
                raise _bad(f"{where}: a BYTES element is not UTF-8 text.", "inputs") from None
        out.append(value)
    return out


def _input(name: str) -> str:
    return f"input {_quote(name)}"


def _feature_tensors(
    item: loading.Loaded, request: InferRequest, values: list[list[Any]]
) -> list[dict[str, Any]]:
    """One [N] or [N, 1] tensor per feature -> rows (the features a prediction reads)."""
    seen: dict[str, int] = {}
    n: int | None = None
    for k, inp in enumerate(request.inputs):
        j = item.index.get(inp.name)
        if j is None:
            raise _bad(
                f"{_input(inp.name)} is not a feature of this model; send one tensor per "
                "feature of GET /v2/models/{id} (or one 'input' [N, features] tensor).",
                "inputs",
                k,
            )
        if inp.name in seen:
            raise _bad(f"{_input(inp.name)} is sent twice.", "inputs", k)
        seen[inp.name] = k
        if len(inp.shape) not in (1, 2) or (len(inp.shape) == 2 and inp.shape[1] != 1):
            raise _bad(f"{_input(inp.name)}: shape {inp.shape} must be [N] or [N, 1].", "inputs", k)
        if n is None:
            n = inp.shape[0]
        elif inp.shape[0] != n:
            raise _bad(
                f"{_input(inp.name)} has {inp.shape[0]} rows but the first input has {n}.",
                "inputs",
                k,
            )
        if item.numeric[j] and inp.datatype not in NUMERIC_DTYPES:
            raise _bad(
                f"{_input(inp.name)}: feature {_quote(inp.name)} is numeric; its datatype must be "
                f"FP32, FP64 or an integer type, got {_quote(inp.datatype)}.",
                "inputs",
                k,
            )
        if not item.numeric[j] and inp.datatype != "BYTES":
            raise _bad(
                f"{_input(inp.name)}: feature {_quote(inp.name)} is categorical; its datatype "
                f"must be BYTES, got {_quote(inp.datatype)}.",
                "inputs",
                k,
            )
    missing = [name for name in item.required if name not in seen]
    if missing:
        raise _bad(
            f"The model needs the input {_quote(missing[0])}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + " (one [N, 1] tensor per input of GET /v2/models/{id}).",
            "inputs",
        )
    names = list(item.required)
    columns = []
    for name in names:
        k = seen[name]
        column = values[k]
        columns.append(column if item.numeric[item.index[name]] else _text(column, name))
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _matrix_tensor(item: loading.Loaded, inp: RequestInput, values: list[Any]) -> list[list[Any]]:
    """One 'input' tensor [N, features] in feature_names order -> instances."""
    width = len(item.names)
    if len(inp.shape) != 2 or inp.shape[1] != width:
        raise _bad(
            f"input 'input': shape {inp.shape} must be [N, {width}] (the model's "
            "features in feature_names order).",
            "inputs",
            0,
        )
    if inp.datatype not in NUMERIC_DTYPES:
        raise _bad(
            f"input 'input': datatype must be FP32 or FP64, got {_quote(inp.datatype)}.",
            "inputs",
            0,
        )
    return [values[i : i + width] for i in range(0, len(values), width)]


def decode_infer(item: loading.Loaded, raw: bytes, header_length: str | None) -> Decoded:
    """An infer body (JSON, or a JSON header and binary tensors) as rows or instances."""
    if header_length is None:
        header, binary = raw, memoryview(b"")
    else:
        if not header_length.isdigit() or int(header_length) > len(raw):
            raise _bad(
                "Inference-Header-Content-Length must be the byte length of the JSON "
                "header, at most the body's length."
            )
        cut = int(header_length)
        header, binary = raw[:cut], memoryview(raw)[cut:]
    try:
        request = InferRequest.model_validate_json(header)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])[:80] or "body"
        raise _bad(f"{where}: {first['msg'][:200]}.") from None
    values, offset = [], 0
    for k, inp in enumerate(request.inputs):
        column, offset = _values(inp, binary, offset, k)
        values.append(column)
    if offset != len(binary):
        raise _bad(
            f"The body has {len(binary) - offset} bytes after the last tensor's binary data."
        )
    only = request.inputs[0]
    if len(request.inputs) == 1 and only.name == "input" and "input" not in item.index:
        if not all(item.numeric):
            raise _bad(
                "The one 'input' tensor is for all-numeric models; this one has "
                "categorical features: send one tensor per feature.",
                "inputs",
                0,
            )
        return Decoded(request, None, _matrix_tensor(item, only, values[0]))
    return Decoded(request, _feature_tensors(item, request, values), None)


def _encode_bytes(values: list[Any]) -> bytes:
    parts = []
    for value in values:
        data = value.encode() if isinstance(value, str) else str(value).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def encode_infer(
    item: loading.Loaded, decoded: Decoded, result: dict[str, Any]
) -> tuple[bytes, dict[str, str], str]:
    """``(body, headers, media type)`` of an infer answer, in JSON or with binary outputs."""
    request = decoded.request
    predictions = result["predictions"]
    n = len(predictions)
    arrays: dict[str, tuple[str, list[int], Any]] = {}
    classes = item.model.classes
    if classes is not None:
        datatype = _label_datatype(classes)
        labels = (
            predictions if datatype == "BYTES" else np.asarray(predictions, dtype=DTYPES[datatype])
        )
        arrays["label"] = (datatype, [n], labels)
        proba = result.get("probabilities")
        if proba is not None:
            # In the datatype the metadata declares: the network's own (the engine hands float64).
            datatype = _float_datatype(item)
            proba = np.asarray(proba, dtype=DTYPES[datatype])
            arrays["probabilities"] = (datatype, list(proba.shape), proba)
    else:
        arrays["predictions"] = ("FP64", [n], np.asarray(predictions, dtype=np.float64))
    wanted = request.outputs
    default_binary = bool((request.parameters or {}).get("binary_data_output", False))
    if wanted is None:
        chosen = [(name, default_binary) for name in arrays]
    else:
        chosen = []
        for out in wanted:
            if out.name not in arrays:
                raise _bad(
                    f"output {_quote(out.name)} is not an output of this model (outputs: "
                    f"{', '.join(arrays)}).",
                    "outputs",
                )
            chosen.append(
                (out.name, bool((out.parameters or {}).get("binary_data", default_binary)))
            )
    outputs, buffers = [], []
    for name, binary in chosen:
        datatype, shape, values = arrays[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            data = (
                _encode_bytes(values)
                if datatype == "BYTES"
                else np.ascontiguousarray(values, dtype=DTYPES[datatype]).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(data)}
            buffers.append(data)
        else:
            entry["data"] = values if isinstance(values, list) else values.ravel()
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": item.id, "model_version": MODEL_VERSION}
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = outputs
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not buffers:
        return header, {}, "application/json"
    return (
        header + b"".join(buffers),
        {"Inference-Header-Content-Length": str(len(header))},
        "application/octet-stream",
    )


# --- MLflow scoring -----------------------------------------------------------------------------

MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def _media(content_type: str | None) -> str:
    return (content_type or "application/json").split(";", 1)[0].strip().lower()


def _table(value: Any, key: str) -> tuple[list[dict[str, Any]] | None, list[list[Any]] | None]:
    """``instances`` / ``inputs`` / ``dataframe_records``: row objects, value lists, or columns."""
    if isinstance(value, dict):  # columns {name: [values]} (or one row of scalars)
        if all(isinstance(v, list) for v in value.values()) and value:
            lengths = {len(v) for v in value.values()}
            if len(lengths) != 1:
                raise _bad(f"{key}: every column must have the same number of values.", key)
            names = list(value)
            return [
                dict(zip(names, row, strict=True)) for row in zip(*value.values(), strict=True)
            ], None
        return [value], None
    if not isinstance(value, list) or not value:
        raise _bad(f"{key} must be a non-empty list of rows.", key)
    if all(isinstance(r, dict) for r in value):
        return value, None
    if all(isinstance(r, list) for r in value) and key != "dataframe_records":
        return None, value
    raise _bad(
        f"{key} must be a list of row objects ({{feature: value}})"
        + ("" if key == "dataframe_records" else " or of value lists in feature order")
        + ".",
        key,
    )


def _split(value: Any) -> tuple[list[dict[str, Any]] | None, list[list[Any]] | None]:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise _bad(
            "dataframe_split must be an object with 'columns' and 'data' (a list of "
            "rows), as pandas' to_dict(orient='split') writes.",
            "dataframe_split",
        )
    data, columns = value["data"], value.get("columns")
    if not all(isinstance(r, list) for r in data):
        raise _bad("dataframe_split.data must be a list of value lists.", "dataframe_split")
    if columns is None:
        return None, data
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise _bad("dataframe_split.columns must be a list of column names.", "dataframe_split")
    for i, row in enumerate(data):
        if len(row) != len(columns):
            raise _bad(
                f"dataframe_split.data[{i}] has {len(row)} values for {len(columns)} columns.",
                "dataframe_split",
                "data",
                i,
            )
    return [dict(zip(columns, row, strict=True)) for row in data], None


def _csv_rows(item: loading.Loaded, raw: bytes) -> list[dict[str, Any]]:
    """A CSV with a header: numeric features' cells read as numbers ("" is a missing value)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _bad("The CSV body is not UTF-8 text.") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise _bad("The CSV body is empty; send a header line and at least one row.")
    numeric = [
        item.index.get(name) is not None and item.numeric[item.index[name]] for name in header
    ]
    rows = []
    for i, cells in enumerate(reader):
        if not cells:
            continue
        if len(cells) != len(header):
            raise _bad(f"CSV row {i + 1} has {len(cells)} cells for {len(header)} columns.")
        row: dict[str, Any] = {}
        for name, cell, number in zip(header, cells, numeric, strict=True):
            if number:
                if not cell.strip():
                    row[name] = None
                    continue
                try:
                    row[name] = float(cell)
                except ValueError:
                    row[name] = cell  # the engine names it: not a number
            else:
                row[name] = cell
        rows.append(row)
    return rows


def decode_invocations(
    item: loading.Loaded, raw: bytes, content_type: str | None
) -> tuple[list[dict[str, Any]] | None, list[list[Any]] | None]:
    """An MLflow scoring body (JSON in one of MLFLOW_FORMATS, or text/csv) as rows or instances."""
    media = _media(content_type)
    if media == "text/csv":
        return _csv_rows(item, raw), None
    if media != "application/json":
        raise UnsupportedMediaType(
            f"Content type {_quote(media)} is not supported: send application/json (with one of "
            f"{', '.join(MLFLOW_FORMATS)}) or text/csv.",
            loc=["header", "content-type"],
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _bad(f"The body must be a JSON object with one of {', '.join(MLFLOW_FORMATS)}.")
    keys = [k for k in MLFLOW_FORMATS if k in body]
    extra = [k for k in body if k not in MLFLOW_FORMATS and k != "params"]
    if len(keys) != 1 or extra:
        raise _bad(
            f"The body must hold exactly one of {', '.join(MLFLOW_FORMATS)}"
            + (f"; unknown key {_quote(extra[0])}" if extra else "")
            + "."
        )
    if body.get("params"):
        raise _bad("This model takes no params.", "params")
    key = keys[0]
    if key == "dataframe_split":
        return _split(body[key])
    return _table(body[key], key)


async def invocations(item: loading.Loaded, raw: bytes, content_type: str | None) -> dict[str, Any]:
    """``{"predictions": [...]}``: labels for classifiers, values for regression."""
    if len(raw) > INLINE_PARSE_BYTES:
        check_key_density(raw)
        rows, instances = await run_in_threadpool(decode_invocations, item, raw, content_type)
    else:
        rows, instances = decode_invocations(item, raw, content_type)
    result = await prediction.run(item, rows=rows, instances=instances, body_bytes=len(raw))
    return {"predictions": result["predictions"]}
