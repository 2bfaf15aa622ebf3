"""Plots of a job's loss history, drawn with matplotlib off the event loop.

matplotlib is used through ``matplotlib.figure.Figure`` (whose ``savefig`` draws on the Agg or SVG
canvas for the format), never ``pyplot``: no global backend switch, no figure registry, nothing
left open. Callers are
sync routes (FastAPI runs them in its thread pool); ``render`` serialises drawing with a lock
because matplotlib does not promise thread safety.
"""

import io
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

MEDIA_TYPES = {"svg": "image/svg+xml", "png": "image/png"}
PNG_DPI = 100
_DRAW_LOCK = threading.Lock()

# (history field, label, style) of the loss curves, on the left axis.
LOSS_CURVES = (
    ("loss", "total loss", {"color": "#1f77b4", "linewidth": 2.0}),
    ("data_loss", "data loss", {"color": "#2ca02c", "linestyle": "--"}),
    ("penalty", "penalty", {"color": "#9467bd", "linestyle": ":"}),
    ("val_loss", "val_loss", {"color": "#ff7f0e", "linewidth": 2.0}),
)


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    # A missing value (no validation split, a diverged epoch) is a gap, not a zero.
    return [math.nan if row.get(key) is None else float(row[key]) for row in rows]


def loss_figure(rows: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """Loss curves per epoch (left axis) and the fraction of exactly-zero weights (right axis)."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title, fontsize=10)
    if not rows:
        ax.text(0.5, 0.5, "no epoch finished yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    epochs = [int(row["epoch"]) for row in rows]
    handles = []
    marker = "." if len(rows) < 40 else ""
    for key, label, style in LOSS_CURVES:
        values = _series(rows, key)
        if all(math.isnan(v) for v in values):
            continue
        (line,) = ax.plot(epochs, values, label=label, marker=marker, **style)
        handles.append(line)
    positive = [v for key, *_ in LOSS_CURVES for v in _series(rows, key) if v > 0]
    if positive and max(positive) / min(positive) > 1e3:
        ax.set_yscale("log")  # a penalty orders of magnitude under the data loss stays readable
    zero = _series(rows, "zero_fraction")
    if not all(math.isnan(v) for v in zero):
        ax2 = ax.twinx()
        (line,) = ax2.plot(epochs, zero, color="#7f7f7f", linewidth=1.5, label="zero fraction")
        ax2.fill_between(epochs, zero, color="#7f7f7f", alpha=0.12)
        ax2.set_ylabel("fraction of weights exactly 0")
        ax2.set_ylim(0.0, 1.0)
        handles.append(line)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    return fig


def render(fig: Figure, fmt: str) -> bytes:
    """The figure as SVG or PNG bytes (SVG without a timestamp, so equal plots are equal bytes)."""
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"unknown plot format {fmt!r}")
    out = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else None
    with _DRAW_LOCK:
        # Figure.savefig picks the Agg or SVG canvas for the format; no backend is set globally.
        fig.savefig(out, format=fmt, dpi=PNG_DPI, metadata=metadata)
    return out.getvalue()
