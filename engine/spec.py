"""The training spec: defaults and validation.

``normalize_spec`` turns a user's (partial) spec into the complete, JSON-able engine spec that every
other module reads. Unknown keys are rejected, numbers are range-checked and the loss must fit the
task; every failure is a :class:`~engine.errors.SpecError` whose ``loc`` is the path of the field at
fault.

Normalized shape (defaults shown)::

    {
      "task": "classification",               # inferred from the loss when absent
      "model": {"hidden_layers": [64, 32], "activation": "relu", "init": "he", "leaky_slope": 0.01},
      "loss": "softmax_cross_entropy",        # "mse" when task == "regression"
      "loss_params": {"huber_delta": 1.0, "hinge_margin": 1.0, "eps": 1e-7},
      "regularization": {"l1": 0.0, "l2": 0.0, "group_l1": 0.0, "l1_method": "proximal"},
      "dropout": {"input": 0.0, "hidden": 0.0, "mode": "inverted"},
      "optimizer": {"name": "sgd", "learning_rate": 0.01, "momentum": 0.0, "nesterov": False,
                    "decay": 0.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "rho": 0.9},
      "epochs": 20, "batch_size": 32, "validation_split": 0.0, "shuffle": True, "seed": 0,
      "early_stopping": None,                 # or {"monitor", "patience", "min_delta"}
      "standardize": True,
      "dtype": "float32",
    }

A field given as ``None`` counts as absent (its default applies), except ``early_stopping`` where
``None`` means "off". ``early_stopping: true`` switches it on with defaults.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from engine.errors import SpecError
from engine.initializers import INITIALIZERS as _INITIALIZERS
from engine.layers import ACTIVATIONS as _ACTIVATIONS
from engine.layers import DROPOUT_MODES as _DROPOUT_MODES
from engine.losses import LOSS_TASKS as _LOSS_TASKS
from engine.losses import LOSSES as _LOSSES
from engine.optimizers import OPTIMIZERS as _OPTIMIZERS
from engine.trainer import FISTA_LOSSES

__all__ = [
    "ACTIVATIONS",
    "DROPOUT_MODES",
    "DTYPES",
    "INITIALIZERS",
    "INIT_ALIASES",
    "L1_METHODS",
    "LOSSES",
    "LOSS_TASKS",
    "MONITORS",
    "OPTIMIZERS",
    "TASKS",
    "default_spec",
    "normalize_spec",
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

_DEFAULT_LOSS = {"classification": "softmax_cross_entropy", "regression": "mse"}
# Generous caps: they exist so a typo (epochs=1e9) fails fast instead of hogging a worker for days.
_MAX_EPOCHS = 100_000
_MAX_UNITS = 100_000
_MAX_LAYERS = 64

_DEFAULTS: dict[str, Any] = {
    "task": None,
    "model": {"hidden_layers": [64, 32], "activation": "relu", "init": "he", "leaky_slope": 0.01},
    "loss": None,
    "loss_params": {"huber_delta": 1.0, "hinge_margin": 1.0, "eps": 1e-7},
    "regularization": {"l1": 0.0, "l2": 0.0, "group_l1": 0.0, "l1_method": "proximal"},
    "dropout": {"input": 0.0, "hidden": 0.0, "mode": "inverted"},
    "optimizer": {
        "name": "sgd",
        "learning_rate": 0.01,
        "momentum": 0.0,
        "nesterov": False,
        "decay": 0.0,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "rho": 0.9,
    },
    "epochs": 20,
    "batch_size": 32,
    "validation_split": 0.0,
    "shuffle": True,
    "seed": 0,
    "early_stopping": None,
    "standardize": True,
    "dtype": "float32",
}
_EARLY_STOPPING_DEFAULTS: dict[str, Any] = {"monitor": None, "patience": 5, "min_delta": 0.0}


def default_spec() -> dict[str, Any]:
    """Return the normalized default spec (a softmax-cross-entropy MLP classifier)."""
    return normalize_spec({})


# --- field checkers -------------------------------------------------------------------------------
# Each returns the normalized value or raises SpecError with the field's loc.


def _name(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in loc) or "spec"


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but `"l1": true` is a mistake, not 1.0.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(
    value: Any,
    loc: tuple[str | int, ...],
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    if not _is_number(value):
        raise SpecError(loc, f"{_name(loc)} must be a number, got {value!r}.", "type_error")
    value = float(value)
    if not math.isfinite(value):
        raise SpecError(loc, f"{_name(loc)} must be finite, got {value!r}.", "out_of_range")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise SpecError(
            loc,
            f"{_name(loc)} must be in {left}{lo_s}, {hi_s}{right}, got {value:g}.",
            "out_of_range",
        )
    return value


def _int(value: Any, loc: tuple[str | int, ...], *, lo: int, hi: int | None = None) -> int:
    # Integral floats (20.0) come out of some JSON encoders; accept them, reject 20.5.
    if isinstance(value, float) and not isinstance(value, bool) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(loc, f"{_name(loc)} must be an integer, got {value!r}.", "type_error")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise SpecError(loc, f"{_name(loc)} must be {bound}, got {value}.", "out_of_range")
    return value


def _bool(value: Any, loc: tuple[str | int, ...]) -> bool:
    if not isinstance(value, bool):
        raise SpecError(loc, f"{_name(loc)} must be true or false, got {value!r}.", "type_error")
    return value


def _choice(value: Any, loc: tuple[str | int, ...], choices: tuple[str, ...], code: str) -> str:
    if not isinstance(value, str):
        raise SpecError(loc, f"{_name(loc)} must be a string, got {value!r}.", "type_error")
    if value not in choices:
        raise SpecError(
            loc, f"{_name(loc)} must be one of {', '.join(choices)}; got {value!r}.", code
        )
    return value


def _section(raw: Any, loc: tuple[str, ...], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Merge a sub-mapping over its defaults, rejecting unknown keys; ``None`` counts as absent."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SpecError(loc, f"{_name(loc)} must be an object, got {raw!r}.", "type_error")
    out = copy.deepcopy(dict(defaults))
    for key, value in raw.items():
        if not isinstance(key, str) or key not in defaults:
            raise SpecError(
                (*loc, key),
                f"Unknown field {_name((*loc, key))!s}; allowed: {', '.join(defaults)}.",
                "unknown_field",
            )
        if value is not None:
            out[key] = value
    return out


# --- sections -------------------------------------------------------------------------------------


def _model(raw: Any) -> dict[str, Any]:
    m = _section(raw, ("model",), _DEFAULTS["model"])
    layers = m["hidden_layers"]
    if not isinstance(layers, list | tuple):
        raise SpecError(
            ("model", "hidden_layers"),
            f"model.hidden_layers must be a list of layer widths, got {layers!r}.",
            "type_error",
        )
    if len(layers) > _MAX_LAYERS:
        raise SpecError(
            ("model", "hidden_layers"),
            f"model.hidden_layers may have at most {_MAX_LAYERS} layers, got {len(layers)}.",
            "out_of_range",
        )
    m["hidden_layers"] = [
        _int(units, ("model", "hidden_layers", i), lo=1, hi=_MAX_UNITS)
        for i, units in enumerate(layers)
    ]
    m["activation"] = _choice(
        m["activation"], ("model", "activation"), ACTIVATIONS, "unknown_activation"
    )
    init = m["init"]
    if isinstance(init, str):
        init = INIT_ALIASES.get(init, init)
    m["init"] = _choice(init, ("model", "init"), INITIALIZERS, "unknown_init")
    m["leaky_slope"] = _float(
        m["leaky_slope"], ("model", "leaky_slope"), lo=0.0, hi=1.0, hi_open=True
    )
    return m


def _loss_params(raw: Any) -> dict[str, Any]:
    p = _section(raw, ("loss_params",), _DEFAULTS["loss_params"])
    p["huber_delta"] = _float(
        p["huber_delta"], ("loss_params", "huber_delta"), lo=0.0, lo_open=True
    )
    p["hinge_margin"] = _float(
        p["hinge_margin"], ("loss_params", "hinge_margin"), lo=0.0, lo_open=True
    )
    # eps clips probabilities to [eps, 1 - eps]; at 0.5 or more nothing is left of the interval.
    p["eps"] = _float(p["eps"], ("loss_params", "eps"), lo=0.0, hi=0.5, lo_open=True, hi_open=True)
    return p


def _regularization(raw: Any) -> dict[str, Any]:
    r = _section(raw, ("regularization",), _DEFAULTS["regularization"])
    for key in ("l1", "l2", "group_l1"):
        r[key] = _float(r[key], ("regularization", key), lo=0.0)
    r["l1_method"] = _choice(
        r["l1_method"], ("regularization", "l1_method"), L1_METHODS, "unknown_l1_method"
    )
    return r


def _dropout(raw: Any) -> dict[str, Any]:
    d = _section(raw, ("dropout",), _DEFAULTS["dropout"])
    # Rates are DROP probabilities; 1.0 would drop everything and make 1 / (1 - p) infinite.
    for key in ("input", "hidden"):
        d[key] = _float(d[key], ("dropout", key), lo=0.0, hi=1.0, hi_open=True)
    d["mode"] = _choice(d["mode"], ("dropout", "mode"), DROPOUT_MODES, "unknown_dropout_mode")
    return d


def _optimizer(raw: Any) -> dict[str, Any]:
    o = _section(raw, ("optimizer",), _DEFAULTS["optimizer"])
    o["name"] = _choice(o["name"], ("optimizer", "name"), OPTIMIZERS, "unknown_optimizer")
    o["learning_rate"] = _float(
        o["learning_rate"], ("optimizer", "learning_rate"), lo=0.0, lo_open=True
    )
    for key in ("momentum", "beta1", "beta2", "rho"):
        o[key] = _float(o[key], ("optimizer", key), lo=0.0, hi=1.0, hi_open=True)
    o["nesterov"] = _bool(o["nesterov"], ("optimizer", "nesterov"))
    o["decay"] = _float(o["decay"], ("optimizer", "decay"), lo=0.0)
    o["eps"] = _float(o["eps"], ("optimizer", "eps"), lo=0.0, lo_open=True)
    return o


def _early_stopping(raw: Any, validation_split: float) -> dict[str, Any] | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    e = _section(raw, ("early_stopping",), _EARLY_STOPPING_DEFAULTS)
    if e["monitor"] is None:
        e["monitor"] = "val_loss" if validation_split > 0 else "loss"
    e["monitor"] = _choice(e["monitor"], ("early_stopping", "monitor"), MONITORS, "unknown_monitor")
    if e["monitor"] == "val_loss" and validation_split <= 0:
        raise SpecError(
            ("early_stopping", "monitor"),
            "early_stopping.monitor is 'val_loss' but validation_split is 0; "
            "set validation_split > 0 or monitor 'loss'.",
            "requires_validation",
        )
    e["patience"] = _int(e["patience"], ("early_stopping", "patience"), lo=1)
    e["min_delta"] = _float(e["min_delta"], ("early_stopping", "min_delta"), lo=0.0)
    return e


def normalize_spec(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """Fill defaults into a training spec and validate it.

    Parameters
    ----------
    spec : mapping or None
        A (partial) spec as documented in the module docstring. Not modified. Already-normalized
        specs pass through unchanged (normalization is idempotent).

    Returns
    -------
    dict
        A new, complete, JSON-able spec with keys in the documented order.

    Raises
    ------
    SpecError
        With ``loc`` = path of the first field at fault and one of the codes ``unknown_field``,
        ``type_error``, ``out_of_range``, ``unknown_task``, ``unknown_loss``,
        ``loss_task_mismatch``, ``unknown_activation``, ``unknown_init``, ``unknown_l1_method``,
        ``unknown_dropout_mode``, ``unknown_optimizer``, ``unknown_monitor``,
        ``requires_validation``, ``unknown_dtype``; for ``optimizer.name == "fista"`` also
        ``requires_linear``, ``requires_smooth_loss``, ``requires_no_dropout``.
    """
    raw = _section(spec, (), _DEFAULTS)
    out: dict[str, Any] = {}

    task = raw["task"]
    if task is not None:
        task = _choice(task, ("task",), TASKS, "unknown_task")
    loss = raw["loss"]
    if loss is None:
        loss = _DEFAULT_LOSS[task or "classification"]
    loss = _choice(loss, ("loss",), LOSSES, "unknown_loss")
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
    out["task"] = task
    out["model"] = _model(raw["model"])
    out["loss"] = loss
    out["loss_params"] = _loss_params(raw["loss_params"])
    out["regularization"] = _regularization(raw["regularization"])
    out["dropout"] = _dropout(raw["dropout"])
    out["optimizer"] = _optimizer(raw["optimizer"])
    out["epochs"] = _int(raw["epochs"], ("epochs",), lo=1, hi=_MAX_EPOCHS)
    out["batch_size"] = _int(raw["batch_size"], ("batch_size",), lo=1)
    out["validation_split"] = _float(
        raw["validation_split"], ("validation_split",), lo=0.0, hi=1.0, hi_open=True
    )
    out["shuffle"] = _bool(raw["shuffle"], ("shuffle",))
    # default_rng rejects negative seeds; < 2**63 keeps the seed storable as a signed 64-bit int.
    out["seed"] = _int(raw["seed"], ("seed",), lo=0, hi=2**63 - 1)
    out["early_stopping"] = _early_stopping(raw["early_stopping"], out["validation_split"])
    out["standardize"] = _bool(raw["standardize"], ("standardize",))
    out["dtype"] = _choice(raw["dtype"], ("dtype",), DTYPES, "unknown_dtype")

    if out["optimizer"]["name"] == "fista":
        _check_fista(out)
    return out


def _check_fista(out: dict[str, Any]) -> None:
    """FISTA is full-batch accelerated proximal gradient: linear model, smooth loss, no dropout."""
    if out["model"]["hidden_layers"]:
        # FISTA's convergence guarantee needs a convex objective: a linear model.
        raise SpecError(
            ("optimizer", "name"),
            "optimizer.name 'fista' trains linear models only; set model.hidden_layers to [].",
            "requires_linear",
        )
    if out["loss"] not in FISTA_LOSSES:
        # Its step size 1/L needs a Lipschitz-continuous gradient, which mae and the hinge lack.
        raise SpecError(
            ("loss",),
            f"loss {out['loss']!r} is not smooth; optimizer 'fista' needs one of "
            f"{', '.join(FISTA_LOSSES)}.",
            "requires_smooth_loss",
        )
    for key in ("input", "hidden"):
        if out["dropout"][key] > 0:
            raise SpecError(
                ("dropout", key),
                f"dropout.{key} must be 0 with optimizer 'fista', which is full-batch and "
                "deterministic.",
                "requires_no_dropout",
            )
