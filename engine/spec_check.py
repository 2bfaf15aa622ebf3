"""Checking one value of a spec against its field declaration.

:func:`check_value` takes a present (non-``None``) value, its ``loc`` (the path of the field,
e.g. ``("model", "layers", 2, "units")``) and its ``engine.spec_fields.FieldInfo``, and returns
the normalized value (a float, an int, a bool, one of the choices, an ``(int, int)`` pair, a
tuple of ints or floats, or a tuple of ``engine.spec_model.LayerSpec``) or raises
``engine.errors.SpecError`` with that ``loc`` and a stable code (``type_error``,
``out_of_range``, ``unknown_<field>``, ...). :func:`check_mapping` rejects unknown keys;
:func:`check_section` builds a section dataclass from a mapping, each absent field taking its
declared default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from engine.errors import SpecError
from engine.spec_fields import FieldInfo, field_infos
from engine.spec_model import INIT_ALIASES, LAYER_FIELDS, LAYER_TYPES, LayerSpec
from engine.spec_search import MAX_SEARCH_VALUES

__all__ = ["Loc", "check_mapping", "check_section", "check_value", "loc_name"]

# Generous caps (entries of hidden_layers; twice as many of layers): a typo fails fast.
_MAX_LAYERS = 64

Loc = tuple[str | int, ...]


def loc_name(loc: Loc) -> str:
    """``("model", "layers", 0)`` -> ``"model.layers.0"`` (``"spec"`` for the top level)."""
    return ".".join(str(part) for part in loc) or "spec"


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but `"l1": true` is a mistake, not 1.0.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(value: Any, loc: Loc, info: FieldInfo) -> float:
    if not _is_number(value):
        raise SpecError(loc, f"{loc_name(loc)} must be a number, got {value!r}.", "type_error")
    value = float(value)
    if not math.isfinite(value):
        raise SpecError(loc, f"{loc_name(loc)} must be finite, got {value!r}.", "out_of_range")
    lo, hi = info.lo, info.hi
    too_low = lo is not None and (value <= lo if info.lo_open else value < lo)
    too_high = hi is not None and (value >= hi if info.hi_open else value > hi)
    if too_low or too_high:
        left = "(" if info.lo_open else "["
        right = ")" if info.hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise SpecError(
            loc,
            f"{loc_name(loc)} must be in {left}{lo_s}, {hi_s}{right}, got {value:g}.",
            "out_of_range",
        )
    return value


def _int(value: Any, loc: Loc, info: FieldInfo) -> int:
    # Integral floats (20.0) come out of some JSON encoders; accept them, reject 20.5.
    if isinstance(value, float) and not isinstance(value, bool) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(loc, f"{loc_name(loc)} must be an integer, got {value!r}.", "type_error")
    lo = int(info.lo) if info.lo is not None else None
    hi = int(info.hi) if info.hi is not None else None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise SpecError(loc, f"{loc_name(loc)} must be {bound}, got {value}.", "out_of_range")
    return value


def _bool(value: Any, loc: Loc) -> bool:
    if not isinstance(value, bool):
        raise SpecError(loc, f"{loc_name(loc)} must be true or false, got {value!r}.", "type_error")
    return value


# Codes of an unknown choice, by field name (the codes clients already rely on).
_CHOICE_CODES = {
    "task": "unknown_task",
    "loss": "unknown_loss",
    "activation": "unknown_activation",
    "init": "unknown_init",
    "l1_method": "unknown_l1_method",
    "mode": "unknown_dropout_mode",
    "name": "unknown_optimizer",
    "monitor": "unknown_monitor",
    "dtype": "unknown_dtype",
}


def _choice(value: Any, loc: Loc, info: FieldInfo) -> str:
    if not isinstance(value, str):
        raise SpecError(loc, f"{loc_name(loc)} must be a string, got {value!r}.", "type_error")
    if info.name == "init":
        value = INIT_ALIASES.get(value, value)
    choices = info.choices or ()
    if value not in choices:
        raise SpecError(
            loc,
            f"{loc_name(loc)} must be one of {', '.join(choices)}; got {value!r}.",
            _CHOICE_CODES.get(info.name, "unknown_value"),
        )
    return value


def _list(value: Any, loc: Loc, what: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise SpecError(
            loc, f"{loc_name(loc)} must be a list of {what}, got {value!r}.", "type_error"
        )
    return list(value)


def _int_pair(value: Any, loc: Loc, info: FieldInfo) -> tuple[int, int]:
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise SpecError(
                loc, f"{loc_name(loc)} must be an integer or a pair of integers.", "type_error"
            )
        return (_int(value[0], (*loc, 0), info), _int(value[1], (*loc, 1), info))
    v = _int(value, loc, info)
    return (v, v)


def check_value(value: Any, loc: Loc, info: FieldInfo) -> Any:
    """Check one present (non-None) value against its declaration."""
    kind = info.type
    if kind == "float":
        return _float(value, loc, info)
    if kind == "int":
        return _int(value, loc, info)
    if kind == "bool":
        return _bool(value, loc)
    if kind == "str":
        return _choice(value, loc, info)
    if kind == "int_pair":
        return _int_pair(value, loc, info)
    if kind == "list[int]":
        items = _list(value, loc, "integers")
        if len(items) > _MAX_LAYERS:
            raise SpecError(
                loc,
                f"{loc_name(loc)} may have at most {_MAX_LAYERS} entries, got {len(items)}.",
                "out_of_range",
            )
        return tuple(_int(v, (*loc, i), info) for i, v in enumerate(items))
    if kind == "list[float]":
        items = _list(value, loc, "numbers")
        if not items or len(items) > MAX_SEARCH_VALUES:
            raise SpecError(
                loc, f"{loc_name(loc)} must have 1 to {MAX_SEARCH_VALUES} entries.", "out_of_range"
            )
        return tuple(_float(v, (*loc, i), info) for i, v in enumerate(items))
    if kind == "list[layer]":
        items = _list(value, loc, "layer objects")
        if len(items) > 2 * _MAX_LAYERS:
            raise SpecError(
                loc, f"{loc_name(loc)} may have at most {2 * _MAX_LAYERS} layers.", "out_of_range"
            )
        return tuple(_layer(v, (*loc, i)) for i, v in enumerate(items))
    raise AssertionError(kind)  # pragma: no cover


def check_mapping(raw: Any, loc: Loc, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The present (non-None) entries of a mapping, rejecting unknown keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SpecError(loc, f"{loc_name(loc)} must be an object, got {raw!r}.", "type_error")
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in allowed:
            raise SpecError(
                (*loc, key),
                f"Unknown field {loc_name((*loc, key))!s}; allowed: {', '.join(allowed)}.",
                "unknown_field",
            )
        if value is not None:
            out[key] = value
    return out


def check_section(cls: type, raw: Any, loc: Loc) -> Any:
    """Build section ``cls`` from ``raw``: each given field checked against its declaration,
    absent (or ``None``) fields take their declared default."""
    infos = {f.name: f for f in field_infos(cls)}
    given = check_mapping(raw, loc, tuple(infos))
    kwargs = {}
    for name, info in infos.items():
        if name in given:
            kwargs[name] = check_value(given[name], (*loc, name), info)
    return cls(**kwargs)


def _layer(raw: Any, loc: Loc) -> LayerSpec:
    if not isinstance(raw, Mapping):
        raise SpecError(loc, f"{loc_name(loc)} must be a layer object, got {raw!r}.", "type_error")
    kind = raw.get("type")
    if kind not in LAYER_FIELDS:
        raise SpecError(
            (*loc, "type"),
            f"{loc_name((*loc, 'type'))} must be one of {', '.join(LAYER_TYPES)}; got {kind!r}.",
            "unknown_layer",
        )
    infos = LAYER_FIELDS[kind]
    given = check_mapping(raw, loc, ("type", *(f.name for f in infos)))
    params = []
    for info in infos:
        if info.name in given:
            value = check_value(given[info.name], (*loc, info.name), info)
        elif info.required:
            raise SpecError(
                (*loc, info.name),
                f"{loc_name((*loc, info.name))} is required for a {kind} layer.",
                "missing_field",
            )
        else:
            value = info.default
        params.append((info.name, value))
    return LayerSpec(kind, tuple(params))
