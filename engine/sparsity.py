"""Sparsity statistics of a trained network (DESIGN section 5).

For each weight matrix ``W (D, M)`` (biases are never counted): size, exact zeros, near-zeros under
a tolerance, ``||W||_1``, ``||W||_2`` (Frobenius), ``max |w|``, a histogram and the dead units. For
the input layer: each raw feature's importance and which features the model dropped.

Definitions, with ``zero(w) := |w| <= tolerance`` (exact ``w == 0`` when ``tolerance == 0``):

- importance of raw feature ``j`` with encoded columns ``G_j`` (one numeric column, or all one-hot
  columns of a categorical): ``||W1[G_j, :]||_2``; the feature is *dropped* iff ``zero(w)`` for
  every ``w in W1[G_j, :]`` (a categorical with no training categories has no weights and is
  dropped).
- unit ``m`` of layer ``k`` (column ``m`` of ``W_k``) is *dead* iff all its incoming weights
  ``W_k[:, m]`` are zero, or, for a hidden layer, all its outgoing weights ``W_{k+1}[m, :]`` are
  zero. Output units count only the incoming rule. Either way the unit's value no longer depends on
  the input.
- ``zeros``, ``zero_weights`` and ``zero_fraction`` always count EXACT zeros (what L1's proximal
  step produces); ``near_zero`` uses the tolerance.
- Conv2D kernels ``W (F, C, kh, kw)`` (:func:`conv_stats`): filter ``f`` is *off* iff all of
  ``W[f]`` is zero; input channel ``c`` is *dead* iff ``W[:, c]`` is zero (no filter reads it);
  output channel ``f`` is a dead unit iff it is off or the next layer reads nothing of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from engine.model import Model

__all__ = ["HISTOGRAM_BINS", "sparsity", "weight_stats"]

HISTOGRAM_BINS = 20


def _zero_mask(W: np.ndarray, tolerance: float) -> np.ndarray:
    return W == 0 if tolerance <= 0 else np.abs(W) <= tolerance


def features_read(
    W1: np.ndarray, groups: list[tuple[int, int]], tolerance: float = 0.0
) -> np.ndarray:
    """Per raw feature, whether the first layer reads it: some weight of its rows
    ``W1[start:stop]`` is beyond ``tolerance`` (the one rule of selected / dropped features)."""
    rows = np.asarray(~_zero_mask(np.asarray(W1), tolerance).all(axis=1), dtype=bool)
    return np.array([bool(rows[start:stop].any()) for start, stop in groups], dtype=bool)


def _common(name: str, W: np.ndarray, is_zero: np.ndarray) -> dict[str, Any]:
    """The fields every layer entry has (``W`` float64 of any rank)."""
    size = int(W.size)
    zeros = int(np.count_nonzero(W == 0))
    absW = np.abs(W)
    max_abs = float(absW.max()) if size else 0.0
    # Symmetric range so 0 sits on a bin edge and the histogram reads the same for +w and -w.
    half = max_abs if max_abs > 0 else 1.0
    counts, edges = np.histogram(W, bins=HISTOGRAM_BINS, range=(-half, half))
    return {
        "name": name,
        "shape": [int(v) for v in W.shape],
        "zeros": zeros,
        "zero_fraction": zeros / size if size else 0.0,
        "near_zero": int(np.count_nonzero(is_zero)),
        "l1_norm": float(absW.sum()),
        "l2_norm": float(np.sqrt(np.square(W).sum())),
        "max_abs": max_abs,
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def conv_stats(
    kernels: list[np.ndarray], names: list[str], tolerance: float, next_reads: np.ndarray | None
) -> list[dict[str, Any]]:
    """Layer entries of consecutive Conv2D kernels ``W_k (F, C, kh, kw)``.

    Besides the common fields (``shape`` is 4-D): per filter ``filter_l1_norms`` /
    ``filter_l2_norms`` (over ``C * kh * kw`` weights); ``filters_off`` /
    ``filter_indices_off``: filters whose weights are all zero (switched off, what ``group_l1``
    on a first conv layer produces: the channel is its bias alone); ``dead_channels`` /
    ``dead_channel_indices``: input channels no filter reads (``W[:, c]`` all zero);
    ``dead_units`` / ``dead_unit_indices``: output channels that are off or that the next layer
    does not read (``next_reads[f]`` False; for the last conv layer, from the first Dense rows
    of that channel).
    """
    out = []
    for k, (name, W) in enumerate(zip(names, kernels, strict=True)):
        W = np.asarray(W, dtype=np.float64)
        is_zero = _zero_mask(W, tolerance)
        entry = _common(name, W, is_zero)
        off = is_zero.all(axis=(1, 2, 3))
        dead_in = is_zero.all(axis=(0, 2, 3))
        dead = off.copy()
        if k + 1 < len(kernels):
            dead |= _zero_mask(np.asarray(kernels[k + 1]), tolerance).all(axis=(0, 2, 3))
        elif next_reads is not None:
            dead |= ~next_reads
        flat = W.reshape(W.shape[0], -1)
        entry.update(
            {
                "dead_units": int(dead.sum()),
                "dead_unit_indices": [int(i) for i in np.flatnonzero(dead)],
                "filters_off": int(off.sum()),
                "filter_indices_off": [int(i) for i in np.flatnonzero(off)],
                "filter_l1_norms": [float(v) for v in np.abs(flat).sum(axis=1)],
                "filter_l2_norms": [float(v) for v in np.sqrt(np.square(flat).sum(axis=1))],
                "dead_channels": int(dead_in.sum()),
                "dead_channel_indices": [int(i) for i in np.flatnonzero(dead_in)],
            }
        )
        out.append(entry)
    return out


def weight_stats(
    weights: list[np.ndarray],
    *,
    groups: list[tuple[int, int]],
    feature_names: list[str],
    tolerance: float = 0.0,
    layer_names: list[str] | None = None,
) -> dict[str, Any]:
    """Sparsity statistics of a stack of weight matrices.

    Parameters
    ----------
    weights : list of ndarray
        ``W_k (D_k, M_k)`` for each dense layer, input layer first; ``D_{k+1} == M_k``.
    groups : list of (int, int)
        ``[start, stop)`` rows of ``W_1`` belonging to each raw feature.
    feature_names : list of str
        Raw feature names, same length as ``groups``.
    tolerance : float
        ``|w| <= tolerance`` counts as zero for dropped features, dead units and ``near_zero``.
    layer_names : list of str, optional
        Default ``"dense0", "dense1", ...``.

    Returns
    -------
    dict
        The section-5 shape: ``tolerance``, ``total_weights``, ``zero_weights``, ``zero_fraction``,
        ``selected_features``, ``dropped_features``, ``feature_importance`` and ``layers`` (one dict
        per matrix: ``name``, ``shape``, ``zeros``, ``zero_fraction``, ``near_zero``, ``l1_norm``,
        ``l2_norm``, ``max_abs``, ``dead_units``, ``dead_unit_indices``, ``histogram {edges,
        counts}``).
    """
    tolerance = float(tolerance)
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}.")
    if layer_names is None:
        layer_names = [f"dense{k}" for k in range(len(weights))]
    zero_masks = [_zero_mask(np.asarray(W), tolerance) for W in weights]

    layers = []
    total = zeros_total = 0
    for k, (name, W, is_zero) in enumerate(zip(layer_names, weights, zero_masks, strict=True)):
        W = np.asarray(W, dtype=np.float64)
        entry = _common(name, W, is_zero)
        total += entry["shape"][0] * entry["shape"][1]
        zeros_total += entry["zeros"]
        dead = is_zero.all(axis=0) if W.size else np.ones(W.shape[1], dtype=bool)
        if k + 1 < len(weights):
            dead = dead | zero_masks[k + 1].all(axis=1)
        dead_idx = np.flatnonzero(dead)
        entry["dead_units"] = int(dead_idx.size)
        entry["dead_unit_indices"] = [int(i) for i in dead_idx]
        layers.append(entry)

    W1 = np.asarray(weights[0], dtype=np.float64)
    importance: dict[str, float] = {}
    selected: list[str] = []
    dropped: list[str] = []
    reads = features_read(weights[0], groups, tolerance)
    for name, (start, stop), read in zip(feature_names, groups, reads, strict=True):
        block = W1[start:stop]
        importance[name] = float(np.sqrt(np.square(block).sum()))
        (selected if read else dropped).append(name)

    return {
        "tolerance": tolerance,
        "total_weights": total,
        "zero_weights": zeros_total,
        "zero_fraction": zeros_total / total if total else 0.0,
        "selected_features": selected,
        "dropped_features": dropped,
        "feature_importance": importance,
        "layers": layers,
    }


def sparsity(model: Model, tolerance: float = 0.0) -> dict[str, Any]:
    """Sparsity statistics of a fitted :class:`~engine.model.Model` (see the module docstring).

    Parameters
    ----------
    model : Model
    tolerance : float, default 0.0
        ``|w| <= tolerance`` counts as zero for dropped features, dead units and ``near_zero``.

    Returns
    -------
    dict
        See :func:`weight_stats`. A CNN lists its Conv2D kernels first (entries of
        :func:`conv_stats`); its one raw feature, the image column, is dropped only when the
        whole first kernel is zero; ``total_weights`` / ``zero_weights`` count every kernel.
    """
    net = model.network
    dense = net.dense_layers
    names = [getattr(layer, "name", None) or f"dense{k}" for k, layer in enumerate(dense)]
    dense_w = [layer.params["W"] for layer in dense]
    if not getattr(net, "conv_layers", ()):
        return weight_stats(
            dense_w,
            groups=model.preprocessor.groups,
            feature_names=model.feature_names,
            tolerance=tolerance,
            layer_names=names,
        )
    # The Dense part sees the flattened last conv output: one group, summarised per channel.
    stats = weight_stats(
        dense_w,
        groups=[(0, dense_w[0].shape[0])],
        feature_names=model.feature_names,
        tolerance=tolerance,
        layer_names=names,
    )
    kernels = [c.params["W"] for c in net.conv_layers]
    F = kernels[-1].shape[0]
    W1 = np.asarray(dense_w[0])
    next_reads = None
    if W1.shape[0] % F == 0:
        # Flatten is channel-major: rows [f * P, (f + 1) * P) of the first Dense read channel f.
        # (F,): numpy's hints type a reduction over one axis as "scalar or array".
        next_reads = np.asarray(~_zero_mask(W1.reshape(F, -1), tolerance).all(axis=1))
    conv = conv_stats(kernels, [f"conv{k}" for k in range(len(kernels))], tolerance, next_reads)
    first = np.asarray(kernels[0], dtype=np.float64)
    name = model.feature_names[0]
    dropped = bool(_zero_mask(first, tolerance).all())
    total = stats["total_weights"] + sum(int(W.size) for W in kernels)
    zeros = stats["zero_weights"] + sum(e["zeros"] for e in conv)
    stats.update(
        {
            "total_weights": total,
            "zero_weights": zeros,
            "zero_fraction": zeros / total if total else 0.0,
            "selected_features": [] if dropped else [name],
            "dropped_features": [name] if dropped else [],
            "feature_importance": {name: float(np.sqrt(np.square(first).sum()))},
            "layers": conv + stats["layers"],
        }
    )
    return stats
