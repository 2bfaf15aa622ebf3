"""What a training run will hold in memory, and how large its model will be, before it starts.

A service refuses jobs that cannot fit on its workers or in its model store; these figures are
the engine's own accounting, so they follow the network the engine would build. Every term is an
array the fit really allocates (``N`` rows, ``D`` encoded inputs, ``B`` batch rows, ``P``
parameters, widths ``M_l``, ``s`` the itemsize of the spec's dtype)::

    data        N * F * 8                 the table the caller loaded (float64 columns); 0 for
                                          images (a memory map: the page cache holds them)
    encoded     max(N * F * 8 + N * D * s, while encoding a table: its numeric columns stacked
                    2 * N * D * s)        in float64 and the encoded inputs; while training: the
                                          encoded inputs and the train/validation split's copy
    parameters  P * s * (3 + k)           weights, gradients, the best epoch's copy, k optimizer
                                          buffers (adam 2, momentum/adagrad/rmsprop 1, adadelta 2)
    activations 3 * B * sum_l M_l * s     each layer's output, its gradient and a dropout mask
    evaluation  2 * V' * max_l M_l * s    the validation pass, one layer's input and output at once
                                          (V' = V rows; images go in chunks of at most 512)
    model       P * s                     the serialized weights (and batch-norm statistics)
    bookkeeping N * 64 + 4 MiB            per-row vectors (labels, targets, split indices, the
                                          epoch's permutation) and the chunks statistics and
                                          evaluation work in

``M_l`` is the size of one sample's output of hidden layer ``l``
(``engine.spec_shapes.layer_shapes``: a conv layer's ``F * Ho * Wo`` activations, a pooling
layer's, a dense layer's width) plus the output layer's ``K``; ``P`` counts Dense ``D * M + M``,
Conv2D ``F * C * kh * kw + F`` and batch-norm ``2 * C`` parameters.

Deviations: temporaries of single operations (a matmul's result before it is added in place)
are not counted; they are at most one activation or one weight matrix at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Per-parameter buffers an optimizer keeps (its "state" besides the parameter and gradient).
OPTIMIZER_BUFFERS: Mapping[str, int] = {
    "sgd": 0,
    "momentum": 1,
    "nesterov": 1,
    "adagrad": 1,
    "rmsprop": 1,
    "adadelta": 2,
    "adam": 2,
    "fista": 2,
}


@dataclass(frozen=True)
class Footprint:
    """Bytes a fit needs, by part (``total`` is their sum); ``model``: the serialized weights."""

    parameters: int
    model: int
    data: int
    encoded: int
    weights: int
    activations: int
    evaluation: int
    bookkeeping: int

    @property
    def total(self) -> int:
        return (
            self.data
            + self.encoded
            + self.weights
            + self.activations
            + self.evaluation
            + self.bookkeeping
        )


def widths(spec: Mapping[str, Any], n_inputs: int, n_outputs: int) -> list[int]:
    """Layer widths ``[D, M_1, ..., M_L]`` of the dense network ``spec`` describes."""
    hidden: Sequence[int] = spec.get("model", {}).get("hidden_layers") or []
    return [n_inputs, *(int(m) for m in hidden), n_outputs]


def _layers(
    spec: Mapping[str, Any], n_inputs: int, n_outputs: int, input_shape: tuple[int, ...] | None
) -> tuple[int, int, list[int]]:
    """``(parameters, buffers, per-sample output sizes)`` of every layer, output layer last."""
    from engine.spec_shapes import layer_shapes

    shapes = layer_shapes(spec, tuple(input_shape) if input_shape else (int(n_inputs),))
    params = buffers = 0
    sizes: list[int] = []
    for step in shapes:
        out = math.prod(step.out_shape)
        if step.kind == "dense":
            params += step.in_shape[0] * out + out
        elif step.kind == "conv2d":
            kh, kw = step.layer.get("kernel_size")  # type: ignore[union-attr]
            F = step.out_shape[0]
            params += F * step.in_shape[0] * kh * kw + F
        elif step.kind == "batch_norm":
            params += 2 * step.in_shape[0]
            buffers += 2 * step.in_shape[0]
        if step.kind not in ("flatten", "dropout"):
            sizes.append(out)
    last = math.prod(shapes[-1].out_shape) if shapes else math.prod(input_shape or (n_inputs,))
    params += last * n_outputs + n_outputs
    sizes.append(int(n_outputs))
    return params, buffers, sizes


# Images per chunk of the validation pass (engine.trainer.EVAL_CHUNK).
_EVAL_CHUNK = 512


def footprint(
    spec: Mapping[str, Any],
    *,
    n_rows: int,
    n_columns: int,
    n_inputs: int,
    n_outputs: int,
    input_shape: tuple[int, ...] | None = None,
) -> Footprint:
    """The memory a fit of ``spec`` on ``n_rows`` rows will hold.

    Parameters
    ----------
    spec : mapping
        A normalized spec (``engine.normalize_spec``'s output as a dict).
    n_rows, n_columns : int
        Rows and raw feature columns of the training table.
    n_inputs : int
        Encoded input width ``D`` (a string column counts one input per category; an image
        ``C * H * W``).
    n_outputs : int
        Output units: 1 for regression and binary cross-entropy, else the number of classes.
    input_shape : (C, H, W), optional
        One image, for an image dataset.

    Raises
    ------
    SpecError
        A layer that does not fit its input (``engine.spec_shapes.layer_shapes``).
    """
    parameters, buffers, sizes = _layers(spec, n_inputs, n_outputs, input_shape)
    itemsize = 8 if spec.get("dtype") == "float64" else 4
    optimizer = spec.get("optimizer", {}).get("name", "sgd")
    copies = 3 + OPTIMIZER_BUFFERS.get(optimizer, 2)
    batch = min(int(spec.get("batch_size") or n_rows), n_rows)
    val_rows = int(n_rows * float(spec.get("validation_split") or 0.0))
    if input_shape:
        val_rows = min(val_rows, _EVAL_CHUNK)
    stack = 0 if input_shape else n_rows * n_columns * 8  # images are encoded without one
    return Footprint(
        parameters=parameters,
        model=(parameters + buffers) * itemsize,
        data=0 if input_shape else n_rows * n_columns * 8,
        encoded=max(stack + n_rows * n_inputs * itemsize, 2 * n_rows * n_inputs * itemsize),
        weights=parameters * itemsize * copies + buffers * itemsize * 2,
        activations=3 * batch * sum(sizes) * itemsize,
        evaluation=2 * val_rows * max(sizes) * itemsize,
        bookkeeping=n_rows * 64 + 4 * 2**20,
    )
