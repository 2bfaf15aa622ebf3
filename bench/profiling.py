"""Where the time goes: cProfile of one call, summarised as the top functions by own time."""

from __future__ import annotations

import cProfile
import io
import pstats
from collections.abc import Callable
from typing import Any


def profile_call(fn: Callable[[], Any], top: int = 15) -> str:
    """Run ``fn`` under cProfile; return a table of the ``top`` functions by total (own) time."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    # Keep the header with the total and the table; drop pstats' preamble about ordering/file names.
    keep = [ln for ln in lines if "function calls" in ln or "ncalls" in ln or ln.startswith(" ")]
    return "\n".join(keep)
