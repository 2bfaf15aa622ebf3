"""A Sequential network built from a normalized spec.

Layout for ``hidden_layers = [M_1, ..., M_H]`` (``D`` inputs, ``K`` outputs)::

    [Dropout(input)] -> Dense0 (D, M_1) -> act -> [Dropout(hidden)] -> ... -> DenseH (M_H, K)

``model.layers`` gives the network as a list (Keras Sequential style, shapes from
``engine.spec_shapes.layer_shapes``): each ``dense`` entry is a hidden Dense block (Dense ->
activation, its own ``activation``/``init`` or the model's), each ``conv2d`` a Conv2D block
(Conv2D -> activation), ``maxpool2d`` / ``avgpool2d`` / ``flatten`` / ``batch_norm`` the layers of
``engine.pooling`` and ``engine.batchnorm``, each ``dropout`` entry an extra Dropout at its place
(inverted, or standard under ``dropout.mode == "standard"``). ``dropout.hidden`` follows every
hidden activation (dense or conv). A Dense reading an image gets a Flatten first, so does the
output Dense, which comes from the loss as above. Image networks take ``x (N, C, H, W)``.

Dropout layers exist only for the ``inverted``/``standard`` modes with a positive rate; in
``dropconnect`` mode the Dense layers mask their own weights instead (input rate on ``dense0``,
hidden rate on every later Dense, which all read a hidden activation). With no hidden layers the
network is a linear model ``scores = x @ W + b``.

Inside a network ReLU works in place on the Dense output it receives, and hidden Dropout in place
after ReLU / leaky ReLU / PReLU / linear (whose backward reads no output values): fewer passes
over ``(N, M)`` arrays, same results.

A max-pool right after a non-decreasing activation (tanh, sigmoid, ReLU, leaky ReLU, linear; not
PReLU, whose learned slopes may turn negative) runs before it: ``max(act(x)) = act(max(x))``, so
the activation sees a quarter of the values for 2x2 windows. Same output; the same gradient except
where rounding ties ``act(x)`` for distinct ``x`` (the derivative is then tiny or zero), where the
first tied pixel would get it instead of the larger ``x``. A Conv2D read directly by a pooling
layer hands it a strided view of its products (``Conv2D.strided_output``) instead of a copy.

The last Dense returns raw scores ``(N, K)``; the loss owns the output non-linearity, and ``output``
applies it at predict time. ``K`` is 1 for regression and binary cross-entropy, ``C`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.batchnorm import BatchNorm
from engine.conv import Conv2D, make_conv2d
from engine.initializers import init_weights
from engine.layers import (
    SIGN_ONLY_ACTIVATIONS,
    Dense,
    Dropout,
    Layer,
    LeakyReLU,
    Linear,
    PReLU,
    ReLU,
    Sigmoid,
    Tanh,
    make_activation,
    sigmoid,
)
from engine.losses import softmax
from engine.pooling import AvgPool2D, Flatten, MaxPool2D
from engine.spec import Spec
from engine.spec_parse import parse
from engine.spec_shapes import layer_shapes

# Activations that commute with a max-pool (non-decreasing; the leaky slope is >= 0).
MONOTONE_ACTIVATIONS = (Tanh, Sigmoid, ReLU, LeakyReLU, Linear)


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
        self.input_shape: tuple[int, ...] | None = None  # (C, H, W) for an image network
        self.dense_layers: list[Dense] = [la for la in layers if isinstance(la, Dense)]
        self.conv_layers: list[Conv2D] = [la for la in layers if isinstance(la, Conv2D)]
        # (name, layer, key) for every parameter, in a stable order: the optimizer's index order.
        self.param_refs: list[tuple[str, Layer, str]] = []
        # (name, layer, key) of the non-learned state a saved model keeps (batch-norm statistics).
        self.buffer_refs: list[tuple[str, BatchNorm, str]] = []
        # (name, layer) of the penalised kernels (Dense and Conv2D ``W``), in network order.
        self.kernel_refs: list[tuple[str, Layer]] = []
        counts = {"dense": 0, "conv": 0, "prelu": 0, "batch_norm": 0}
        for layer in layers:
            if isinstance(layer, Dense | Conv2D):
                kind = "dense" if isinstance(layer, Dense) else "conv"
                name = f"{kind}{counts[kind]}"
                self.param_refs += [(f"{name}.W", layer, "W"), (f"{name}.b", layer, "b")]
                self.kernel_refs.append((name, layer))
            elif isinstance(layer, PReLU):
                kind = "prelu"
                self.param_refs.append((f"prelu{counts[kind]}.alpha", layer, "alpha"))
            elif isinstance(layer, BatchNorm):
                kind = "batch_norm"
                name = f"{kind}{counts[kind]}"
                self.param_refs += [(f"{name}.{k}", layer, k) for k in ("gamma", "beta")]
                self.buffer_refs += [(f"{name}.{k}", layer, k) for k in layer.buffers]
            else:
                continue
            counts[kind] += 1
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
        input_shape: tuple[int, ...] | None = None,
    ) -> Network:
        """Create a freshly initialised network.

        Parameters
        ----------
        spec : Spec or mapping
            The spec (a mapping is parsed with ``engine.spec_parse.parse``); reads ``model``,
            ``dropout``, ``loss`` and ``dtype``.
        n_inputs, n_outputs : int
            ``D`` (encoded input columns, ``C * H * W`` for images) and ``K`` (1, or the number
            of classes).
        rng : numpy.random.Generator
            Draws the initial weights, layer by layer.
        output_bias : ndarray (K,) or float, optional
            Initial bias of the last layer (the regression target mean); zeros otherwise.
        input_shape : (C, H, W), optional
            One input image; ``None`` for rows of ``D`` features.

        Raises
        ------
        SpecError
            A layer that does not fit its input (see :func:`layer_shapes`), DropConnect with
            conv layers, PReLU after a conv layer.
        """
        spec = parse(spec)
        dtype = np.dtype(spec.dtype)
        model, dropout = spec.model, spec.dropout
        mode = dropout.mode
        shape: tuple[int, ...] = tuple(input_shape) if input_shape else (int(n_inputs),)
        plan = layer_shapes(spec, shape)
        # Explicit dropout layers drop activations: DropConnect mode applies to dropout.* only.
        layer_mode = "inverted" if mode == "dropconnect" else mode
        p_in, p_hid = dropout.input, dropout.hidden

        layers: list[Layer] = []
        if p_in > 0.0 and mode != "dropconnect":
            layers.append(Dropout(p_in, mode))
        n_dense = 0
        has_params = False  # a layer before the current one has parameters (needs dx)

        def dense(D: int, M: int, init: str) -> Dense:
            nonlocal n_dense, has_params
            dc = 0.0
            if mode == "dropconnect":
                dc = p_in if n_dense == 0 else p_hid
            W = init_weights(init, D, M, rng=rng, dtype=dtype)
            layer = Dense(W, np.zeros(M, dtype=dtype), dropconnect=dc, need_dx=has_params)
            n_dense += 1
            has_params = True
            return layer

        inplace_ok = False  # an explicit dropout may work in place (after a sign-only activation)

        def activation(name: str, units: int) -> None:
            nonlocal inplace_ok
            # In place: the Dense / Conv2D output is a fresh array that no layer keeps.
            layers.append(
                make_activation(
                    name, units, dtype=dtype, leaky_slope=model.leaky_slope, inplace=True
                )
            )
            inplace = name in SIGN_ONLY_ACTIVATIONS
            if p_hid > 0.0 and mode != "dropconnect":
                layers.append(Dropout(p_hid, mode, inplace=inplace))
            inplace_ok = inplace

        for step in plan:
            kind, layer, in_shape = step.kind, step.layer, step.in_shape
            inplace_ok = inplace_ok and kind == "dropout"
            if kind == "flatten":
                layers.append(Flatten())
            elif kind == "dense":
                act, init = step.activation_init()
                layers.append(dense(in_shape[0], step.out_shape[0], init))
                activation(act, step.out_shape[0])
            elif layer is None:  # layer_shapes adds only flatten and dense layers of its own
                raise ValueError(f"a {kind} step of the layer plan has no layer spec")
            elif kind == "conv2d":
                act, init = step.activation_init()
                conv = make_conv2d(
                    in_shape[0],
                    layer.get("filters"),
                    layer.get("kernel_size"),
                    strides=layer.get("strides"),
                    padding=layer.get("padding"),
                    init=init,
                    rng=rng,
                    dtype=dtype,
                    need_dx=has_params,
                )
                has_params = True
                layers.append(conv)
                activation(act, step.out_shape[0])
            elif kind in ("maxpool2d", "avgpool2d"):
                pool = MaxPool2D if kind == "maxpool2d" else AvgPool2D
                pooling = pool(layer.get("pool_size"), layer.get("strides"))
                if kind == "maxpool2d" and layers and isinstance(layers[-1], MONOTONE_ACTIVATIONS):
                    layers.insert(len(layers) - 1, pooling)  # max(act(x)) = act(max(x))
                else:
                    layers.append(pooling)
                before = layers[layers.index(pooling) - 1] if len(layers) > 1 else None
                if isinstance(before, Conv2D):
                    before.strided_output = True  # the pool reads strided windows anyway
            elif kind == "batch_norm":
                layers.append(
                    BatchNorm(
                        in_shape[0],
                        momentum=layer.get("momentum"),
                        eps=layer.get("eps"),
                        dtype=dtype,
                    )
                )
                has_params = True
            elif kind == "dropout" and layer.get("rate") > 0:
                layers.append(Dropout(layer.get("rate"), layer_mode, inplace=inplace_ok))
        last = plan[-1].out_shape if plan else shape
        if len(last) != 1:
            layers.append(Flatten())
        D = math.prod(last)
        layers.append(dense(D, int(n_outputs), model.init))
        if output_bias is not None:
            out_b = layers[-1].params["b"]
            out_b[...] = np.asarray(output_bias, dtype=dtype).reshape(out_b.shape)
        net = cls(layers, spec.loss, dtype)
        net.input_shape = tuple(input_shape) if input_shape else None
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
        """The penalised kernels, input side first: Dense ``W (D, M)`` and Conv2D
        ``W (F, C, kh, kw)`` (never biases, PReLU slopes or batch-norm parameters)."""
        return [layer.params["W"] for _, layer in self.kernel_refs]

    @property
    def kernel_names(self) -> list[str]:
        """Names of :attr:`weights` (``conv0``, ``dense0``, ...)."""
        return [name for name, _ in self.kernel_refs]

    def parameters(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``(params, grads)``: live arrays in ``param_refs`` order (the optimizer's indices)."""
        params = [layer.params[key] for _, layer, key in self.param_refs]
        grads = [layer.grads[key] for _, layer, key in self.param_refs]
        return params, grads

    def _named_arrays(self) -> list[tuple[str, np.ndarray]]:
        """Live arrays by name: the parameters in ``param_refs`` order, then the buffers."""
        return [(name, layer.params[key]) for name, layer, key in self.param_refs] + [
            (name, layer.buffers[key]) for name, layer, key in self.buffer_refs
        ]

    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of all parameters and buffers by name (``dense0.W``, ``conv0.b``,
        ``prelu0.alpha``, ``batch_norm0.gamma``, ``batch_norm0.running_mean``)."""
        return {name: array.copy() for name, array in self._named_arrays()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Overwrite every parameter and buffer in place from ``weights`` (same names, shapes)."""
        for name, target in self._named_arrays():
            if name not in weights:
                raise KeyError(f"missing weight {name!r}")
            value = np.asarray(weights[name])
            if value.shape != target.shape:
                raise ValueError(
                    f"weight {name!r} has shape {value.shape}, expected {target.shape}"
                )
            np.copyto(target, value, casting="same_kind")

    def zero_fraction(self) -> float:
        """Fraction of kernel weights (Dense and Conv2D ``W``, not biases) that are exactly 0.0."""
        weights = self.weights
        total = sum(W.size for W in weights)
        zeros = sum(W.size - np.count_nonzero(W) for W in weights)
        return zeros / total if total else 0.0
