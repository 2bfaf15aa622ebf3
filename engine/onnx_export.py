"""Export a trained model to ONNX, preprocessing and label decoding included.

The graph is written node by node with :mod:`onnx.helper` straight from the weights of the pruned
model (:func:`engine.prune.prune`), so it reads only the features a prediction needs. (The module is
``onnx_export``, not ``onnx``, so that no script run from inside ``engine/`` shadows the ``onnx``
package.)

Graph, for raw features ``x_j`` and the network of :mod:`engine.network`::

    inputs   one per required feature, named after it, shape [N, 1]:
             numeric -> tensor(float) (tensor(double) for a float64 model), NaN = missing;
             categorical -> tensor(string).
    numeric  R = Concat(Cast<double>(x_j)); R = Where(IsNaN(R), fill, R); Zn = (R - center) / scale,
             in float64 as engine.preprocess does, then Cast to the model's dtype
    strings  ai.onnx.ml OneHotEncoder(cats_strings = training categories, zeros = 1) -> [N, K]
    Z        Concat(Zn, one-hots) -> [N, F]; the rows of W_1 are permuted to this column order
    network  Dense -> MatMul + Add; relu, sigmoid, tanh, leaky_relu (LeakyRelu), prelu (PRelu with
             the per-unit slopes), linear -> nothing; Dropout: inverted -> nothing (identity at
             predict), standard -> Mul by keep = 1 - rate (its predict-time scaling); DropConnect
             Dense -> plain MatMul (inverted scaling leaves W unchanged at predict)
    outputs  classification: ``label`` [N] (the model's classes, through a constant Gather:
             string, int64, double or bool), plus
               softmax_cross_entropy -> ``probabilities`` [N, C] = Softmax(scores),
                 label = classes[ArgMax(probabilities)];
               binary_cross_entropy -> ``probabilities`` [N, 2] = [1 - p, p], p = Sigmoid(score),
                 label = classes[p >= 0.5] (the two columns ``Model.predict_proba`` returns);
               hinge losses -> ``scores`` [N, C] (not probabilities), label = classes[ArgMax];
             regression: ``variable`` [N, 1], in the target's units.

Deviations from ``Model.predict``, which can raise where a graph cannot: a category not seen in
training encodes as all zeros, like a missing value (``unknown_category`` in the engine); ONNX
string tensors have no missing value, so a client sends ``""`` for one (``""`` is a category like
any other if training saw it, exactly as in the engine); ``+-inf`` passes through (``non_finite``
in the engine). Probabilities and values are computed in the model's dtype.

Opsets: ai.onnx 17, ai.onnx.ml 3, IR version 8 (ONNX Runtime >= 1.11).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.labels import classes_array
from engine.layers import Dense, Dropout, LeakyReLU, Linear, PReLU, ReLU, Sigmoid, Tanh
from engine.preprocess import CATEGORICAL, NUMERIC, Preprocessor
from engine.prune import prune as prune_model

if TYPE_CHECKING:
    from engine.model import Model

__all__ = ["IR_VERSION", "ML_OPSET", "OPSET", "OUTPUT_NAMES", "to_onnx"]

OPSET = 17
ML_OPSET = 3
IR_VERSION = 8
# Output names a feature may not take (an ONNX graph has one namespace for all values).
OUTPUT_NAMES = ("label", "probabilities", "scores", "variable")
_PREFIX = "regula/"  # internal value names: no clash with feature names in practice


class _Graph:
    """Collects nodes and initializers; ``name(stem)`` gives unique internal value names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{_PREFIX}{stem}_{self._count}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name=name))
        return name

    def op(
        self, op_type: str, inputs: list[str], stem: str, *, out: str | None = None, **attrs: Any
    ) -> str:
        output = out or self.name(stem)
        domain = "ai.onnx.ml" if op_type == "OneHotEncoder" else ""
        self.nodes.append(
            helper.make_node(
                op_type, inputs, [output], name=self.name(op_type), domain=domain, **attrs
            )
        )
        return output


def _elem_type(dtype: np.dtype) -> int:
    return TensorProto.DOUBLE if np.dtype(dtype) == np.float64 else TensorProto.FLOAT


def _classes_tensor(classes: list[Any]) -> tuple[onnx.TensorProto, int]:
    """The class labels as a constant tensor (name set by the caller) and its element type."""
    arr = classes_array(classes)
    if arr.dtype == object:
        values = [str(c).encode("utf-8") for c in arr.tolist()]
        tensor = helper.make_tensor(
            "classes",
            TensorProto.STRING,
            [len(values)],
            values,  # type: ignore[arg-type]  # onnx's make_tensor hint omits STRING's bytes items
        )
        return tensor, (TensorProto.STRING)
    if arr.dtype.kind == "b":
        return numpy_helper.from_array(arr.astype(np.bool_)), TensorProto.BOOL
    if arr.dtype.kind in "iu":
        return numpy_helper.from_array(arr.astype(np.int64)), TensorProto.INT64
    return numpy_helper.from_array(arr.astype(np.float64)), TensorProto.DOUBLE


def _table_preprocessor(model: Model) -> Preprocessor:
    """The column encoding of a table model; an image model has no ONNX encoding here."""
    pre = model.preprocessor
    if not isinstance(pre, Preprocessor):
        raise NotImplementedError("No ONNX export for image models (tables only).")
    return pre


def _encode_inputs(g: _Graph, model: Model) -> tuple[list[onnx.ValueInfoProto], str, np.ndarray]:
    """Graph inputs and the encoded matrix: ``(inputs, Z, perm)`` where column ``i`` of ``Z`` is
    column ``perm[i]`` of the engine's encoded matrix."""
    pre = _table_preprocessor(model)
    dtype = model.network.dtype
    elem = _elem_type(dtype)
    inputs, numeric, cats = [], [], []
    for j, (name, kind) in enumerate(zip(pre.feature_names, pre.kinds, strict=True)):
        if name in OUTPUT_NAMES or name.startswith(_PREFIX):
            raise ValueError(f"Feature {name!r} clashes with a name of the ONNX graph.")
        if kind == NUMERIC:
            inputs.append(helper.make_tensor_value_info(name, elem, ["N", 1]))
            numeric.append(j)
        elif kind == CATEGORICAL:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, ["N", 1]))
            cats.append(j)
        else:
            raise NotImplementedError(f"No ONNX encoding for feature kind {kind!r}.")

    parts, perm = [], []
    if numeric:
        idx = np.array(numeric)
        raw = [g.op("Cast", [pre.feature_names[j]], "raw", to=TensorProto.DOUBLE) for j in numeric]
        R = raw[0] if len(raw) == 1 else g.op("Concat", raw, "R", axis=1)
        R = g.op("Where", [g.op("IsNaN", [R], "nan"), g.const("fill", pre.fill[idx]), R], "R")
        Zn = g.op("Sub", [R, g.const("center", pre.center[idx])], "Zn")
        Zn = g.op("Div", [Zn, g.const("scale", pre.scale[idx])], "Zn")
        parts.append(g.op("Cast", [Zn], "Zn", to=elem))
        perm += [pre.groups[j][0] for j in numeric]
    for j in cats:
        categories = pre.categories[j]
        if not categories:
            continue  # no encoded column: the input is accepted and unused
        hot = g.op("OneHotEncoder", [pre.feature_names[j]], "hot", cats_strings=categories, zeros=1)
        hot = g.op("Reshape", [hot, g.const("shape", np.array([-1, len(categories)]))], "hot")
        if elem != TensorProto.FLOAT:
            hot = g.op("Cast", [hot], "hot", to=elem)
        parts.append(hot)
        perm += list(range(*pre.groups[j]))
    Z = parts[0] if len(parts) == 1 else g.op("Concat", parts, "Z", axis=1)
    return inputs, Z, np.array(perm, dtype=np.intp)


def _network(g: _Graph, model: Model, Z: str, perm: np.ndarray) -> str:
    """Nodes of the predict-time forward pass; returns the raw scores ``(N, K)``."""
    dtype = model.network.dtype
    out = Z
    first = True
    for layer in model.network.layers:
        if isinstance(layer, Dense):
            W = np.asarray(layer.params["W"], dtype=dtype)
            if first:
                W, first = W[perm], False
            out = g.op("MatMul", [out, g.const("W", W)], "h")
            out = g.op("Add", [out, g.const("b", np.asarray(layer.params["b"], dtype))], "h")
        elif isinstance(layer, ReLU):
            out = g.op("Relu", [out], "a")
        elif isinstance(layer, Sigmoid):
            out = g.op("Sigmoid", [out], "a")
        elif isinstance(layer, Tanh):
            out = g.op("Tanh", [out], "a")
        elif isinstance(layer, LeakyReLU):
            out = g.op("LeakyRelu", [out], "a", alpha=float(layer.slope))
        elif isinstance(layer, PReLU):
            alpha = np.asarray(layer.params["alpha"], dtype=dtype)
            out = g.op("PRelu", [out, g.const("alpha", alpha)], "a")
        elif isinstance(layer, Linear) or (
            isinstance(layer, Dropout) and layer.identity_at_predict
        ):
            continue
        elif isinstance(layer, Dropout) and layer.mode == "standard":
            keep = np.asarray(1.0 - layer.rate, dtype=dtype)
            out = g.op("Mul", [out, g.const("keep", keep)], "a")
        else:
            raise NotImplementedError(f"No ONNX export for layer {type(layer).__name__}.")
    return out


def _outputs(g: _Graph, model: Model, scores: str) -> list[onnx.ValueInfoProto]:
    elem = _elem_type(model.network.dtype)
    loss = model.spec["loss"]
    if model.task == "regression":
        g.op("Identity", [scores], "variable", out="variable")
        return [helper.make_tensor_value_info("variable", elem, ["N", 1])]

    classes_list = model.classes
    assert classes_list is not None  # a classifier
    n_classes = len(classes_list)
    if loss == "binary_cross_entropy":
        p = g.op("Sigmoid", [scores], "p")
        one = g.const("one", np.ones((), dtype=model.network.dtype))
        g.op("Concat", [g.op("Sub", [one, p], "q"), p], "proba", out="probabilities", axis=1)
        half = g.const("half", np.asarray(0.5, dtype=model.network.dtype))
        idx = g.op("Cast", [g.op("GreaterOrEqual", [p, half], "pos")], "idx", to=TensorProto.INT64)
        idx = g.op("Reshape", [idx, g.const("shape", np.array([-1]))], "idx")
        extra = "probabilities"
    else:
        extra = "probabilities" if loss == "softmax_cross_entropy" else "scores"
        if extra == "probabilities":
            g.op("Softmax", [scores], "proba", out="probabilities", axis=1)
        else:
            g.op("Identity", [scores], "scores", out="scores")
        idx = g.op("ArgMax", [extra], "idx", axis=1, keepdims=0)
    classes, label_type = _classes_tensor(classes_list)
    classes.name = g.name("classes")
    g.initializers.append(classes)
    g.op("Gather", [classes.name, idx], "label", out="label", axis=0)
    return [
        helper.make_tensor_value_info("label", label_type, ["N"]),
        helper.make_tensor_value_info(extra, elem, ["N", n_classes]),
    ]


def to_onnx(model: Model, *, pruned: bool = True, name: str = "regula") -> bytes:
    """Serialize ``model`` as an ONNX model (see the module docstring for the graph).

    Parameters
    ----------
    model : Model
        A fitted model.
    pruned : bool, default True
        Export :func:`engine.prune.prune` of the model: one input per required feature only, and
        no dead hidden units. ``False`` keeps every feature as an input.
    name : str
        The graph's name.

    Returns
    -------
    bytes
        A serialized ``onnx.ModelProto`` that passes ``onnx.checker.check_model(full_check=True)``.
        Its ``metadata_props`` hold ``regula.task``, ``regula.loss``, ``regula.classes`` and
        ``regula.features`` (the inputs, in order) as JSON.

    Raises
    ------
    ValueError
        A feature named like a graph output (``label``, ``probabilities``, ``scores``,
        ``variable``).
    NotImplementedError
        An image model, or a layer with no ONNX export.
    """
    _table_preprocessor(model)  # before prune, which turns image models away in its own words
    if pruned:
        model = prune_model(model)
    g = _Graph()
    inputs, Z, perm = _encode_inputs(g, model)
    scores = _network(g, model, Z, perm)
    outputs = _outputs(g, model, scores)
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.initializers)
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        ir_version=IR_VERSION,
        producer_name="regula",
        doc_string=f"Regula {model.task} model ({model.spec['loss']}).",
    )
    helper.set_model_props(
        proto,
        {
            "regula.task": model.task,
            "regula.loss": model.spec["loss"],
            "regula.classes": json.dumps(model.classes),
            "regula.features": json.dumps(model.feature_names),
        },
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()
