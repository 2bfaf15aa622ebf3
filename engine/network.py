"""A Sequential network built from a normalized spec.

Layout for ``hidden_layers = [M_1, ..., M_H]`` (``D`` inputs, ``K`` outputs)::

    [Dropout(input)] -> Dense0 (D, M_1) -> act -> [Dropout(hidden)] -> ... -> DenseH (M_H, K)

``model.layers`` gives the same network as a list: each ``dense`` entry is a hidden Dense block
(Dense -> activation, its own ``activation``/``init`` or the model's), each ``dropout`` entry an
extra Dropout at its place (inverted, or standard under ``dropout.mode == "standard"``); the output
Dense comes from the loss as above. Other layer types validate in the spec but are not built yet.

Dropout layers exist only for the ``inverted``/``standard`` modes with a positive rate; in
``dropconnect`` mode the Dense layers mask their own weights instead (input rate on ``dense0``,
hidden rate on every later Dense, which all read a hidden activation). With no hidden layers the
network is a linear model ``scores = x @ W + b``.

Inside a network ReLU works in place on the Dense output it receives, and hidden Dropout in place
after ReLU / leaky ReLU / PReLU / linear (whose backward reads no output values): fewer passes
over ``(N, M)`` arrays, same results.

The last Dense returns raw scores ``(N, K)``; the loss owns the output non-linearity, and ``output``
applies it at predict time. ``K`` is 1 for regression and binary cross-entropy, ``C`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.errors import SpecError
from engine.initializers import init_weights
from engine.layers import (
    SIGN_ONLY_ACTIVATIONS,
    Dense,
    Dropout,
    Layer,
    PReLU,
    make_activation,
    sigmoid,
)
from engine.losses import softmax
from engine.spec import BUILDABLE_LAYERS, Spec, parse


class Network:
    """Layers in order plus named access to their parameters.

    Attributes
    ----------
    layers : list of Layer
    dense_layers : list of Dense
        In order; ``dense_layers[0].params["W"]`` is the input layer ``W_1 (D, M_1)``.
    loss : str
        The spec's loss, which decides what ``output`` returns.
    dtype : numpy.dtype
    """

    def __init__(self, layers: list[Layer], loss: str, dtype: np.dtype) -> None:
        self.layers = layers
        self.loss = loss
        self.dtype = np.dtype(dtype)
        self.dense_layers: list[Dense] = [la for la in layers if isinstance(la, Dense)]
        # (name, layer, key) for every parameter, in a stable order: the optimizer's index order.
        self.param_refs: list[tuple[str, Layer, str]] = []
        d = p = 0
        for layer in layers:
            if isinstance(layer, Dense):
                self.param_refs += [(f"dense{d}.W", layer, "W"), (f"dense{d}.b", layer, "b")]
                d += 1
            elif isinstance(layer, PReLU):
                self.param_refs.append((f"prelu{p}.alpha", layer, "alpha"))
                p += 1
        # Predict time: no caches, no masks, and no call at all for the layers that are the
        # identity then (inverted dropout, linear activation). Parameters are updated in place,
        # so the bound methods stay valid.
        self._predict_plan = [la.predict for la in layers if not la.identity_at_predict]

    @classmethod
    def build(
        cls,
        spec: Spec | Mapping[str, Any],
        n_inputs: int,
        n_outputs: int,
        *,
        rng: np.random.Generator,
        output_bias: np.ndarray | float | None = None,
    ) -> Network:
        """Create a freshly initialised network.

        Parameters
        ----------
        spec : Spec or mapping
            The spec (a mapping is parsed with ``engine.spec.parse``); reads ``model``,
            ``dropout``, ``loss`` and ``dtype``.
        n_inputs, n_outputs : int
            ``D`` (encoded input columns) and ``K`` (1, or the number of classes).
        rng : numpy.random.Generator
            Draws the initial weights, layer by layer.
        output_bias : ndarray (K,) or float, optional
            Initial bias of the last layer (the regression target mean); zeros otherwise.

        Raises
        ------
        SpecError
            ``not_supported`` for a ``model.layers`` entry the network cannot build yet.
        """
        spec = parse(spec)
        dtype = np.dtype(spec.dtype)
        model, dropout = spec.model, spec.dropout
        mode = dropout.mode
        # Hidden blocks: (units, activation, init, dropout rate of explicit dropout layers after it)
        blocks: list[tuple[int, str, str]] = []
        extra_dropout: dict[int, list[float]] = {}  # block index (-1 = input) -> rates
        if model.layers is None:
            blocks = [(units, model.activation, model.init) for units in model.hidden_layers or ()]
        else:
            for i, layer in enumerate(model.layers):
                if layer.type not in BUILDABLE_LAYERS:
                    raise SpecError(
                        ("model", "layers", i, "type"),
                        f"model.layers.{i}: {layer.type!r} layers are not supported yet; "
                        f"use {' or '.join(BUILDABLE_LAYERS)}.",
                        "not_supported",
                    )
                if layer.type == "dense":
                    blocks.append(
                        (
                            layer.get("units"),
                            layer.get("activation") or model.activation,
                            layer.get("init") or model.init,
                        )
                    )
                elif layer.get("rate") > 0:
                    extra_dropout.setdefault(len(blocks) - 1, []).append(layer.get("rate"))
        # Explicit dropout layers drop activations: DropConnect mode applies to dropout.* only.
        layer_mode = "inverted" if mode == "dropconnect" else mode
        p_in, p_hid = dropout.input, dropout.hidden

        sizes = [int(n_inputs), *(b[0] for b in blocks), int(n_outputs)]
        layers: list[Layer] = []
        if p_in > 0.0 and mode != "dropconnect":
            layers.append(Dropout(p_in, mode))
        layers += [Dropout(rate, layer_mode) for rate in extra_dropout.get(-1, [])]
        for k in range(len(sizes) - 1):
            D, M = sizes[k], sizes[k + 1]
            init = blocks[k][2] if k < len(blocks) else model.init
            W = init_weights(init, D, M, rng=rng, dtype=dtype)
            b = np.zeros(M, dtype=dtype)
            dc = (p_in if k == 0 else p_hid) if mode == "dropconnect" else 0.0
            layers.append(Dense(W, b, dropconnect=dc, need_dx=k > 0))
            if k < len(blocks):
                activation = blocks[k][1]
                # In place: the Dense output is a fresh array that no layer keeps.
                layers.append(
                    make_activation(
                        activation, M, dtype=dtype, leaky_slope=model.leaky_slope, inplace=True
                    )
                )
                inplace = activation in SIGN_ONLY_ACTIVATIONS
                if p_hid > 0.0 and mode != "dropconnect":
                    layers.append(Dropout(p_hid, mode, inplace=inplace))
                layers += [
                    Dropout(rate, layer_mode, inplace=inplace) for rate in extra_dropout.get(k, [])
                ]
        if output_bias is not None:
            out_b = layers[-1].params["b"]
            out_b[...] = np.asarray(output_bias, dtype=dtype).reshape(out_b.shape)
        net = cls(layers, spec.loss, dtype)
        net.set_rng(rng)
        return net

    # ------------------------------------------------------------------ computation
    def set_rng(self, rng: np.random.Generator) -> None:
        """Give every stochastic layer (Dropout, DropConnect Dense) the generator for its masks."""
        for layer in self.layers:
            if isinstance(layer, Dropout | Dense):
                layer.rng = rng

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """Raw scores ``(N, K)`` of the last Dense for ``x (N, D)``.

        In predict mode (``training=False``) no layer keeps a cache: call ``backward`` only after
        a training-mode forward.
        """
        out = x
        if not training:
            for predict in self._predict_plan:
                out = predict(out)
            return out
        for layer in self.layers:
            out = layer.forward(out, True)
        return out

    def backward(self, dscores: np.ndarray) -> None:
        """Backpropagate ``dscores (N, K)``, filling every layer's ``grads``.

        Stops at the first Dense: the gradient with respect to the input is never needed.
        """
        dout: np.ndarray | None = dscores
        for layer in reversed(self.layers):
            assert dout is not None
            dout = layer.backward(dout)
            if dout is None:
                break

    def output(self, x: np.ndarray) -> np.ndarray:
        """Predict-time output for ``x (N, D)``.

        ``(N, 1)`` values for regression, ``(N, 1)`` sigmoid probabilities for binary cross-entropy,
        ``(N, C)`` softmax probabilities for softmax cross-entropy, ``(N, C)`` raw scores for the
        hinge losses.
        """
        scores = self.forward(x, training=False)
        if self.loss == "binary_cross_entropy":
            return sigmoid(scores)
        if self.loss == "softmax_cross_entropy":
            return softmax(scores)
        return scores

    # ------------------------------------------------------------------ parameters
    @property
    def weights(self) -> list[np.ndarray]:
        """The Dense weight matrices (the penalised parameters), input layer first."""
        return [d.params["W"] for d in self.dense_layers]

    def parameters(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``(params, grads)``: live arrays in ``param_refs`` order (the optimizer's indices)."""
        params = [layer.params[key] for _, layer, key in self.param_refs]
        grads = [layer.grads[key] for _, layer, key in self.param_refs]
        return params, grads

    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of all parameters by name (``dense0.W``, ``dense0.b``, ``prelu0.alpha``)."""
        return {name: layer.params[key].copy() for name, layer, key in self.param_refs}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Overwrite every parameter in place from ``weights`` (same names and shapes)."""
        for name, layer, key in self.param_refs:
            if name not in weights:
                raise KeyError(f"missing weight {name!r}")
            target = layer.params[key]
            value = np.asarray(weights[name])
            if value.shape != target.shape:
                raise ValueError(
                    f"weight {name!r} has shape {value.shape}, expected {target.shape}"
                )
            np.copyto(target, value, casting="same_kind")

    def zero_fraction(self) -> float:
        """Fraction of Dense weights (not biases) that are exactly 0.0."""
        total = sum(W.size for W in self.weights)
        zeros = sum(W.size - np.count_nonzero(W) for W in self.weights)
        return zeros / total if total else 0.0
