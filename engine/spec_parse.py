"""The spec normalizer: a user's (partial) spec mapping -> a complete, frozen ``engine.spec.Spec``.

``parse(raw)`` checks every given field against its declaration (``engine.spec_check``), fills
every default and applies the rules between fields; ``normalize_spec`` is ``parse(raw).to_dict()``,
the complete JSON-able form the service stores. Normalization is idempotent:
``parse(spec.to_dict()) == spec``. Unknown keys are rejected, numbers are range-checked and the
loss must fit the task; every failure is a :class:`~engine.errors.SpecError` whose ``loc`` is the
path of the field at fault.

The rules between fields: an absent task is the loss's, an absent loss the task's default
(``softmax_cross_entropy`` or ``mse``); ``keep`` defaults to ``best`` with a validation split,
else ``last``; ``model.layers`` and ``model.hidden_layers`` exclude each other, as do
``search.values`` and ``search.num`` / ``min_ratio``; optimizer hyperparameters of ``None`` take
the optimizer's own (``engine.optimizers.OPTIMIZER_DEFAULTS``) and those it does not read are
stored as ``None``; ``early_stopping.monitor`` defaults to ``val_loss`` with a validation split,
else ``loss``; ``fista`` needs a linear model, a smooth loss and no dropout; an optimizer ``eps``
must be a normal number of the spec's dtype.

A field given as ``None`` counts as absent (its default applies), except ``early_stopping``,
``augmentation`` and ``search`` where ``None`` means "off". ``early_stopping: true`` switches it
on with defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.errors import SpecError
from engine.losses import FISTA_LOSSES
from engine.optimizers import OPTIMIZER_DEFAULTS
from engine.spec import LOSS_TASKS, LOSSES, EarlyStopping, LossParams, Spec
from engine.spec_check import check_mapping, check_section, check_value
from engine.spec_fields import field_infos
from engine.spec_model import ModelSpec
from engine.spec_optimizer import OptimizerSpec
from engine.spec_regularization import Augmentation, DropoutSpec, Regularization
from engine.spec_search import Search, check_held_out

__all__ = ["check_classes", "default_spec", "normalize_spec", "parse"]

_DEFAULT_LOSS = {"classification": "softmax_cross_entropy", "regression": "mse"}


def _model(raw: Any) -> ModelSpec:
    given = check_mapping(raw, ("model",), tuple(f.name for f in field_infos(ModelSpec)))
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
    model = check_section(ModelSpec, given, ("model",))
    if model.layers is not None:
        model = dataclasses.replace(model, hidden_layers=None)
    return model


def _optimizer(raw: Any) -> OptimizerSpec:
    """The optimizer section with every hyperparameter it reads resolved to a value."""
    given = check_section(OptimizerSpec, raw, ("optimizer",))
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
    es = check_section(EarlyStopping, raw, ("early_stopping",))
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
    given = check_mapping(raw, ("search",), tuple(f.name for f in field_infos(Search)))
    if "values" in given:
        for key in ("num", "min_ratio"):
            if key in given:
                raise SpecError(
                    ("search", key),
                    f"search.{key} and search.values are two ways to give the grid; give one.",
                    "conflict",
                )
        search = check_section(Search, given, ("search",))
        return dataclasses.replace(search, num=None, min_ratio=None)
    return check_section(Search, given, ("search",))


def parse(spec: Mapping[str, Any] | Spec | None) -> Spec:
    """Validate a (partial) spec mapping and fill every default: a frozen :class:`Spec`.

    Parameters
    ----------
    spec : mapping, Spec or None
        A (partial) spec as documented in ``engine.spec``, e.g. a stored ``to_dict()``
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
    top = {f.name: f for f in field_infos(Spec)}
    raw = check_mapping(spec, (), tuple(top))
    task = check_value(raw["task"], ("task",), top["task"]) if "task" in raw else None
    loss = raw.get("loss", _DEFAULT_LOSS[task or "classification"])
    loss = check_value(loss, ("loss",), top["loss"])
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
        name: check_value(raw[name], (name,), info)
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
        loss_params=check_section(LossParams, raw.get("loss_params"), ("loss_params",)),
        regularization=check_section(
            Regularization, raw.get("regularization"), ("regularization",)
        ),
        dropout=check_section(DropoutSpec, raw.get("dropout"), ("dropout",)),
        optimizer=_optimizer(raw.get("optimizer")),
        early_stopping=_early_stopping(raw.get("early_stopping"), validation_split),
        augmentation=(
            None
            if raw.get("augmentation") is None
            else check_section(Augmentation, raw["augmentation"], ("augmentation",))
        ),
        search=_search(raw.get("search")),
        **simple,
    )
    if out.search is not None:
        check_held_out(out.search.folds, out.validation_split)
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
    if spec.search is not None and spec.search.param.startswith("dropout."):
        raise SpecError(
            ("search", "param"),
            f"search.param {spec.search.param!r} varies a dropout rate, which optimizer 'fista' "
            "(full-batch and deterministic) does not train; search a penalty, or use another "
            "optimizer.",
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
