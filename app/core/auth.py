"""Optional API-key auth: ``Authorization: Bearer <key>``; keys are stored as SHA-256 hashes.

With ``settings.auth_required`` off, every request acts as the anonymous owner (``None``);
with it on, a request needs a valid, unrevoked key and sees only the resources that key created.
The key travels as an HTTP Bearer token (the OpenAPI security scheme ``APIKey``), so Swagger UI's
"Authorize" button can send it. A server process trusts a key it found valid for
``REGULA_KEY_CACHE_SECONDS`` (``KeyCache``): a revocation by another process (``regula keys
revoke``) reaches it within that time.
"""

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.core.config import settings
from app.core.db import get_db, utcnow
from app.core.errors import Conflict, NotFound, Unauthorized
from app.core.keys import ApiKey

KEY_PREFIX = "rg_"

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "No API key, or an unknown or revoked one (`missing_api_key`, "
        "`invalid_api_key`); the answer carries `WWW-Authenticate: Bearer`."
    }
}


Sessions = Callable[[], AbstractContextManager[Session]]


def sessions_for(request: Request) -> Sessions:
    """Sessions from ``get_db`` (or the app's override of it), each opened by ``with``.

    For requests that usually need no database (a key check without a key, a prediction from the
    cache): ``get_db`` as a dependency is a sync generator, which FastAPI enters and leaves in the
    thread pool, two thread hops per request even when the session goes unused.
    """
    return contextmanager(request.app.dependency_overrides.get(get_db, get_db))


class KeyCache:
    """Key hashes found valid in the database, with their owner, for ``settings.key_cache_seconds``.

    Without it every keyed request costs a thread hop and a query. Only valid keys are kept (an
    unknown token is asked for every time, so guessing fills nothing), at most ``MAX_ENTRIES``.
    """

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[str, tuple[str, float]] = {}  # key hash -> (owner id, expiry)

    def get(self, key_hash: str) -> str | None:
        """The owner of a key checked less than ``key_cache_seconds`` ago, else None."""
        entry = self._owners.get(key_hash)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            with self._lock:
                self._owners.pop(key_hash, None)
            return None
        return entry[0]

    def put(self, key_hash: str, owner: str) -> None:
        ttl = settings.key_cache_seconds
        if ttl <= 0:
            return
        with self._lock:
            if len(self._owners) >= self.MAX_ENTRIES:
                now = time.monotonic()
                self._owners = {k: v for k, v in self._owners.items() if v[1] > now}
                if len(self._owners) >= self.MAX_ENTRIES:
                    self._owners.clear()
            self._owners[key_hash] = (owner, time.monotonic() + ttl)

    def forget(self, key_hash: str) -> None:
        """Drop a revoked key: its next request is asked of the database."""
        with self._lock:
            self._owners.pop(key_hash, None)

    def clear(self) -> None:
        with self._lock:
            self._owners.clear()


key_cache = KeyCache()


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


def list_keys(*, session: Session) -> list[ApiKey]:
    """Every key, oldest first (revoked ones included)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_key(*, session: Session, id_or_prefix: str) -> ApiKey:
    """Revoke the key whose id or prefix is ``id_or_prefix``; its requests get 401 from now on in
    this process, and within ``settings.key_cache_seconds`` in the servers that cached it.

    NotFound if no key matches, Conflict if a prefix matches more than one key. Revoking a
    revoked key keeps its first revocation time.
    """
    stmt = select(ApiKey).where(or_(ApiKey.id == id_or_prefix, ApiKey.prefix == id_or_prefix))
    rows = list(session.scalars(stmt))
    if not rows:
        raise NotFound(f"No API key has the id or prefix {id_or_prefix!r}.", loc=["key"])
    if len(rows) > 1:
        raise Conflict(
            f"{len(rows)} keys have the prefix {id_or_prefix!r}; revoke by id.",
            loc=["key"],
            code="ambiguous_key",
        )
    (row,) = rows
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    key_cache.forget(row.key_hash)
    return row


def get_by_plain_key(*, session: Session, key: str) -> ApiKey | None:
    """The unrevoked key row matching ``key``, if any."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def _invalid(msg: str) -> Unauthorized:
    return Unauthorized(msg, loc=["header", "authorization"], code="invalid_api_key")


def _owner_of(sessions: Sessions, token: str) -> str:
    with sessions() as session:
        row = get_by_plain_key(session=session, key=token)
    if row is None:
        raise _invalid("The API key is unknown or revoked.")
    key_cache.put(row.key_hash, row.id)
    return row.id


class _CurrentOwner(HTTPBearer):
    """HTTP Bearer auth resolving to the calling key's id (the OpenAPI security scheme
    ``APIKey``, so Swagger UI's "Authorize" button sends the key)."""

    async def __call__(self, request: Request) -> str | None:  # type: ignore[override]
        """The id of the calling key, or None when auth is not required and no key was sent.

        Without a key (and auth off) a request costs no database session and no thread; nor
        does a key checked in the last ``key_cache_seconds`` (``KeyCache``).
        """
        credentials = await super().__call__(request)  # None: absent, or not "Bearer <token>"
        if credentials is None:
            if "authorization" not in request.headers:
                if settings.auth_required:
                    raise Unauthorized(
                        "An API key is required: send 'Authorization: Bearer <key>'.",
                        loc=["header", "authorization"],
                        code="missing_api_key",
                    )
                return None
            raise _invalid("The Authorization header must be 'Bearer <key>'.")
        token = credentials.credentials.strip()
        if not token:
            raise _invalid("The Authorization header must be 'Bearer <key>'.")
        owner = key_cache.get(hash_key(token))
        if owner is not None:
            return owner
        return await run_in_threadpool(_owner_of, sessions_for(request), token)


current_owner = _CurrentOwner(
    scheme_name="APIKey",
    description="An API key from `regula keys create`, sent as `Authorization: Bearer <key>`.",
    auto_error=False,
)
OwnerDep = Annotated[str | None, Depends(current_owner)]


# The same security scheme, only documenting (never checking): for dependencies that call
# current_owner themselves after finding the key elsewhere.
api_key_scheme = HTTPBearer(scheme_name="APIKey", auto_error=False)

# Dependencies that resolve the caller's key by other means too (e.g. a query parameter), but
# with current_owner's rules: their routes are documented as keyed like OwnerDep's.
_KEYED: set[Any] = {current_owner}


def keyed(dependency: Any) -> Any:
    """Mark ``dependency`` as resolving the caller's key (for ``document_auth``)."""
    _KEYED.add(dependency)
    return dependency


def _takes_key(dependant: Dependant) -> bool:
    return any(d.call in _KEYED or _takes_key(d) for d in dependant.dependencies)


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)  # an included router (FastAPI 0.16x)
        if included is not None:
            yield from _api_routes(included.routes)


def document_auth(app: FastAPI) -> None:
    """Add the 401 answer to the OpenAPI description of every operation that takes a key."""
    for route in _api_routes(app.routes):
        if _takes_key(route.dependant):
            for code, response in UNAUTHORIZED.items():
                route.responses.setdefault(code, response)
