"""Shared pieces of the benchmark: results, goals, timing and formatting."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Check:
    """One comparison of Regula against a peer, with its goal.

    ``ratio`` is always "ours relative to the peer" in the direction the goal is stated: for
    throughput it is ours / peer (bigger is better, goal ``>=``), for times and memory it is ours /
    peer (smaller is better, goal ``<=``).
    """

    section: str
    name: str
    ours: float
    peer_name: str
    peer: float
    unit: str
    op: str  # ">=" or "<="
    goal: float
    note: str = ""

    @property
    def ratio(self) -> float:
        if self.peer == 0:
            return float("inf") if self.ours > 0 else float("nan")
        return self.ours / self.peer

    @property
    def passed(self) -> bool:
        r = self.ratio
        if r != r:  # nan
            return False
        return r >= self.goal if self.op == ">=" else r <= self.goal

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def line(self) -> str:
        return (
            f"[{self.section}] {self.name}: regula {fmt(self.ours)} {self.unit} | "
            f"{self.peer_name} {fmt(self.peer)} {self.unit} -> ratio vs {self.peer_name} "
            f"{self.ratio:.2f}x (goal {self.op} {self.goal:g}x) {self.verdict}"
            + (f"  [{self.note}]" if self.note else "")
        )


@dataclass
class Info:
    """A figure without a goal (e.g. rows/s of batch prediction, a peer's own throughput)."""

    section: str
    name: str
    value: float
    unit: str
    note: str = ""

    def line(self) -> str:
        return f"[{self.section}] {self.name}: {fmt(self.value)} {self.unit}" + (
            f"  [{self.note}]" if self.note else ""
        )


@dataclass
class SectionResult:
    """What one section measured: checks with goals, plain figures, notes and skipped peers."""

    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    infos: list[Info] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def check(self, *args: Any, **kwargs: Any) -> Check:
        c = Check(self.name, *args, **kwargs)
        self.checks.append(c)
        print(c.line(), flush=True)
        return c

    def info(self, *args: Any, **kwargs: Any) -> Info:
        i = Info(self.name, *args, **kwargs)
        self.infos.append(i)
        print(i.line(), flush=True)
        return i

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"[{self.name}] note: {text}", flush=True)

    def skip(self, text: str) -> None:
        self.skipped.append(text)
        print(f"[{self.name}] skipped: {text}", flush=True)


def fmt(x: float) -> str:
    """Human-readable number: 15.7k, 2.31, 0.0123."""
    if x != x:
        return "nan"
    ax = abs(x)
    if ax >= 1e6:
        return f"{x / 1e6:.2f}M"
    if ax >= 1e4:
        return f"{x / 1e3:.1f}k"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.4g}"


# The clock of the in-process sections (training, lasso): wall time by default; with
# ``--clock cpu`` the process's CPU time, which on a shared machine leaves out the time other
# processes hold the core (only meaningful with ``--threads 1``, where CPU time = busy time).
_CLOCK: dict[str, Callable[[], float]] = {"now": time.perf_counter}


def set_clock(name: str) -> None:
    _CLOCK["now"] = time.process_time if name == "cpu" else time.perf_counter


def now() -> float:
    """The benchmark clock (see ``set_clock``)."""
    return _CLOCK["now"]()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of one call on the benchmark clock, and its result."""
    t0 = now()
    out = fn()
    return now() - t0, out


def best_of(times: list[float]) -> float:
    """The least-disturbed run: on a shared machine noise only ever adds time."""
    return min(times)


def median(values: list[float]) -> float:
    return statistics.median(values)
