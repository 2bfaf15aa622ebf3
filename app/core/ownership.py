"""Helpers shared by the services."""

from typing import Any, TypeVar

from sqlalchemy import Delete, Select, Update

Stmt = TypeVar("Stmt", Select[Any], Update, Delete)


def owned(stmt: Stmt, owner_column: Any, owner_id: str | None) -> Stmt:
    """Restrict ``stmt`` to rows of ``owner_id`` (NULL-safe: the anonymous owner is NULL)."""
    if owner_id is None:
        return stmt.where(owner_column.is_(None))
    return stmt.where(owner_column == owner_id)
