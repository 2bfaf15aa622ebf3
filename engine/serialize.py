"""Models to and from bytes: one ``.npz`` archive (``np.savez``), never pickle.

Archive members:

- ``meta``: the JSON metadata blob as a ``uint8`` array: ``format``, ``version``, the normalized
  ``spec``, ``task``, ``classes``, ``n_inputs``, ``n_outputs``, ``history``, ``metrics``,
  ``stopped``, the preprocessing metadata (feature names, kinds, categories) and the ``weights``
  names.
- ``w/<name>``: every array of ``Network.get_weights()``, in its own dtype (so predictions are
  bit-identical): parameters and the batch-norm running statistics
  (``batch_norm<k>.running_mean`` / ``running_var``).
- ``pre/<name>``: the preprocessing arrays: a table's float64 ``center``, ``scale``, ``fill``;
  an image model's featurewise ``mean`` / ``std`` (its meta has ``kind: "images"``, the input
  shape and pixel scale; the model meta has ``input_shape``).

``load`` opens the archive with ``np.load(allow_pickle=False)``, rebuilds the network from the saved
spec and sizes, then sets the weights. Anything that is not such an archive raises
:class:`~engine.errors.ModelFormatError` (a ``ValueError``).
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ModelFormatError

if TYPE_CHECKING:
    from engine.model import Model

__all__ = ["FORMAT", "VERSION", "load", "model_to_bytes"]

FORMAT = "regula-model"
VERSION = 1
_W = "w/"
_PRE = "pre/"


def model_to_bytes(model: Model) -> bytes:
    """Serialize a :class:`~engine.model.Model` to npz bytes (no pickled objects)."""
    weights = model.network.get_weights()
    pre_meta, pre_arrays = model.preprocessor.to_state()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "spec": model.spec,
        "task": model.task,
        "classes": model.classes,
        "n_inputs": model.n_inputs,
        "n_outputs": model.n_outputs,
        "history": model.history,
        "metrics": model.metrics,
        "stopped": model.stopped,
        "preprocess": pre_meta,
        "weights": list(weights),
        "input_shape": None if model.input_shape is None else list(model.input_shape),
    }
    # NaN in history is kept (Python's json writes NaN): the blob is only read back by load.
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    arrays: dict[str, np.ndarray] = {"meta": blob}
    arrays.update({_W + name: np.asarray(value) for name, value in weights.items()})
    arrays.update({_PRE + name: np.asarray(value) for name, value in pre_arrays.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types allow_pickle only
    return buffer.getvalue()


def _read(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"load expects bytes, got {type(data).__name__}.")
    try:
        with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        # ValueError also covers bad JSON and numpy's refusal to unpickle object arrays.
        raise ModelFormatError(f"Not a Regula model archive: {exc}.") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFormatError("Not a Regula model archive: its metadata has no Regula format tag.")
    if meta.get("version") != VERSION:
        raise ModelFormatError(
            f"Model format version {meta.get('version')!r} is not supported (expected {VERSION}).",
            "unsupported_version",
        )
    return meta, arrays


def load(data: bytes) -> Model:
    """Rebuild a :class:`~engine.model.Model` from :func:`model_to_bytes` output.

    Raises
    ------
    ModelFormatError
        Corrupt or truncated bytes, a non-Regula archive, or an unsupported format version.
    """
    from engine.augment import ImagePreprocessor
    from engine.model import Model
    from engine.network import Network
    from engine.preprocess import Preprocessor

    meta, arrays = _read(data)
    try:
        weights = {name: arrays[_W + name] for name in meta["weights"]}
        pre_arrays = {k[len(_PRE) :]: v for k, v in arrays.items() if k.startswith(_PRE)}
        images = meta["preprocess"].get("kind") == ImagePreprocessor.kind
        pre_class = ImagePreprocessor if images else Preprocessor
        preprocessor = pre_class.from_state(meta["preprocess"], pre_arrays)
        spec = meta["spec"]
        shape = meta.get("input_shape")
        # The seed only feeds the initial weights, which set_weights overwrites.
        network = Network.build(
            spec,
            meta["n_inputs"],
            meta["n_outputs"],
            rng=np.random.default_rng(0),
            input_shape=None if shape is None else tuple(shape),
        )
        network.set_weights(weights)
        return Model(
            spec=spec,
            network=network,
            preprocessor=preprocessor,
            classes=meta["classes"],
            history=meta["history"],
            metrics=meta["metrics"],
            stopped=meta["stopped"],
            n_inputs=meta["n_inputs"],
            n_outputs=meta["n_outputs"],
        )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ModelFormatError(
            f"Regula model archive is incomplete or inconsistent: {exc!r}."
        ) from exc
