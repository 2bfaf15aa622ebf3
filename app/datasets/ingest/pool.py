"""The datasets domain's own small thread pool for blocking ingest work (parse, convert, commit).

Uploads use it instead of the event loop's default executor, so many slow or large uploads cannot
take every default thread from the rest of the service. Created on first use; ``shutdown`` ends it.
"""

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from app.core.config import settings

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """The pool (``REGULA_INGEST_THREADS`` threads), created on first use."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=settings.ingest_threads, thread_name_prefix="regula-ingest"
            )
        return _pool


def shutdown() -> None:
    """Stop the pool after the work in it finishes (the next ``run`` starts a new one)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True)


async def run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in the pool. If the caller is cancelled, it still waits for the
    call to end (a thread cannot be stopped), so cleanup never races the work it cleans up."""
    future = asyncio.get_running_loop().run_in_executor(
        executor(), functools.partial(fn, *args, **kwargs)
    )
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise
