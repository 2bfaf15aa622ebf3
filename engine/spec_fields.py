"""How a spec field is declared: once, with its default, type, bounds and choices.

Each section of the spec is a frozen dataclass (a :class:`Section`) whose fields are declared
with :func:`spec_field`, e.g.::

    l1: float = spec_field(0.0, lo=0.0)                      # a float >= 0, default 0
    name: str = spec_field("sgd", "str", choices=OPTIMIZERS)  # one of OPTIMIZERS

Each declaration becomes a :class:`FieldInfo` (:func:`field_infos`), which both the validation
(``engine.spec_check``) and the machine-readable registry (``engine.spec.registry``) read, so a
default or a bound exists in one place. A bound admits ``lo <= value <= hi`` (strict on a side
whose ``lo_open`` / ``hi_open`` is set; ``None`` = unbounded).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["FieldInfo", "Section", "field_infos", "jsonable", "section_meta", "spec_field"]


@dataclass(frozen=True)
class FieldInfo:
    """One spec field as the registry describes it.

    Attributes
    ----------
    name : str
    type : str
        ``"float"``, ``"int"``, ``"bool"``, ``"str"`` (one of ``choices``), ``"list[int]"``,
        ``"list[float]"``, ``"int_pair"`` (an int or ``[int, int]``, stored as ``[int, int]``),
        ``"list[layer]"`` (layer objects, see the ``layers.<type>`` sections) or ``"section"``
        (a nested object, see the section named ``section``).
    default : Any
        The default; ``None`` means "absent/off", "inferred" or "the optimizer's own" (``doc``
        says which).
    lo, hi : float or None
        Bounds (``None`` = unbounded); ``lo_open`` / ``hi_open`` say whether they are excluded.
    choices : tuple of str or None
    nullable : bool
        Whether ``None`` is a stored value (for the other fields ``None`` means "use the default").
    required : bool
        Whether the field must be given (the fields of some layer types).
    section : str or None
        For ``type == "section"``: the registry key of the nested section.
    doc : str
    """

    name: str
    type: str
    default: Any
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    section: str | None = None
    doc: str = ""
    required: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``choices`` as a list)."""
        out = dataclasses.asdict(self)
        out["choices"] = None if self.choices is None else list(self.choices)
        out["default"] = jsonable(self.default)
        return out


def spec_field(default: Any = None, type: str = "float", **meta: Any) -> Any:
    """A dataclass field with its default and its registry metadata (the one declaration)."""
    if isinstance(default, list):
        raise TypeError("use a tuple default")
    return field(default=default, metadata={"spec": {"type": type, **meta}})


def section_meta(section: str, *, nullable: bool = False, doc: str = "") -> dict[str, Any]:
    """Registry metadata of a nested section field."""
    return {"spec": {"type": "section", "section": section, "nullable": nullable, "doc": doc}}


@functools.cache
def field_infos(cls: type) -> tuple[FieldInfo, ...]:
    """The :class:`FieldInfo` of every field of section ``cls``, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata["spec"])
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = jsonable(f.default_factory())
        else:
            default = None
        out.append(FieldInfo(name=f.name, default=default, **meta))
    return tuple(out)


def jsonable(value: Any) -> Any:
    """``value`` with sections as dicts and tuples as lists."""
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    return value


class Section:
    """Mixin of the frozen spec sections: ``to_dict`` (JSON-able, field order)."""

    # Every section is a dataclass; declaring what @dataclass sets lets fields() accept self.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
