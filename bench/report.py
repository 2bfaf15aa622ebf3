"""Write the latest figures and the machine's description to RESULTS.md."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from bench.common import SectionResult, fmt
from bench.machine import describe_markdown

ANALYSIS = Path(__file__).resolve().parent / "where_the_time_goes.md"


def write_results(
    path: Path, results: list[SectionResult], desc: dict[str, Any], *, command: str
) -> None:
    """Render ``results`` as markdown at ``path`` (the hand-written analysis is appended)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Regula benchmark results",
        "",
        f"Latest run: {now}, `{command}`.",
        "Ratios are Regula relative to the peer, measured in the same run on the same machine (the",
        "machine is shared, so absolute figures are noisy; each figure is the best of interleaved",
        "rounds unless stated). Regenerate with `python -m bench`.",
        "",
        "## Machine",
        "",
        describe_markdown(desc),
        "",
        "## Goals",
        "",
        "| section | measure | regula | peer | peer value | ratio | goal | |",
        "| --- | --- | ---: | --- | ---: | ---: | --- | --- |",
    ]
    for r in results:
        for c in r.checks:
            out.append(
                f"| {r.name} | {c.name} | {fmt(c.ours)} {c.unit} | {c.peer_name} | "
                f"{fmt(c.peer)} {c.unit} | {c.ratio:.2f}x | {c.op} {c.goal:g}x | **{c.verdict}** |"
            )
    for r in results:
        out += ["", f"## {r.title}", "", f"Section wall time: {r.seconds:.1f} s.", ""]
        if r.error:
            out += [f"**Error:** `{r.error}`", ""]
        for c in r.checks:
            out.append(f"- {c.line()}")
        for i in r.infos:
            out.append(f"- {i.line()}")
        for s in r.skipped:
            out.append(f"- skipped: {s}")
        for n in r.notes:
            if "\n" in n:
                head, body = n.split("\n", 1)
                out += [f"- {head}", "", "```", body, "```", ""]
            else:
                out.append(f"- {n}")
    out += ["", "## Where the time goes", ""]
    if ANALYSIS.exists():
        out.append(ANALYSIS.read_text().strip())
    else:
        out.append("(no analysis yet)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
