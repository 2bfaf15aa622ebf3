"""The search section of a spec: a regularization path over one parameter (run by ``engine.path``).

``param`` (one of :data:`SEARCH_PARAMS`) takes each value of a grid, the explicit ``values`` or
``num`` values log-spaced from ``lambda_max`` down to ``min_ratio * lambda_max``
(``engine.lambda_grid``); ``folds``-fold cross-validation scores each value and ``select``
(:data:`SEARCH_SELECT`) picks one (``engine.cv``). The spec validates this section only.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import SpecError
from engine.spec_fields import Section, spec_field

__all__ = [
    "DEFAULT_MIN_RATIO",
    "DEFAULT_NUM",
    "DEFAULT_PARAM",
    "DEFAULT_SELECT",
    "MAX_SEARCH_VALUES",
    "SEARCH_PARAMS",
    "SEARCH_SELECT",
    "Search",
    "check_held_out",
]

# The strengths a regularization path may vary (engine.path), by their place in the spec.
SEARCH_PARAMS: tuple[str, ...] = (
    "regularization.l1",
    "regularization.l2",
    "regularization.group_l1",
    "dropout.hidden",
    "dropout.input",
)
SEARCH_SELECT: tuple[str, ...] = ("min", "1se")
# The defaults of the section, which engine.path's keyword arguments share.
DEFAULT_PARAM = "regularization.l1"
DEFAULT_NUM = 20
DEFAULT_MIN_RATIO = 1e-3
DEFAULT_SELECT = "1se"
# A search multiplies one fit's work by points x (folds + 1): both are bounded.
MAX_SEARCH_VALUES = 200


@dataclass(frozen=True)
class Search(Section):
    """A regularization path over ``param``: explicit ``values`` or a log grid of ``num`` values
    from ``lambda_max`` down to ``min_ratio * lambda_max``; ``folds``-fold CV picks one by
    ``select`` (validated here only)."""

    param: str = spec_field(DEFAULT_PARAM, "str", choices=SEARCH_PARAMS)
    values: tuple[float, ...] | None = spec_field(
        None, "list[float]", lo=0.0, nullable=True, doc="Explicit grid; excludes num/min_ratio."
    )
    num: int | None = spec_field(
        DEFAULT_NUM,
        "int",
        lo=2,
        hi=MAX_SEARCH_VALUES,
        nullable=True,
        doc="Grid size (null when values is given).",
    )
    min_ratio: float | None = spec_field(
        DEFAULT_MIN_RATIO,
        lo=0.0,
        hi=1.0,
        lo_open=True,
        hi_open=True,
        nullable=True,
        doc="Smallest / largest lambda (null when values is given).",
    )
    folds: int | None = spec_field(
        None,
        "int",
        lo=2,
        hi=20,
        nullable=True,
        doc="K-fold cross-validation; null = the validation split scores each point.",
    )
    select: str = spec_field(
        DEFAULT_SELECT,
        "str",
        choices=SEARCH_SELECT,
        doc="min: lowest mean CV loss; 1se: largest lambda within one standard error.",
    )


def check_held_out(folds: int | None, validation_split: float) -> None:
    """A path scores every value on held-out rows: ``folds`` folds, or the validation split."""
    if folds is None and validation_split <= 0:
        raise SpecError(
            ("search", "folds"),
            "A path needs held-out rows: set search.folds or validation_split > 0.",
            "requires_validation",
        )
