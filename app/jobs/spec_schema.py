"""The pydantic models of a training spec, built from the engine's registry of spec fields.

``engine.spec_registry()`` states each field once: its type, default, bounds and choices. The
models below are derived from it, so the API's schema (and /docs) cannot drift from what the
engine accepts; the engine still normalizes the spec after pydantic and fills every default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

import engine
from engine.spec_model import INIT_ALIASES

_BASE_TYPES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool}


class StrictModel(BaseModel):
    # Unknown fields are errors: a typo such as "l1_strength" must not silently train without L1.
    model_config = ConfigDict(extra="forbid")


def _bounds(f: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if f.get("lo") is not None:
        out["gt" if f.get("lo_open") else "ge"] = f["lo"]
    if f.get("hi") is not None:
        out["lt" if f.get("hi_open") else "le"] = f["hi"]
    return out


def _scalar(f: dict[str, Any], kind: str) -> Any:
    """The annotation of one scalar value of field ``f`` (bounds and choices included)."""
    if f.get("choices"):
        choices = list(f["choices"])
        if f["name"] == "init":
            choices += [a for a in INIT_ALIASES if a not in choices]
        return Literal[tuple(choices)]
    base = _BASE_TYPES[kind]
    bounds = _bounds(f)
    if kind == "float":
        bounds["allow_inf_nan"] = False
    return Annotated[base, Field(**bounds)] if bounds else base


def _annotation(f: dict[str, Any], models: dict[str, Any]) -> Any:
    kind = f["type"]
    if kind == "section":
        annotation = models[f["section"]]
        if f["name"] == "early_stopping":
            annotation = annotation | bool  # true = on with its defaults
    elif kind == "list[layer]":
        layer = models["layers"]
        annotation = list[layer]  # type: ignore[valid-type]
    elif kind.startswith("list["):
        # Items are range-checked by the engine, which names the item (loc ends in its index).
        annotation = list[_BASE_TYPES[kind[5:-1]]]  # type: ignore[misc]
    elif kind == "int_pair":
        one = _scalar(f, "int")
        annotation = one | list[one]  # type: ignore[valid-type]
    else:
        annotation = _scalar(f, kind)
    return annotation | None if f.get("nullable") else annotation


def _model(name: str, fields: list[dict[str, Any]], models: dict[str, Any], doc: str) -> Any:
    definitions: dict[str, Any] = {}
    for f in fields:
        info: dict[str, Any] = {}
        if f.get("doc"):
            info["description"] = f["doc"]
        if f.get("required"):
            default: Any = ...
        elif f["type"] == "section" and not f.get("nullable"):
            default = None  # absent: the engine fills the section's defaults
        else:
            default = f.get("default")
        if f["type"] == "section" and default is None:
            definitions[f["name"]] = (_annotation(f, models) | None, Field(None, **info))
        else:
            definitions[f["name"]] = (_annotation(f, models), Field(default, **info))
    return create_model(name, __base__=StrictModel, __doc__=doc, **definitions)


def _build() -> dict[str, Any]:
    sections = engine.spec_registry()["sections"]
    models: dict[str, Any] = {}
    layer_models = []
    for key, fields in sections.items():
        if key.startswith("layers."):
            kind = key.split(".", 1)[1]
            name = "Layer" + "".join(part.title() for part in kind.split("_"))
            typed = [
                {**f, "required": True, "choices": [kind]} if f["name"] == "type" else f
                for f in fields
            ]
            layer_models.append(_model(name, typed, models, f"A `{kind}` layer."))
    models["layers"] = Annotated[Union[tuple(layer_models)], Field(discriminator="type")]  # noqa: UP007
    # Sections may nest sections: build leaves first (the registry lists "" first).
    for key in sorted((k for k in sections if k and not k.startswith("layers.")), reverse=True):
        name = "".join(part.title() for part in key.split("_")) + "Spec"
        models[key] = _model(name, sections[key], models, f"The `{key}` section of the spec.")
    models[""] = _model("EngineSpec", sections[""], models, "The engine's part of a spec.")
    return models


MODELS = _build()
EngineSpec: Any = MODELS[""]
