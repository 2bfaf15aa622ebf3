"""Pruned serving copies of a trained model: only the inputs and hidden units that matter.

L1 and group-L1 leave exact zeros behind. A raw feature whose first-layer rows ``W_1[G_j, :]`` are
all zero contributes nothing to any prediction, and a hidden unit whose weights are zero on one side
is either constant or invisible:

- unit ``m`` of hidden layer ``k`` with all-zero *incoming* weights ``W_k[:, m]`` has the constant
  pre-activation ``b_k[m]``, so its output is the constant ``a_m = f(b_k[m])`` (``f`` = the
  activation and, in ``standard`` dropout mode, the predict-time scaling ``keep``). It is removed
  and its contribution folded into the next bias: ``b_{k+1} += a_m * W_{k+1}[m, :]``;
- unit ``m`` with all-zero *outgoing* weights ``W_{k+1}[m, :]`` is removed outright.

Removing units can create new such units (a unit whose only non-zero inputs were constant units),
so the forward pass (constant units, input layer first) runs before the backward pass (invisible
units, output layer first), which together reach the fixed point. A raw feature is then *required*
iff some weight of its block of the pruned ``W_1`` is non-zero: the rule of
:func:`engine.sparsity.weight_stats` applied to the pruned network, so it drops the features
``engine.sparsity`` reports as dropped plus those whose weights only reach removed units.

The pruned model predicts the same values as the original (the folded biases are summed in float64
and rounded once, so outputs agree to rounding, not bit for bit) from rows holding only the
required features; other columns are ignored or may be absent. Output units are never removed. A
layer that would lose every unit keeps one with zero outgoing weights, and a model that needs no
feature keeps its first (a network needs an input), so the result is always a valid model:
``prune(model).to_bytes()`` loads with :func:`engine.load`.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

from engine.layers import Dense, PReLU
from engine.model import Model
from engine.preprocess import Preprocessor
from engine.sparsity import features_read

if TYPE_CHECKING:
    from engine.layers import Layer
    from engine.network import Network

__all__ = ["prune", "required_features"]


def _blocks(network: Network) -> tuple[list[Dense], list[list[Layer]]]:
    """``(dense, between)``: the Dense layers in order and, for each Dense but the last, the layers
    after it up to the next Dense (activation, hidden dropout). Layers before the first Dense
    (input dropout) act elementwise on the input and keep no parameters: pruning leaves them be."""
    dense: list[Dense] = []
    between: list[list[Layer]] = []
    current: list[Layer] = []
    for layer in network.layers:
        if isinstance(layer, Dense):
            if dense:
                between.append(current)
            dense.append(layer)
            current = []
        elif dense:
            current.append(layer)
    return dense, between


def _constant_outputs(b: np.ndarray, layers: list[Layer]) -> np.ndarray:
    """Predict-time output ``(M,)`` of ``layers`` (activation, dropout) for the pre-activation
    ``b``: the value of every unit whose incoming weights are all zero. The layers' own
    ``predict`` is used, so the activation formula lives only in :mod:`engine.layers`."""
    out = b.reshape(1, -1).copy()  # ReLU may work in place
    for layer in layers:
        out = layer.predict(out)
    return np.asarray(out, dtype=np.float64).reshape(-1)


def _take(W: np.ndarray, rows: np.ndarray | slice, cols: np.ndarray | slice) -> np.ndarray:
    """``W[rows][:, cols]`` in one copy, or ``W`` itself when both select everything."""
    if isinstance(rows, slice) and isinstance(cols, slice):
        return W
    r = np.arange(W.shape[0]) if isinstance(rows, slice) else rows
    c = np.arange(W.shape[1]) if isinstance(cols, slice) else cols
    return W[np.ix_(r, c)]


def _prune_weights(
    dense: list[Dense], between: list[list[Layer]]
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], bool]:
    """``(Ws, bs, kept, changed)``: pruned weights and float64 biases, the kept unit indices of
    every hidden layer (see the module docstring), and whether anything was removed or folded.
    ``Ws[0]`` keeps every input row. A matrix nothing changes is the layer's own array (read,
    never written): a model without zeros costs no copy."""
    Ws = [d.params["W"] for d in dense]
    bs = [np.array(d.params["b"], dtype=np.float64) for d in dense]
    H = len(dense) - 1
    kept: list[np.ndarray] = [np.arange(W.shape[1]) for W in Ws[:H]]
    full = [True] * H  # kept[k] is still every unit of layer k
    changed = False

    def sel(k: int) -> np.ndarray | slice:
        return slice(None) if full[k] else kept[k]

    # Forward: constant units, folded into the next layer's bias.
    for k in range(H):
        rows = slice(None) if k == 0 else sel(k - 1)
        constant = ~_take(Ws[k], rows, sel(k)).any(axis=0)
        if not constant.any():
            continue
        changed = True
        values = _constant_outputs(bs[k], between[k])
        units = kept[k][constant]
        bs[k + 1] = bs[k + 1] + values[units] @ np.asarray(Ws[k + 1][units], dtype=np.float64)
        if constant.all():
            # Keep one unit so the layer exists; its value is folded, so it must not count twice.
            Ws[k + 1] = Ws[k + 1].copy()
            Ws[k + 1][units[0]] = 0.0
            kept[k] = units[:1]
        else:
            kept[k] = kept[k][~constant]
        full[k] = False
    # Backward: units nobody reads.
    for k in range(H - 1, -1, -1):
        cols = slice(None) if k == H - 1 else sel(k + 1)
        read = _take(Ws[k + 1], sel(k), cols).any(axis=1)
        if read.all():
            continue
        changed = True
        kept[k] = kept[k][read] if read.any() else kept[k][:1]
        full[k] = False
    out_W = [
        _take(W, slice(None) if k == 0 else sel(k - 1), slice(None) if k == H else sel(k))
        for k, W in enumerate(Ws)
    ]
    out_b = [b if k == H else b[kept[k]] for k, b in enumerate(bs)]
    return out_W, out_b, kept, changed


def _with_widths(spec: dict, widths: list[int]) -> dict:
    """A copy of ``spec`` whose hidden Dense layers have ``widths`` units, whether the spec says
    ``model.hidden_layers`` or lists ``model.layers`` (``dense`` entries, in order)."""
    spec = copy.deepcopy(spec)
    section = spec["model"]
    if section.get("layers") is not None:
        dense = [entry for entry in section["layers"] if entry.get("type") == "dense"]
        for entry, units in zip(dense, widths, strict=True):
            entry["units"] = units
    else:
        section["hidden_layers"] = widths
    return spec


def prune(model: Model) -> Model:
    """A copy of ``model`` without the inputs and hidden units that cannot change a prediction;
    ``model`` itself when there are none (no copy is made, so check ``is``).

    Parameters
    ----------
    model : Model
        A fitted model (any loss, activation and dropout mode).

    Returns
    -------
    Model
        ``feature_names`` = :func:`required_features`; the spec's hidden widths (``hidden_layers``
        or the ``dense`` entries of ``model.layers``) are the pruned ones; ``predict`` /
        ``predict_proba`` equal the original's up to rounding (module docstring) on any rows,
        whatever the values of the columns it no longer reads. Classes, history, metrics and
        ``stopped`` are the original's.

    Raises
    ------
    ValueError
        ``model`` is an image model: its input is one image column, not features to drop.
    """
    network = model.network
    pre = model.preprocessor
    if not isinstance(pre, Preprocessor):
        raise ValueError(
            "Only a table model can be pruned: an image model reads one image column, "
            "with no input features to drop."
        )
    dense, between = _blocks(network)
    Ws, bs, kept, changed = _prune_weights(dense, between)
    features = [int(j) for j in np.flatnonzero(features_read(Ws[0], pre.groups))] or [0]
    if not changed and len(features) == len(pre.feature_names):
        return model  # nothing to remove: the model itself, no copy
    rows = np.concatenate([np.arange(*pre.groups[j]) for j in features]).astype(np.intp)
    Ws[0] = Ws[0][rows]

    pruned_pre = Preprocessor(
        [pre.feature_names[j] for j in features],
        [pre.kinds[j] for j in features],
        [pre.categories[j] for j in features],
        pre.center[features],
        pre.scale[features],
        pre.fill[features],
        standardize=pre.standardize,
    )
    spec = _with_widths(model.spec, [len(units) for units in kept])

    from engine.network import Network  # as in engine.model: importing engine stays light

    pruned_net = Network.build(
        spec, pruned_pre.n_features_out, model.n_outputs, rng=np.random.default_rng(0)
    )
    # Each parameter's new value, found by the layer that owns it in the original network; the
    # rebuilt network has the same layers in the same order, hence the same parameter names.
    dtype = network.dtype
    values: dict[int, dict[str, np.ndarray]] = {}
    for k, dense_layer in enumerate(dense):
        values[id(dense_layer)] = {"W": Ws[k].astype(dtype), "b": bs[k].astype(dtype)}
    for k, layers in enumerate(between):
        for layer in layers:
            if isinstance(layer, PReLU):
                values[id(layer)] = {"alpha": layer.params["alpha"][kept[k]].copy()}
    pruned_net.set_weights(
        {name: values[id(layer)][key] for name, layer, key in network.param_refs}
    )
    return Model(
        spec=spec,
        network=pruned_net,
        preprocessor=pruned_pre,
        classes=model.classes,
        history=model.history,
        metrics=model.metrics,
        stopped=model.stopped,
        n_inputs=pruned_pre.n_features_out,
        n_outputs=model.n_outputs,
    )


def required_features(model: Model) -> list[str]:
    """Raw features a prediction of ``model`` reads, in input order (those of :func:`prune`)."""
    return prune(model).feature_names
