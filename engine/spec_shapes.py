"""The hidden layers a spec builds, with the shape of one sample before and after each.

One sample is ``(D,)`` (a row of ``D`` features) or ``(C, H, W)`` (an image). A dense layer of
``M`` units maps ``(D,) -> (M,)``, flattening an image first; conv2d with ``F`` filters, kernel
``kh x kw`` and strides ``sh, sw`` maps ``(C, H, W) -> (F, Ho, Wo)`` and a pooling layer
``(C, H, W) -> (C, Ho, Wo)``, with ``Ho = (H - kh) // sh + 1`` (``valid``) or
``Ho = ceil(H / sh)`` (``same``), likewise ``Wo`` (``engine.conv.output_size``); flatten gives
``(C * H * W,)``; batch_norm and dropout keep the shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.conv import output_size
from engine.errors import SpecError
from engine.spec import Spec
from engine.spec_model import LayerSpec
from engine.spec_parse import parse

__all__ = ["LayerShape", "layer_shapes"]


@dataclass(frozen=True)
class LayerShape:
    """One built layer of ``model.layers`` (or of ``hidden_layers``) and its shapes.

    ``kind`` is the layer type; ``index`` its place in ``model.layers`` (``None`` for a layer the
    engine adds: a Flatten before a Dense that reads an image, the ``hidden_layers`` blocks);
    ``in_shape`` / ``out_shape`` are one sample's shape, ``(C, H, W)`` or ``(D,)``;
    ``activation`` / ``init`` the resolved values of dense and conv2d layers.
    """

    kind: str
    index: int | None
    layer: LayerSpec | None
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    activation: str | None = None
    init: str | None = None

    def activation_init(self) -> tuple[str, str]:
        """``(activation, init)`` of a dense or conv2d layer (:func:`layer_shapes` sets both)."""
        if self.activation is None or self.init is None:
            raise ValueError(f"a {self.kind} layer has no resolved activation and init")
        return self.activation, self.init


def _shape_error(i: int, msg: str, code: str = "shape_error") -> SpecError:
    return SpecError(("model", "layers", i), f"model.layers.{i}: {msg}", code)


def layer_shapes(spec: Spec | Mapping[str, Any], input_shape: tuple[int, ...]) -> list[LayerShape]:
    """The hidden layers a network of ``spec`` builds on inputs of ``input_shape``, with shapes.

    ``input_shape`` is ``(D,)`` for rows of ``D`` features or ``(C, H, W)`` for images. Rules:
    conv2d and pooling layers need an image input; a dense layer (or the output layer) reading an
    image flattens it first (so a spec without conv layers trains on the flattened pixels);
    batch_norm normalizes channels of an image or features of a row. The output Dense is not
    listed (its input is the last ``out_shape``, flattened).

    Raises
    ------
    SpecError
        ``loc == ("model", "layers", i)`` for the first layer that does not fit: ``needs_images``
        (a conv/pool layer after the input became a row), ``shape_error`` (an output with no
        pixels: a window larger than its input); ``("model", "layers", i, "activation")``
        ``not_supported`` for PReLU after a conv layer (its slopes are per unit of a row);
        ``("dropout", "mode")`` ``not_supported`` for DropConnect in a network with conv layers.
    """
    spec = parse(spec)
    model = spec.model
    shape = tuple(int(v) for v in input_shape)
    out: list[LayerShape] = []

    def flat(index: int | None) -> None:
        nonlocal shape
        if len(shape) != 1:
            new = (math.prod(shape),)
            out.append(LayerShape("flatten", index, None, shape, new))
            shape = new

    if model.layers is None:
        for units in model.hidden_layers or ():
            flat(None)
            out.append(
                LayerShape("dense", None, None, shape, (units,), model.activation, model.init)
            )
            shape = (units,)
        return out
    if spec.dropout.mode == "dropconnect" and any(la.type == "conv2d" for la in model.layers):
        raise SpecError(
            ("dropout", "mode"),
            "dropout.mode 'dropconnect' masks the weights of Dense layers and is not defined for "
            "conv2d layers; use 'inverted' or 'standard'.",
            "not_supported",
        )
    for i, la in enumerate(model.layers):
        kind = la.type
        if kind in ("conv2d", "maxpool2d", "avgpool2d"):
            if len(shape) != 3:
                raise _shape_error(
                    i,
                    f"a {kind} layer needs image input (C, H, W), but its input is a row of "
                    f"{shape[0]} values (tabular data, or after a flatten / dense layer).",
                    "needs_images",
                )
            C, H, W = shape
            if kind == "conv2d":
                kh, kw = la.get("kernel_size")
                sh, sw = la.get("strides")
                padding = la.get("padding")
                channels = la.get("filters")
            else:
                kh, kw = la.get("pool_size")
                sh, sw = la.get("strides") or (kh, kw)
                padding = "valid"
                channels = C
            if padding == "valid" and (kh > H or kw > W):
                raise _shape_error(
                    i,
                    f"its {kh}x{kw} window is larger than its {H}x{W} input, so its output would "
                    "be empty; use a smaller kernel_size / pool_size, padding 'same', or fewer "
                    "layers before it.",
                )
            Ho = output_size(H, kh, sh, padding)[0]
            Wo = output_size(W, kw, sw, padding)[0]
            new: tuple[int, ...] = (channels, Ho, Wo)
            if kind == "conv2d":
                act = la.get("activation") or model.activation
                if act == "prelu":
                    raise SpecError(
                        ("model", "layers", i, "activation"),
                        f"model.layers.{i}.activation: prelu has one slope per unit of a row and "
                        "is not supported after a conv2d layer; use leaky_relu.",
                        "not_supported",
                    )
                init = la.get("init") or model.init
                out.append(LayerShape(kind, i, la, shape, new, act, init))
            else:
                out.append(LayerShape(kind, i, la, shape, new))
            shape = new
        elif kind == "flatten":
            new = (math.prod(shape),)
            out.append(LayerShape(kind, i, la, shape, new))
            shape = new
        elif kind == "dense":
            flat(i)
            units = la.get("units")
            act = la.get("activation") or model.activation
            init = la.get("init") or model.init
            out.append(LayerShape(kind, i, la, shape, (units,), act, init))
            shape = (units,)
        else:  # batch_norm, dropout: shape unchanged
            out.append(LayerShape(kind, i, la, shape, shape))
    return out
