"""Helpers shared by the services."""

from typing import Any

from sqlalchemy import Select


def owned(stmt: Select[Any], owner_column: Any, owner_id: str | None) -> Select[Any]:
    """Restrict ``stmt`` to rows of ``owner_id`` (NULL-safe: the anonymous owner is NULL)."""
    if owner_id is None:
        return stmt.where(owner_column.is_(None))
    return stmt.where(owner_column == owner_id)
