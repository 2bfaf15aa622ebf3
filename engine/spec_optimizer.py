"""The optimizer section of a spec: the optimizer's name and its hyperparameters.

Every hyperparameter defaults to ``None``, "the optimizer's own": ``engine.spec_parse`` resolves
the fields the chosen optimizer reads from ``engine.optimizers.OPTIMIZER_DEFAULTS``, so
``{"optimizer": {"name": "adadelta"}}`` trains with Adadelta's ``learning_rate=1.0, rho=0.95,
eps=1e-6``, and stores ``None`` for the fields it does not read. The update rules:
``engine.optimizers``.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.optimizers import OPTIMIZERS as _OPTIMIZERS
from engine.spec_fields import Section, spec_field

__all__ = ["OPTIMIZERS", "OptimizerSpec"]

OPTIMIZERS: tuple[str, ...] = tuple(_OPTIMIZERS)

_OWN = "null = the optimizer's own (OPTIMIZER_DEFAULTS); null in the stored spec if unused."


@dataclass(frozen=True)
class OptimizerSpec(Section):
    """Optimizer and its hyperparameters; each optimizer reads its own (see OPTIMIZER_DEFAULTS)."""

    name: str = spec_field("sgd", "str", choices=OPTIMIZERS)
    learning_rate: float | None = spec_field(None, lo=0.0, lo_open=True, nullable=True, doc=_OWN)
    momentum: float | None = spec_field(None, lo=0.0, hi=1.0, hi_open=True, nullable=True, doc=_OWN)
    nesterov: bool | None = spec_field(None, "bool", nullable=True, doc=_OWN)
    decay: float | None = spec_field(
        None, lo=0.0, nullable=True, doc="lr_t = lr / (1 + decay * t). " + _OWN
    )
    beta1: float | None = spec_field(None, lo=0.0, hi=1.0, hi_open=True, nullable=True, doc=_OWN)
    beta2: float | None = spec_field(None, lo=0.0, hi=1.0, hi_open=True, nullable=True, doc=_OWN)
    eps: float | None = spec_field(None, lo=0.0, lo_open=True, nullable=True, doc=_OWN)
    rho: float | None = spec_field(None, lo=0.0, hi=1.0, hi_open=True, nullable=True, doc=_OWN)
    tol: float | None = spec_field(
        None,
        lo=0.0,
        nullable=True,
        doc="fista: stop on duality gap <= tol * var(y) (Lasso) or KKT residual <= tol * "
        "||grad f(0)||_inf (every other loss). " + _OWN,
    )
    step_tol: float | None = spec_field(
        None,
        lo=0.0,
        nullable=True,
        doc="fista: also stop once no parameter moves by more than step_tol * max(1, max|W|) "
        "(0 = only a move of exactly 0). " + _OWN,
    )
