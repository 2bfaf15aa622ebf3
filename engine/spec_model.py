"""The model section of a spec: hidden Dense widths, or a list of layer objects.

``model.hidden_layers = [M_1, ..., M_L]`` builds ``L`` hidden Dense blocks, block ``l`` mapping
``x (N, M_{l-1})`` to ``(N, M_l)`` with ``M_0 = D`` inputs, activation ``model.activation`` and
initializer ``model.init``; ``[]`` is a linear model. ``model.layers`` lists layer objects
``{"type": t, <the fields of t>}`` instead (:data:`LAYER_FIELDS`: ``dense``, ``dropout``,
``batch_norm``, ``conv2d``, ``maxpool2d``, ``avgpool2d``, ``flatten``); the ``activation`` or
``init`` of a dense or conv2d entry, when ``None``, is the model's. Either way the output Dense
layer is added from the loss. The shapes the layers produce: ``engine.spec_shapes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.conv import PADDINGS as _PADDINGS
from engine.initializers import INITIALIZERS as _INITIALIZERS
from engine.layers import ACTIVATIONS as _ACTIVATIONS
from engine.spec_fields import FieldInfo, Section, jsonable, spec_field

__all__ = [
    "ACTIVATIONS",
    "BUILDABLE_LAYERS",
    "INITIALIZERS",
    "INIT_ALIASES",
    "LAYER_FIELDS",
    "LAYER_TYPES",
    "PADDINGS",
    "LayerSpec",
    "ModelSpec",
]

ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)
INITIALIZERS: tuple[str, ...] = tuple(_INITIALIZERS)
# Accepted on input, stored under the canonical name: a saved spec has one spelling per init.
INIT_ALIASES: dict[str, str] = {"glorot": "glorot_uniform", "xavier": "glorot_uniform"}
LAYER_TYPES: tuple[str, ...] = (
    "dense",
    "dropout",
    "batch_norm",
    "conv2d",
    "maxpool2d",
    "avgpool2d",
    "flatten",
)
# Layer types the network can build (all of them; kept for the registry's consumers).
BUILDABLE_LAYERS: tuple[str, ...] = LAYER_TYPES
PADDINGS: tuple[str, ...] = tuple(_PADDINGS)
# A generous cap: it exists so a typo (units=1e9) fails fast instead of hogging a worker.
_MAX_UNITS = 100_000


@dataclass(frozen=True)
class LayerSpec(Section):
    """One entry of ``model.layers``: its ``type`` plus that type's fields (see ``LAYER_FIELDS``).

    ``params`` holds the normalized fields as ``(name, value)`` pairs in declaration order (a
    tuple, so the object stays hashable and frozen); read them with ``layer.get(name)``.
    """

    type: str
    params: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str) -> Any:
        return dict(self.params)[name]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **{k: jsonable(v) for k, v in self.params}}


# The fields a dense or conv2d layer inherits from the model when null, and a pooling layer's.
_INHERITED = (
    FieldInfo(
        "activation",
        "str",
        None,
        choices=ACTIVATIONS,
        nullable=True,
        doc="Activation after the layer; null = model.activation.",
    ),
    FieldInfo(
        "init",
        "str",
        None,
        choices=INITIALIZERS,
        nullable=True,
        doc="Weight initializer; null = model.init.",
    ),
)
_POOL = (
    FieldInfo("pool_size", "int_pair", (2, 2), lo=1, hi=1024),
    FieldInfo("strides", "int_pair", None, lo=1, hi=1024, nullable=True, doc="null = pool_size."),
)

# Per layer type: field -> FieldInfo. The dense/dropout/conv defaults "None" inherit the model's.
LAYER_FIELDS: dict[str, tuple[FieldInfo, ...]] = {
    "dense": (
        FieldInfo("units", "int", None, lo=1, hi=_MAX_UNITS, required=True, doc="Output width."),
        *_INHERITED,
    ),
    "dropout": (
        FieldInfo(
            "rate",
            "float",
            None,
            lo=0.0,
            hi=1.0,
            hi_open=True,
            required=True,
            doc="Drop probability; the mode is dropout.mode.",
        ),
    ),
    "batch_norm": (
        FieldInfo(
            "momentum",
            "float",
            0.99,
            lo=0.0,
            hi=1.0,
            hi_open=True,
            doc="Running-statistics momentum (Keras convention).",
        ),
        FieldInfo("eps", "float", 1e-3, lo=0.0, lo_open=True, doc="Added to the variance."),
    ),
    "conv2d": (
        FieldInfo("filters", "int", None, lo=1, hi=_MAX_UNITS, required=True, doc="Out channels."),
        FieldInfo(
            "kernel_size",
            "int_pair",
            None,
            lo=1,
            hi=1024,
            required=True,
            doc="Kernel height and width; an int means square.",
        ),
        FieldInfo("strides", "int_pair", (1, 1), lo=1, hi=1024),
        FieldInfo("padding", "str", "valid", choices=PADDINGS),
        *_INHERITED,
    ),
    "maxpool2d": _POOL,
    "avgpool2d": _POOL,
    "flatten": (),
}


@dataclass(frozen=True)
class ModelSpec(Section):
    """Network shape: ``hidden_layers`` widths (``[]`` = a linear model) or a ``layers`` list."""

    hidden_layers: tuple[int, ...] | None = spec_field(
        (64, 32),
        "list[int]",
        lo=1,
        hi=_MAX_UNITS,
        nullable=True,
        doc="Hidden Dense widths; [] is a linear model. null when model.layers is given.",
    )
    layers: tuple[LayerSpec, ...] | None = spec_field(
        None,
        "list[layer]",
        nullable=True,
        doc="Layer objects {type: dense|dropout|...} instead of hidden_layers; the output Dense "
        "layer is added from the loss.",
    )
    activation: str = spec_field("relu", "str", choices=ACTIVATIONS)
    init: str = spec_field("he", "str", choices=INITIALIZERS, doc="Aliases glorot, xavier.")
    leaky_slope: float = spec_field(0.01, lo=0.0, hi=1.0, hi_open=True)

    def dense_widths(self) -> tuple[int, ...]:
        """The hidden Dense widths, from ``hidden_layers`` or the dense entries of ``layers``."""
        if self.layers is None:
            return self.hidden_layers or ()
        return tuple(la.get("units") for la in self.layers if la.type == "dense")
