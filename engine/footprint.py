"""What a training run will hold in memory, and how large its model will be, before it starts.

A service refuses jobs that cannot fit on its workers or in its model store; these figures are
the engine's own accounting, so they follow the network the engine would build. Every term is an
array the fit really allocates (``N`` rows, ``D`` encoded inputs, ``B`` batch rows, ``P``
parameters, widths ``M_l``, ``s`` the itemsize of the spec's dtype)::

    data        N * F * 8                 the table the caller loaded (float64 columns)
    encoded     2 * N * D * s             encoded inputs, and the train/validation split's copy
    parameters  P * s * (3 + k)           weights, gradients, the best epoch's copy, k optimizer
                                          buffers (adam 2, momentum/adagrad/rmsprop 1, adadelta 2)
    activations 3 * B * sum_l M_l * s     each layer's output, its gradient and a dropout mask
    evaluation  2 * V * max_l M_l * s     the validation pass, one layer's input and output at once
    model       P * s                     the serialized weights

Deviations: temporaries of single operations (a matmul's result before it is added in place)
are not counted; they are at most one activation or one weight matrix at a time.
"""

from __future__ import annotations

import itertools
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

    @property
    def total(self) -> int:
        return self.data + self.encoded + self.weights + self.activations + self.evaluation


def widths(spec: Mapping[str, Any], n_inputs: int, n_outputs: int) -> list[int]:
    """Layer widths ``[D, M_1, ..., M_L]`` of the dense network ``spec`` describes."""
    hidden: Sequence[int] = spec.get("model", {}).get("hidden_layers") or []
    return [n_inputs, *(int(m) for m in hidden), n_outputs]


def footprint(
    spec: Mapping[str, Any],
    *,
    n_rows: int,
    n_columns: int,
    n_inputs: int,
    n_outputs: int,
) -> Footprint:
    """The memory a fit of ``spec`` on ``n_rows`` rows will hold.

    Parameters
    ----------
    spec : mapping
        A normalized spec (``engine.normalize_spec``'s output as a dict).
    n_rows, n_columns : int
        Rows and raw feature columns of the training table.
    n_inputs : int
        Encoded input width ``D`` (a string column counts one input per category).
    n_outputs : int
        Output units: 1 for regression and binary cross-entropy, else the number of classes.
    """
    dims = widths(spec, n_inputs, n_outputs)
    parameters = sum(a * b + b for a, b in itertools.pairwise(dims))
    itemsize = 8 if spec.get("dtype") == "float64" else 4
    optimizer = spec.get("optimizer", {}).get("name", "sgd")
    copies = 3 + OPTIMIZER_BUFFERS.get(optimizer, 2)
    batch = min(int(spec.get("batch_size") or n_rows), n_rows)
    val_rows = int(n_rows * float(spec.get("validation_split") or 0.0))
    return Footprint(
        parameters=parameters,
        model=parameters * itemsize,
        data=n_rows * n_columns * 8,
        encoded=2 * n_rows * n_inputs * itemsize,
        weights=parameters * itemsize * copies,
        activations=3 * batch * sum(dims[1:]) * itemsize,
        evaluation=2 * val_rows * max(dims[1:]) * itemsize,
    )
