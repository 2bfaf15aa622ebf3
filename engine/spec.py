"""The training spec: typed, frozen objects with every default stated once.

``parse(raw)`` turns a user's (partial) spec mapping into a frozen :class:`Spec`; ``normalize_spec``
is ``parse(raw).to_dict()``, the complete JSON-able form the service stores. Normalization is
idempotent: ``parse(spec.to_dict()) == spec``. Unknown keys are rejected, numbers are range-checked
and the loss must fit the task; every failure is a :class:`~engine.errors.SpecError` whose ``loc``
is the path of the field at fault.

Each section is a frozen dataclass whose fields carry their default, type, bounds and choices
(``dataclasses.field(metadata=...)``): the validation below and the machine-readable
:func:`registry` read those declarations, so a default or a bound exists in one place. Optimizer
hyperparameters default to ``None``, "the optimizer's own"
(``engine.optimizers.OPTIMIZER_DEFAULTS``): ``parse`` resolves them, so
``{"optimizer": {"name": "adadelta"}}`` trains with Adadelta's ``learning_rate=1.0, rho=0.95,
eps=1e-6``; fields the chosen optimizer does not read are ``None``.

Normalized shape (defaults shown)::

    {
      "task": "classification",               # inferred from the loss when absent
      "model": {"hidden_layers": [64, 32], "layers": None, "activation": "relu", "init": "he",
                "leaky_slope": 0.01},         # layers: a list of layer objects instead
      "loss": "softmax_cross_entropy",        # "mse" when task == "regression"
      "loss_params": {"huber_delta": 1.0, "hinge_margin": 1.0, "eps": 1e-7},
      "regularization": {"l1": 0.0, "l2": 0.0, "group_l1": 0.0, "l1_method": "proximal"},
      "dropout": {"input": 0.0, "hidden": 0.0, "mode": "inverted"},
      "optimizer": {"name": "sgd", "learning_rate": 0.01, "momentum": 0.0, "nesterov": False,
                    "decay": 0.0, "beta1": None, "beta2": None, "eps": None, "rho": None,
                    "tol": None, "step_tol": None},
      "epochs": 20, "batch_size": 32, "validation_split": 0.0, "shuffle": True, "seed": 0,
      "early_stopping": None,                 # or {"monitor", "patience", "min_delta"}
      "standardize": True,
      "dtype": "float32",
      "keep": "last",                         # "best" when validation_split > 0
      "augmentation": None,                   # or Keras ImageDataGenerator names (images only)
      "search": None,                         # or {"param", "values" | "num" + "min_ratio", ...}
    }

A field given as ``None`` counts as absent (its default applies), except ``early_stopping``,
``augmentation`` and ``search`` where ``None`` means "off". ``early_stopping: true`` switches it
on with defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from engine.errors import SpecError
from engine.initializers import INITIALIZERS as _INITIALIZERS
from engine.layers import ACTIVATIONS as _ACTIVATIONS
from engine.layers import DROPOUT_MODES as _DROPOUT_MODES
from engine.losses import FISTA_LOSSES
from engine.losses import LOSS_TASKS as _LOSS_TASKS
from engine.losses import LOSSES as _LOSSES
from engine.optimizers import OPTIMIZER_DEFAULTS
from engine.optimizers import OPTIMIZERS as _OPTIMIZERS

__all__ = [
    "ACTIVATIONS",
    "DROPOUT_MODES",
    "DTYPES",
    "INITIALIZERS",
    "INIT_ALIASES",
    "KEEP",
    "L1_METHODS",
    "LAYER_TYPES",
    "LOSSES",
    "LOSS_TASKS",
    "MONITORS",
    "OPTIMIZERS",
    "SEARCH_PARAMS",
    "TASKS",
    "Augmentation",
    "DropoutSpec",
    "EarlyStopping",
    "FieldInfo",
    "LayerSpec",
    "LossParams",
    "ModelSpec",
    "OptimizerSpec",
    "Regularization",
    "Search",
    "Spec",
    "check_classes",
    "default_spec",
    "normalize_spec",
    "parse",
    "registry",
]

TASKS: tuple[str, ...] = ("classification", "regression")
LOSSES: tuple[str, ...] = tuple(_LOSSES)
LOSS_TASKS: dict[str, str] = dict(_LOSS_TASKS)
ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)
DROPOUT_MODES: tuple[str, ...] = tuple(_DROPOUT_MODES)
OPTIMIZERS: tuple[str, ...] = tuple(_OPTIMIZERS)
INITIALIZERS: tuple[str, ...] = tuple(_INITIALIZERS)
# Accepted on input, stored under the canonical name: a saved spec has one spelling per init.
INIT_ALIASES: dict[str, str] = {"glorot": "glorot_uniform", "xavier": "glorot_uniform"}
L1_METHODS: tuple[str, ...] = ("proximal", "subgradient")
DTYPES: tuple[str, ...] = ("float32", "float64")
MONITORS: tuple[str, ...] = ("val_loss", "loss")
KEEP: tuple[str, ...] = ("best", "last")
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
PADDINGS: tuple[str, ...] = ("valid", "same")
# The strengths a regularization path may vary (engine.path), by their place in the spec.
SEARCH_PARAMS: tuple[str, ...] = (
    "regularization.l1",
    "regularization.l2",
    "regularization.group_l1",
    "dropout.hidden",
    "dropout.input",
)
SEARCH_SELECT: tuple[str, ...] = ("min", "1se")

_DEFAULT_LOSS = {"classification": "softmax_cross_entropy", "regression": "mse"}
# Generous caps: they exist so a typo (epochs=1e9) fails fast instead of hogging a worker for days.
_MAX_EPOCHS = 100_000
_MAX_UNITS = 100_000
_MAX_LAYERS = 64
# A search multiplies one fit's work by points x (folds + 1): both are bounded.
_MAX_SEARCH_VALUES = 200


# --- field declarations ---------------------------------------------------------------------------


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
        out["default"] = _jsonable(self.default)
        return out


def _f(default: Any = None, type: str = "float", **meta: Any) -> Any:
    """A dataclass field with its default and its registry metadata (the one declaration)."""
    if isinstance(default, list):
        raise TypeError("use a tuple default")
    return field(default=default, metadata={"spec": {"type": type, **meta}})


def _sect(section: str, *, nullable: bool = False, doc: str = "") -> dict[str, Any]:
    """Registry metadata of a nested section field."""
    return {"spec": {"type": "section", "section": section, "nullable": nullable, "doc": doc}}


@functools.cache
def _infos(cls: type) -> tuple[FieldInfo, ...]:
    out = []
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata["spec"])
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = _jsonable(f.default_factory())
        else:
            default = None
        out.append(FieldInfo(name=f.name, default=default, **meta))
    return tuple(out)


def _jsonable(value: Any) -> Any:
    if isinstance(value, _Section):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


class _Section:
    """Mixin of the frozen spec sections: ``to_dict`` (JSON-able, field order)."""

    # Every section is a dataclass; declaring what @dataclass sets lets fields() accept self.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


# --- sections -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec(_Section):
    """One entry of ``model.layers``: its ``type`` plus that type's fields (see ``LAYER_FIELDS``).

    ``params`` holds the normalized fields as ``(name, value)`` pairs in declaration order (a
    tuple, so the object stays hashable and frozen); read them with ``layer.get(name)``.
    """

    type: str
    params: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str) -> Any:
        return dict(self.params)[name]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **{k: _jsonable(v) for k, v in self.params}}


# Per layer type: field -> FieldInfo. The dense/dropout/conv defaults "None" inherit the model's.
LAYER_FIELDS: dict[str, tuple[FieldInfo, ...]] = {
    "dense": (
        FieldInfo("units", "int", None, lo=1, hi=_MAX_UNITS, required=True, doc="Output width."),
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
        FieldInfo(
            "activation",
            "str",
            None,
            choices=ACTIVATIONS,
            nullable=True,
            doc="null = model.activation.",
        ),
        FieldInfo(
            "init", "str", None, choices=INITIALIZERS, nullable=True, doc="null = model.init."
        ),
    ),
    "maxpool2d": (
        FieldInfo("pool_size", "int_pair", (2, 2), lo=1, hi=1024),
        FieldInfo(
            "strides", "int_pair", None, lo=1, hi=1024, nullable=True, doc="null = pool_size."
        ),
    ),
    "avgpool2d": (
        FieldInfo("pool_size", "int_pair", (2, 2), lo=1, hi=1024),
        FieldInfo(
            "strides", "int_pair", None, lo=1, hi=1024, nullable=True, doc="null = pool_size."
        ),
    ),
    "flatten": (),
}


@dataclass(frozen=True)
class ModelSpec(_Section):
    """Network shape: ``hidden_layers`` widths (``[]`` = a linear model) or a ``layers`` list."""

    hidden_layers: tuple[int, ...] | None = _f(
        (64, 32),
        "list[int]",
        lo=1,
        hi=_MAX_UNITS,
        nullable=True,
        doc="Hidden Dense widths; [] is a linear model. null when model.layers is given.",
    )
    layers: tuple[LayerSpec, ...] | None = _f(
        None,
        "list[layer]",
        nullable=True,
        doc="Layer objects {type: dense|dropout|...} instead of hidden_layers; the output Dense "
        "layer is added from the loss.",
    )
    activation: str = _f("relu", "str", choices=ACTIVATIONS)
    init: str = _f("he", "str", choices=INITIALIZERS, doc="Aliases glorot, xavier.")
    leaky_slope: float = _f(0.01, lo=0.0, hi=1.0, hi_open=True)

    def dense_widths(self) -> tuple[int, ...]:
        """The hidden Dense widths, from ``hidden_layers`` or the dense entries of ``layers``."""
        if self.layers is None:
            return self.hidden_layers or ()
        return tuple(la.get("units") for la in self.layers if la.type == "dense")


@dataclass(frozen=True)
class LossParams(_Section):
    """Loss hyperparameters."""

    huber_delta: float = _f(1.0, lo=0.0, lo_open=True, doc="Huber threshold delta.")
    hinge_margin: float = _f(1.0, lo=0.0, lo_open=True, doc="Hinge margin delta.")
    eps: float = _f(
        1e-7,
        lo=0.0,
        hi=0.5,
        lo_open=True,
        hi_open=True,
        doc="Kept for stored specs; unused: binary cross-entropy is computed from the logits.",
    )


@dataclass(frozen=True)
class Regularization(_Section):
    """``l1 * sum|W| + l2 * sum(W^2) + group_l1 * sum_j ||W1[j, :]||_2`` (weights only)."""

    l1: float = _f(0.0, lo=0.0)
    l2: float = _f(0.0, lo=0.0)
    group_l1: float = _f(0.0, lo=0.0)
    l1_method: str = _f("proximal", "str", choices=L1_METHODS)


@dataclass(frozen=True)
class DropoutSpec(_Section):
    """Dropout: rates are DROP probabilities in [0, 1)."""

    input: float = _f(0.0, lo=0.0, hi=1.0, hi_open=True)
    hidden: float = _f(0.0, lo=0.0, hi=1.0, hi_open=True)
    mode: str = _f("inverted", "str", choices=DROPOUT_MODES)


_OWN = "null = the optimizer's own (OPTIMIZER_DEFAULTS); null in the stored spec if unused."


@dataclass(frozen=True)
class OptimizerSpec(_Section):
    """Optimizer and its hyperparameters; each optimizer reads its own (see OPTIMIZER_DEFAULTS)."""

    name: str = _f("sgd", "str", choices=OPTIMIZERS)
    learning_rate: float | None = _f(None, lo=0.0, lo_open=True, nullable=True, doc=_OWN)
    momentum: float | None = _f(None, lo=0.0, hi=1.0, hi_open=True, nullable=True, doc=_OWN)
    nesterov: bool | None = _f(None, "bool", nullable=True, doc=_OWN)
    decay: float | None = _f(
        None, lo=0.0, nullable=True, doc="lr_t = lr / (1 + decay * t). " + _OWN
    )
    beta1: float | None = _f(None, lo=0.0, hi=1.0, hi_open=True, nullable=True, doc=_OWN)
    beta2: float | None = _f(None, lo=0.0, hi=1.0, hi_open=True, nullable=True, doc=_OWN)
    eps: float | None = _f(None, lo=0.0, lo_open=True, nullable=True, doc=_OWN)
    rho: float | None = _f(None, lo=0.0, hi=1.0, hi_open=True, nullable=True, doc=_OWN)
    tol: float | None = _f(
        None,
        lo=0.0,
        nullable=True,
        doc="fista: stop on duality gap <= tol * var(y) (Lasso) or KKT residual <= tol * "
        "||grad f(0)||_inf (every other loss). " + _OWN,
    )
    step_tol: float | None = _f(
        None,
        lo=0.0,
        nullable=True,
        doc="fista: also stop once no parameter moves by more than step_tol * max(1, max|W|) "
        "(0 = only a move of exactly 0). " + _OWN,
    )


@dataclass(frozen=True)
class EarlyStopping(_Section):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    monitor: str | None = _f(
        None, "str", choices=MONITORS, doc="null = val_loss with a validation split, else loss."
    )
    patience: int = _f(5, "int", lo=1)
    min_delta: float = _f(0.0, lo=0.0)


@dataclass(frozen=True)
class Augmentation(_Section):
    """Image augmentation per training batch, Keras ``ImageDataGenerator`` names (see
    ``engine.augment``)."""

    featurewise_center: bool = _f(False, "bool")
    featurewise_std_normalization: bool = _f(False, "bool")
    rotation_range: float = _f(0.0, lo=0.0, hi=180.0, doc="Degrees.")
    width_shift_range: float = _f(0.0, lo=0.0, hi=1.0, doc="Fraction of the width.")
    height_shift_range: float = _f(0.0, lo=0.0, hi=1.0, doc="Fraction of the height.")
    zoom_range: float = _f(0.0, lo=0.0, hi=1.0, hi_open=True, doc="Zoom in [1 - z, 1 + z].")
    horizontal_flip: bool = _f(False, "bool")
    vertical_flip: bool = _f(False, "bool")


@dataclass(frozen=True)
class Search(_Section):
    """A regularization path over ``param``: explicit ``values`` or a log grid of ``num`` values
    from ``lambda_max`` down to ``min_ratio * lambda_max``; ``folds``-fold CV picks one by
    ``select`` (validated here only)."""

    param: str = _f("regularization.l1", "str", choices=SEARCH_PARAMS)
    values: tuple[float, ...] | None = _f(
        None, "list[float]", lo=0.0, nullable=True, doc="Explicit grid; excludes num/min_ratio."
    )
    num: int | None = _f(
        20,
        "int",
        lo=2,
        hi=_MAX_SEARCH_VALUES,
        nullable=True,
        doc="Grid size (null when values is given).",
    )
    min_ratio: float | None = _f(
        1e-3,
        lo=0.0,
        hi=1.0,
        lo_open=True,
        hi_open=True,
        nullable=True,
        doc="Smallest / largest lambda (null when values is given).",
    )
    folds: int | None = _f(
        None,
        "int",
        lo=2,
        hi=20,
        nullable=True,
        doc="K-fold cross-validation; null = the validation split scores each point.",
    )
    select: str = _f(
        "1se",
        "str",
        choices=SEARCH_SELECT,
        doc="min: lowest mean CV loss; 1se: largest lambda within one standard error.",
    )


@dataclass(frozen=True)
class Spec(_Section):
    """A complete, validated training spec (see the module docstring for the dict form)."""

    task: str = _f("classification", "str", choices=TASKS, doc="Default: inferred from the loss.")
    model: ModelSpec = field(default_factory=ModelSpec, metadata=_sect("model"))
    loss: str = _f(
        "softmax_cross_entropy",
        "str",
        choices=LOSSES,
        doc="Default: softmax_cross_entropy (classification) or mse (regression).",
    )
    loss_params: LossParams = field(default_factory=LossParams, metadata=_sect("loss_params"))
    regularization: Regularization = field(
        default_factory=Regularization, metadata=_sect("regularization")
    )
    dropout: DropoutSpec = field(default_factory=DropoutSpec, metadata=_sect("dropout"))
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec, metadata=_sect("optimizer"))
    epochs: int = _f(20, "int", lo=1, hi=_MAX_EPOCHS)
    batch_size: int = _f(32, "int", lo=1)
    validation_split: float = _f(0.0, lo=0.0, hi=1.0, hi_open=True)
    shuffle: bool = _f(True, "bool")
    # default_rng rejects negative seeds; < 2**63 keeps the seed storable as a signed 64-bit int.
    seed: int = _f(0, "int", lo=0, hi=2**63 - 1)
    early_stopping: EarlyStopping | None = field(
        default=None,
        metadata=_sect("early_stopping", nullable=True, doc="null = off; true = on with defaults."),
    )
    standardize: bool = _f(True, "bool")
    dtype: str = _f("float32", "str", choices=DTYPES)
    keep: str = _f(
        "last",
        "str",
        choices=KEEP,
        doc="Which epoch's weights the model keeps; default best with a validation split "
        "(lowest val_loss), else last.",
    )
    augmentation: Augmentation | None = field(
        default=None, metadata=_sect("augmentation", nullable=True, doc="null = off.")
    )
    search: Search | None = field(
        default=None, metadata=_sect("search", nullable=True, doc="null = a single fit.")
    )


_SECTIONS: dict[str, type] = {
    "": Spec,
    "model": ModelSpec,
    "loss_params": LossParams,
    "regularization": Regularization,
    "dropout": DropoutSpec,
    "optimizer": OptimizerSpec,
    "early_stopping": EarlyStopping,
    "augmentation": Augmentation,
    "search": Search,
}

FIELDS: dict[str, tuple[FieldInfo, ...]] = {name: _infos(cls) for name, cls in _SECTIONS.items()}
FIELDS.update(
    {
        f"layers.{t}": (FieldInfo("type", "str", t, choices=(t,)), *fs)
        for t, fs in LAYER_FIELDS.items()
    }
)


def registry() -> dict[str, Any]:
    """Machine-readable description of every spec field (JSON-able).

    Returns
    -------
    dict
        ``{"sections": {section: [field, ...]}, "optimizer_defaults": {name: {field: value}},
        "loss_tasks": {loss: task}, "buildable_layers": [...]}``. Section keys are ``""`` (the
        top level), ``"model"``, ``"loss_params"``, ``"regularization"``, ``"dropout"``,
        ``"optimizer"``, ``"early_stopping"``, ``"augmentation"``, ``"search"`` and
        ``"layers.<type>"`` for each entry type of ``model.layers``; each field is
        :meth:`FieldInfo.to_dict` (``name``, ``type``, ``default``, ``lo``, ``hi``,
        ``lo_open``, ``hi_open``, ``choices``, ``nullable``, ``section``, ``doc``).
    """
    return {
        "sections": {name: [f.to_dict() for f in fs] for name, fs in FIELDS.items()},
        "optimizer_defaults": {k: dict(v) for k, v in OPTIMIZER_DEFAULTS.items()},
        "loss_tasks": dict(LOSS_TASKS),
        "buildable_layers": list(BUILDABLE_LAYERS),
    }


# --- field checkers -------------------------------------------------------------------------------
# Each returns the normalized value or raises SpecError with the field's loc.

Loc = tuple[str | int, ...]


def _name(loc: Loc) -> str:
    return ".".join(str(part) for part in loc) or "spec"


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but `"l1": true` is a mistake, not 1.0.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(value: Any, loc: Loc, info: FieldInfo) -> float:
    if not _is_number(value):
        raise SpecError(loc, f"{_name(loc)} must be a number, got {value!r}.", "type_error")
    value = float(value)
    if not math.isfinite(value):
        raise SpecError(loc, f"{_name(loc)} must be finite, got {value!r}.", "out_of_range")
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
            f"{_name(loc)} must be in {left}{lo_s}, {hi_s}{right}, got {value:g}.",
            "out_of_range",
        )
    return value


def _int(value: Any, loc: Loc, info: FieldInfo) -> int:
    # Integral floats (20.0) come out of some JSON encoders; accept them, reject 20.5.
    if isinstance(value, float) and not isinstance(value, bool) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(loc, f"{_name(loc)} must be an integer, got {value!r}.", "type_error")
    lo = int(info.lo) if info.lo is not None else None
    hi = int(info.hi) if info.hi is not None else None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise SpecError(loc, f"{_name(loc)} must be {bound}, got {value}.", "out_of_range")
    return value


def _bool(value: Any, loc: Loc) -> bool:
    if not isinstance(value, bool):
        raise SpecError(loc, f"{_name(loc)} must be true or false, got {value!r}.", "type_error")
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
        raise SpecError(loc, f"{_name(loc)} must be a string, got {value!r}.", "type_error")
    if info.name == "init":
        value = INIT_ALIASES.get(value, value)
    choices = info.choices or ()
    if value not in choices:
        raise SpecError(
            loc,
            f"{_name(loc)} must be one of {', '.join(choices)}; got {value!r}.",
            _CHOICE_CODES.get(info.name, "unknown_value"),
        )
    return value


def _list(value: Any, loc: Loc, what: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise SpecError(loc, f"{_name(loc)} must be a list of {what}, got {value!r}.", "type_error")
    return list(value)


def _int_pair(value: Any, loc: Loc, info: FieldInfo) -> tuple[int, int]:
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise SpecError(
                loc, f"{_name(loc)} must be an integer or a pair of integers.", "type_error"
            )
        return (_int(value[0], (*loc, 0), info), _int(value[1], (*loc, 1), info))
    v = _int(value, loc, info)
    return (v, v)


def _value(value: Any, loc: Loc, info: FieldInfo) -> Any:
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
                f"{_name(loc)} may have at most {_MAX_LAYERS} entries, got {len(items)}.",
                "out_of_range",
            )
        return tuple(_int(v, (*loc, i), info) for i, v in enumerate(items))
    if kind == "list[float]":
        items = _list(value, loc, "numbers")
        if not items or len(items) > _MAX_SEARCH_VALUES:
            raise SpecError(
                loc, f"{_name(loc)} must have 1 to {_MAX_SEARCH_VALUES} entries.", "out_of_range"
            )
        return tuple(_float(v, (*loc, i), info) for i, v in enumerate(items))
    if kind == "list[layer]":
        items = _list(value, loc, "layer objects")
        if len(items) > 2 * _MAX_LAYERS:
            raise SpecError(
                loc, f"{_name(loc)} may have at most {2 * _MAX_LAYERS} layers.", "out_of_range"
            )
        return tuple(_layer(v, (*loc, i)) for i, v in enumerate(items))
    raise AssertionError(kind)  # pragma: no cover


def _mapping(raw: Any, loc: Loc, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The present (non-None) entries of a mapping, rejecting unknown keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SpecError(loc, f"{_name(loc)} must be an object, got {raw!r}.", "type_error")
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in allowed:
            raise SpecError(
                (*loc, key),
                f"Unknown field {_name((*loc, key))!s}; allowed: {', '.join(allowed)}.",
                "unknown_field",
            )
        if value is not None:
            out[key] = value
    return out


def _section(cls: type, raw: Any, loc: Loc) -> Any:
    """Build section ``cls`` from ``raw``: each given field checked against its declaration,
    absent (or ``None``) fields take their declared default."""
    infos = {f.name: f for f in _infos(cls)}
    given = _mapping(raw, loc, tuple(infos))
    kwargs = {}
    for name, info in infos.items():
        if name in given:
            kwargs[name] = _value(given[name], (*loc, name), info)
    return cls(**kwargs)


def _layer(raw: Any, loc: Loc) -> LayerSpec:
    if not isinstance(raw, Mapping):
        raise SpecError(loc, f"{_name(loc)} must be a layer object, got {raw!r}.", "type_error")
    kind = raw.get("type")
    if kind not in LAYER_FIELDS:
        raise SpecError(
            (*loc, "type"),
            f"{_name((*loc, 'type'))} must be one of {', '.join(LAYER_TYPES)}; got {kind!r}.",
            "unknown_layer",
        )
    infos = LAYER_FIELDS[kind]
    given = _mapping(raw, loc, ("type", *(f.name for f in infos)))
    params = []
    for info in infos:
        if info.name in given:
            value = _value(given[info.name], (*loc, info.name), info)
        elif info.required:
            raise SpecError(
                (*loc, info.name),
                f"{_name((*loc, info.name))} is required for a {kind} layer.",
                "missing_field",
            )
        else:
            value = info.default
        params.append((info.name, value))
    return LayerSpec(kind, tuple(params))


# --- the whole spec -------------------------------------------------------------------------------


def _model(raw: Any) -> ModelSpec:
    given = _mapping(raw, ("model",), tuple(f.name for f in _infos(ModelSpec)))
    if "layers" in given and "hidden_layers" in given:
        raise SpecError(
            ("model", "layers"),
            "model.layers and model.hidden_layers are two ways to say the same thing; give one.",
            "conflict",
        )
    if "hidden_layers" in given and not isinstance(given["hidden_layers"], list | tuple):
        raise SpecError(
            ("model", "hidden_layers"),
            f"model.hidden_layers must be a list of layer widths, got {given['hidden_layers']!r}.",
            "type_error",
        )
    model = _section(ModelSpec, given, ("model",))
    if model.layers is not None:
        model = dataclasses.replace(model, hidden_layers=None)
    return model


def _optimizer(raw: Any) -> OptimizerSpec:
    """The optimizer section with every hyperparameter it reads resolved to a value."""
    given = _section(OptimizerSpec, raw, ("optimizer",))
    own = OPTIMIZER_DEFAULTS[given.name]
    values: dict[str, Any] = {}
    for f in dataclasses.fields(OptimizerSpec):
        if f.name == "name":
            continue
        value = getattr(given, f.name)
        values[f.name] = (own[f.name] if value is None else value) if f.name in own else None
    momentum = given.name in ("momentum", "nesterov") or (
        given.name == "sgd" and values["nesterov"]
    )
    if momentum and not values["momentum"]:
        # Momentum needs a momentum: 0 (an old stored default) means the conventional 0.9.
        values["momentum"] = OPTIMIZER_DEFAULTS["momentum"]["momentum"]
    if given.name == "nesterov":
        values["nesterov"] = True
    return OptimizerSpec(name=given.name, **values)


def _early_stopping(raw: Any, validation_split: float) -> EarlyStopping | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    es = _section(EarlyStopping, raw, ("early_stopping",))
    monitor = es.monitor or ("val_loss" if validation_split > 0 else "loss")
    if monitor == "val_loss" and validation_split <= 0:
        raise SpecError(
            ("early_stopping", "monitor"),
            "early_stopping.monitor is 'val_loss' but validation_split is 0; "
            "set validation_split > 0 or monitor 'loss'.",
            "requires_validation",
        )
    return dataclasses.replace(es, monitor=monitor)


def _search(raw: Any) -> Search | None:
    if raw is None:
        return None
    given = _mapping(raw, ("search",), tuple(f.name for f in _infos(Search)))
    if "values" in given:
        for key in ("num", "min_ratio"):
            if key in given:
                raise SpecError(
                    ("search", key),
                    f"search.{key} and search.values are two ways to give the grid; give one.",
                    "conflict",
                )
        search = _section(Search, given, ("search",))
        return dataclasses.replace(search, num=None, min_ratio=None)
    return _section(Search, given, ("search",))


def parse(spec: Mapping[str, Any] | Spec | None) -> Spec:
    """Validate a (partial) spec mapping and fill every default: a frozen :class:`Spec`.

    Parameters
    ----------
    spec : mapping, Spec or None
        A (partial) spec as documented in the module docstring, e.g. a stored ``to_dict()``
        (parsed to the same object). Not modified. A :class:`Spec` is returned as is.

    Raises
    ------
    SpecError
        With ``loc`` = path of the first field at fault and one of the codes ``unknown_field``,
        ``type_error``, ``out_of_range``, ``conflict``, ``missing_field``, ``unknown_task``,
        ``unknown_loss``, ``loss_task_mismatch``, ``unknown_activation``, ``unknown_init``,
        ``unknown_l1_method``, ``unknown_dropout_mode``, ``unknown_optimizer``,
        ``unknown_monitor``, ``unknown_layer``, ``unknown_value``, ``requires_validation``,
        ``unknown_dtype``; for ``optimizer.name == "fista"`` also ``requires_linear``,
        ``requires_smooth_loss``, ``requires_no_dropout``.
    """
    if isinstance(spec, Spec):
        return spec
    top = {f.name: f for f in _infos(Spec)}
    raw = _mapping(spec, (), tuple(top))
    task = _value(raw["task"], ("task",), top["task"]) if "task" in raw else None
    loss = raw.get("loss", _DEFAULT_LOSS[task or "classification"])
    loss = _value(loss, ("loss",), top["loss"])
    if task is None:
        task = LOSS_TASKS[loss]
    elif LOSS_TASKS[loss] != task:
        allowed = ", ".join(name for name in LOSSES if LOSS_TASKS[name] == task)
        raise SpecError(
            ("loss",),
            f"loss {loss!r} is a {LOSS_TASKS[loss]} loss but task is {task!r}; "
            f"use one of {allowed}.",
            "loss_task_mismatch",
        )
    simple = {
        name: _value(raw[name], (name,), info)
        for name, info in top.items()
        if info.type != "section" and name in raw and name not in ("task", "loss")
    }
    validation_split = simple.get("validation_split", top["validation_split"].default)
    if "keep" not in simple:
        simple["keep"] = "best" if validation_split > 0 else "last"
    out = Spec(
        task=task,
        model=_model(raw.get("model")),
        loss=loss,
        loss_params=_section(LossParams, raw.get("loss_params"), ("loss_params",)),
        regularization=_section(Regularization, raw.get("regularization"), ("regularization",)),
        dropout=_section(DropoutSpec, raw.get("dropout"), ("dropout",)),
        optimizer=_optimizer(raw.get("optimizer")),
        early_stopping=_early_stopping(raw.get("early_stopping"), validation_split),
        augmentation=(
            None
            if raw.get("augmentation") is None
            else _section(Augmentation, raw["augmentation"], ("augmentation",))
        ),
        search=_search(raw.get("search")),
        **simple,
    )
    if out.optimizer.name == "fista":
        _check_fista(out)
    _check_precision(out)
    return out


def normalize_spec(spec: Mapping[str, Any] | Spec | None) -> dict[str, Any]:
    """``parse(spec).to_dict()``: the complete JSON-able spec (idempotent). See :func:`parse`."""
    return parse(spec).to_dict()


def default_spec() -> dict[str, Any]:
    """Return the normalized default spec (a softmax-cross-entropy MLP classifier)."""
    return normalize_spec({})


def _check_precision(spec: Spec) -> None:
    """An optimizer ``eps`` below the dtype's smallest normal number rounds to 0 (or to a
    subnormal) in training, and the update divides by zero on every weight whose gradient is 0
    (0 / 0 = NaN): refuse it here rather than let the run "diverge" and blame the step size."""
    eps = spec.optimizer.eps
    tiny = float(np.finfo(spec.dtype).tiny)
    if eps is not None and eps < tiny:
        raise SpecError(
            ("optimizer", "eps"),
            f"optimizer.eps {eps:.3g} is below the smallest normal {spec.dtype} number "
            f"({tiny:.3g}): training would divide by (nearly) zero; use at least {tiny:.3g}.",
            "out_of_range",
        )


def _check_fista(spec: Spec) -> None:
    """FISTA is full-batch accelerated proximal gradient: linear model, smooth loss, no dropout."""
    layers = spec.model.layers or ()
    if spec.model.dense_widths() or any(la.type != "dropout" for la in layers):
        # FISTA's convergence guarantee needs a convex objective: a linear model.
        raise SpecError(
            ("optimizer", "name"),
            "optimizer.name 'fista' trains linear models only; set model.hidden_layers to [].",
            "requires_linear",
        )
    if spec.loss not in FISTA_LOSSES:
        # Its step size 1/L needs a Lipschitz-continuous gradient, which mae and the hinge lack.
        raise SpecError(
            ("loss",),
            f"loss {spec.loss!r} is not smooth; optimizer 'fista' needs one of "
            f"{', '.join(FISTA_LOSSES)}.",
            "requires_smooth_loss",
        )
    for key in ("input", "hidden"):
        if getattr(spec.dropout, key) > 0:
            raise SpecError(
                ("dropout", key),
                f"dropout.{key} must be 0 with optimizer 'fista', which is full-batch and "
                "deterministic.",
                "requires_no_dropout",
            )
    if any(la.type == "dropout" and la.get("rate") > 0 for la in layers):
        raise SpecError(
            ("model", "layers"),
            "model.layers may hold no dropout with optimizer 'fista', which is full-batch and "
            "deterministic.",
            "requires_no_dropout",
        )


def check_classes(spec: Spec | Mapping[str, Any], n_classes: int) -> None:
    """Raise ``SpecError(("loss",), ..., "not_binary")`` when the loss cannot fit ``n_classes``.

    The one place this rule lives: ``fit`` calls it on the encoded target, and the service may
    call it at submission time with the dataset's distinct count.
    """
    loss = spec.loss if isinstance(spec, Spec) else spec["loss"]
    if loss == "binary_cross_entropy" and n_classes != 2:
        raise SpecError(
            ("loss",),
            f"loss 'binary_cross_entropy' needs exactly 2 classes but the target has "
            f"{n_classes}; use softmax_cross_entropy.",
            "not_binary",
        )


# --- layer shapes ---------------------------------------------------------------------------------


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
    from engine.conv import output_size

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
