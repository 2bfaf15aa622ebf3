"""Optional API-key auth: ``Authorization: Bearer <key>``; keys are stored as SHA-256 hashes.

With ``settings.auth_required`` off, every request acts as the anonymous owner (``None``);
with it on, a request needs a valid, unrevoked key and sees only the resources that key created.
"""

import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import settings
from app.core.deps import SessionDep
from app.core.errors import Unauthorized
from app.core.keys import ApiKey

KEY_PREFIX = "rg_"


def hash_key(key: str) -> str:
    """SHA-256 hex digest of a key (keys are random 256-bit tokens, so no salt or KDF is needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(*, session: Session, name: str) -> tuple[ApiKey, str]:
    """Create and store a key; return the row and the plain key (shown once, never stored)."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=plain[:10], key_hash=hash_key(plain))
    session.add(row)
    session.commit()
    return row, plain


def get_by_plain_key(*, session: Session, key: str) -> ApiKey | None:
    """The unrevoked key row matching ``key``, if any."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def current_owner(request: Request, session: SessionDep) -> str | None:
    """The id of the calling key, or None when auth is not required and no key was sent."""
    header = request.headers.get("authorization")
    if header is None:
        if settings.auth_required:
            raise Unauthorized(
                "An API key is required: send 'Authorization: Bearer <key>'.",
                loc=["header", "authorization"],
                code="missing_api_key",
            )
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "The Authorization header must be 'Bearer <key>'.",
            loc=["header", "authorization"],
            code="invalid_api_key",
        )
    row = get_by_plain_key(session=session, key=token.strip())
    if row is None:
        raise Unauthorized(
            "The API key is unknown or revoked.",
            loc=["header", "authorization"],
            code="invalid_api_key",
        )
    return row.id


OwnerDep = Annotated[str | None, Depends(current_owner)]
