"""Helpers shared by the services."""

from typing import Any, Protocol, Self, TypeVar


class _Filterable(Protocol):
    def where(self, *whereclause: Any) -> Self: ...


Stmt = TypeVar("Stmt", bound=_Filterable)


def owned(stmt: Stmt, owner_column: Any, owner_id: str | None) -> Stmt:
    """Restrict ``stmt`` to rows of ``owner_id`` (NULL-safe: the anonymous owner is NULL)."""
    if owner_id is None:
        return stmt.where(owner_column.is_(None))
    return stmt.where(owner_column == owner_id)
