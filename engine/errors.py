"""Errors raised by the engine's public API.

Every error carries a stable machine-readable ``code`` and a ``msg`` sentence naming the field,
column or row at fault, so the service can turn it into FastAPI's ``{"loc", "msg", "type"}`` shape
without parsing strings. All of them are ``ValueError`` subclasses: callers that only know the
standard library still catch them.
"""

from __future__ import annotations

__all__ = ["InputError", "ModelFormatError", "SpecError"]


class SpecError(ValueError):
    """An invalid training spec.

    Attributes
    ----------
    loc : tuple of str | int
        Path of the offending field in the spec, e.g. ``("optimizer", "name")``; ``()`` for the
        spec itself.
    msg : str
        A sentence naming the field and what is wrong with it.
    code : str
        Stable machine-readable code, e.g. ``"unknown_loss"``, ``"out_of_range"``,
        ``"loss_task_mismatch"``.
    """

    def __init__(self, loc: tuple[str | int, ...], msg: str, code: str) -> None:
        self.loc = tuple(loc)
        self.msg = msg
        self.code = code
        super().__init__(f"{'.'.join(str(part) for part in self.loc) or 'spec'}: {msg} [{code}]")


class InputError(ValueError):
    """Bad data given to ``fit``, ``predict`` or ``predict_proba``.

    Attributes
    ----------
    msg : str
        A sentence naming the column and/or row at fault.
    code : str
        Stable machine-readable code, e.g. ``"missing_column"``, ``"unknown_category"``,
        ``"not_numeric"``, ``"missing_target"``, ``"one_class"``, ``"constant_target"``,
        ``"non_finite"``.
    column : str or None
        The raw input column at fault (``None`` for the target or for the table as a whole).
    row : int or None
        0-based row index at fault, when one row is to blame.
    """

    def __init__(
        self, msg: str, code: str, *, column: str | None = None, row: int | None = None
    ) -> None:
        self.msg = msg
        self.code = code
        self.column = column
        self.row = row
        super().__init__(f"{msg} [{code}]")


class ModelFormatError(ValueError):
    """Bytes that are not a model written by ``Model.to_bytes`` (corrupt, truncated, other version).

    Attributes
    ----------
    msg : str
        What is wrong with the bytes.
    code : str
        ``"corrupt_model"`` or ``"unsupported_version"``.
    """

    def __init__(self, msg: str, code: str = "corrupt_model") -> None:
        self.msg = msg
        self.code = code
        super().__init__(f"{msg} [{code}]")


class TrainingTimeout(TimeoutError):
    """Training passed the time limit given to ``fit(max_seconds=...)``; checked every mini-batch.

    Attributes
    ----------
    msg : str
        A sentence naming the limit and the epoch in which it was reached.
    epoch : int
        The epoch (1-based) that was interrupted.
    """

    code = "timeout"

    def __init__(self, msg: str, epoch: int) -> None:
        self.msg = msg
        self.epoch = epoch
        super().__init__(msg)
