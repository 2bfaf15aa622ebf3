"""The training spec: typed, frozen objects with every default stated once.

A :class:`Spec` is a frozen dataclass of sections, each declared field by field with its default,
type, bounds and choices (``engine.spec_fields``): ``model`` (``engine.spec_model``),
``regularization``, ``dropout`` and ``augmentation`` (``engine.spec_regularization``),
``optimizer`` (``engine.spec_optimizer``), ``search`` (``engine.spec_search``), and here
``loss_params``, ``early_stopping`` and the top-level fields. ``engine.spec_parse.parse`` builds
one from a user's (partial) mapping; ``Spec.to_dict()`` is the complete JSON-able form the
service stores. :func:`registry` describes every field for schemas: the service's pydantic
``TrainingSpec`` is derived from it.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.losses import LOSS_TASKS as _LOSS_TASKS
from engine.losses import LOSSES as _LOSSES
from engine.optimizers import OPTIMIZER_DEFAULTS
from engine.spec_fields import FieldInfo, Section, field_infos, section_meta, spec_field
from engine.spec_model import BUILDABLE_LAYERS, LAYER_FIELDS, ModelSpec
from engine.spec_optimizer import OptimizerSpec
from engine.spec_regularization import Augmentation, DropoutSpec, Regularization
from engine.spec_search import Search

__all__ = [
    "DTYPES",
    "FIELDS",
    "KEEP",
    "LOSSES",
    "LOSS_TASKS",
    "MONITORS",
    "TASKS",
    "EarlyStopping",
    "LossParams",
    "Spec",
    "registry",
]

TASKS: tuple[str, ...] = ("classification", "regression")
LOSSES: tuple[str, ...] = tuple(_LOSSES)
LOSS_TASKS: dict[str, str] = dict(_LOSS_TASKS)
DTYPES: tuple[str, ...] = ("float32", "float64")
MONITORS: tuple[str, ...] = ("val_loss", "loss")
KEEP: tuple[str, ...] = ("best", "last")
# A generous cap: it exists so a typo (epochs=1e9) fails fast instead of hogging a worker for days.
_MAX_EPOCHS = 100_000


@dataclass(frozen=True)
class LossParams(Section):
    """Loss hyperparameters."""

    huber_delta: float = spec_field(1.0, lo=0.0, lo_open=True, doc="Huber threshold delta.")
    hinge_margin: float = spec_field(1.0, lo=0.0, lo_open=True, doc="Hinge margin delta.")
    eps: float = spec_field(
        1e-7,
        lo=0.0,
        hi=0.5,
        lo_open=True,
        hi_open=True,
        doc="Kept for stored specs; unused: binary cross-entropy is computed from the logits.",
    )


@dataclass(frozen=True)
class EarlyStopping(Section):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    monitor: str | None = spec_field(
        None, "str", choices=MONITORS, doc="null = val_loss with a validation split, else loss."
    )
    patience: int = spec_field(5, "int", lo=1)
    min_delta: float = spec_field(0.0, lo=0.0)


@dataclass(frozen=True)
class Spec(Section):
    """A complete, validated training spec (see the module docstring for the dict form)."""

    task: str = spec_field(
        "classification", "str", choices=TASKS, doc="Default: inferred from the loss."
    )
    model: ModelSpec = field(default_factory=ModelSpec, metadata=section_meta("model"))
    loss: str = spec_field(
        "softmax_cross_entropy",
        "str",
        choices=LOSSES,
        doc="Default: softmax_cross_entropy (classification) or mse (regression).",
    )
    loss_params: LossParams = field(
        default_factory=LossParams, metadata=section_meta("loss_params")
    )
    regularization: Regularization = field(
        default_factory=Regularization, metadata=section_meta("regularization")
    )
    dropout: DropoutSpec = field(default_factory=DropoutSpec, metadata=section_meta("dropout"))
    optimizer: OptimizerSpec = field(
        default_factory=OptimizerSpec, metadata=section_meta("optimizer")
    )
    epochs: int = spec_field(20, "int", lo=1, hi=_MAX_EPOCHS)
    batch_size: int = spec_field(32, "int", lo=1)
    validation_split: float = spec_field(0.0, lo=0.0, hi=1.0, hi_open=True)
    shuffle: bool = spec_field(True, "bool")
    # default_rng rejects negative seeds; < 2**63 keeps the seed storable as a signed 64-bit int.
    seed: int = spec_field(0, "int", lo=0, hi=2**63 - 1)
    early_stopping: EarlyStopping | None = field(
        default=None,
        metadata=section_meta(
            "early_stopping", nullable=True, doc="null = off; true = on with defaults."
        ),
    )
    standardize: bool = spec_field(True, "bool")
    dtype: str = spec_field("float32", "str", choices=DTYPES)
    keep: str = spec_field(
        "last",
        "str",
        choices=KEEP,
        doc="Which epoch's weights the model keeps; default best with a validation split "
        "(lowest val_loss), else last.",
    )
    augmentation: Augmentation | None = field(
        default=None, metadata=section_meta("augmentation", nullable=True, doc="null = off.")
    )
    search: Search | None = field(
        default=None, metadata=section_meta("search", nullable=True, doc="null = a single fit.")
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

FIELDS: dict[str, tuple[FieldInfo, ...]] = {
    name: field_infos(cls) for name, cls in _SECTIONS.items()
}
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
