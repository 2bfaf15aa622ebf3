"""A user's text quoted in an error message, cut to a readable length.

The prediction path's errors (``rows``, ``images``, ``prediction``) quote a request's values and
keys, list a model's features and pass on the engine's messages through these, so one long key,
value or message cannot make an answer long.
"""

from typing import Any

# Longest text of a user's value or key quoted in an error.
MAX_QUOTED = 40
MAX_MESSAGE = 300
# At most this many feature names listed in one message.
MAX_LISTED = 20


def quote(value: Any) -> str:
    """``repr(value)`` of at most MAX_QUOTED characters (``...`` marks a cut)."""
    text = repr(value if not isinstance(value, str) else value[: MAX_QUOTED + 1])
    return text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 3] + "..."


def key_loc(key: str) -> str:
    """A key (or file name) of at most MAX_QUOTED characters, for a ``loc`` and a message."""
    return key if len(key) <= MAX_QUOTED else key[: MAX_QUOTED - 3] + "..."


def listing(names: tuple[str, ...]) -> str:
    """The first MAX_LISTED names, comma-separated, and how many there are when more."""
    shown = ", ".join(key_loc(n) for n in names[:MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")


def short(msg: str) -> str:
    """A message of at most MAX_MESSAGE characters."""
    return msg if len(msg) <= MAX_MESSAGE else msg[: MAX_MESSAGE - 3] + "..."


__all__ = ["key_loc", "listing", "quote", "short"]
