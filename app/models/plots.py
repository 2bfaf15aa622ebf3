"""The sparsity plot of a trained model: what L1 switched off, drawn with matplotlib.

Three panels, from ``engine.sparsity(model)`` and the first Dense layer's weights ``W1 (D, M)``:
the ``|W1|`` heatmap (encoded input rows x units) with exact zeros in a colour of their own, the
per-feature importance ``||W1[G_j, :]||_2`` with dropped features greyed, and the fraction of
exact zeros per layer. Rendering goes through ``app.jobs.plots.render`` (no pyplot, a lock).
"""

from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from sqlalchemy.orm import Session

import engine
from app.jobs.plots import render
from app.models import service

# Beyond these the panels show the first rows/units (heatmap) or the strongest features (bars).
MAX_HEATMAP_ROWS = 200
MAX_HEATMAP_UNITS = 200
MAX_FEATURE_BARS = 40
ZERO_COLOR = "#d62728"
DROPPED_COLOR = "#c7c7c7"
KEPT_COLOR = "#1f77b4"


def _row_labels(model: Any, n_rows: int) -> list[str]:
    """Name of each encoded input row (the preprocessor's), or x0.. when W1 reads something else."""
    names = list(getattr(model.preprocessor, "encoded_names", None) or [])
    return names if len(names) == n_rows else [f"x{i}" for i in range(n_rows)]


def sparsity_figure(model: Any, title: str = "") -> Figure:
    """The three-panel sparsity figure of a loaded ``engine`` model."""
    stats = engine.sparsity(model)
    W1 = np.asarray(model.network.weights[0], dtype=np.float64)
    fig = Figure(figsize=(12, 5), layout="constrained")
    if title:
        fig.suptitle(title, fontsize=10)
    heat, bars, layers = fig.subplots(1, 3, width_ratios=[1.3, 1.0, 0.8])

    # |W1| with exact zeros masked out and painted ZERO_COLOR ("bad" values of the colormap).
    shown = W1[:MAX_HEATMAP_ROWS, :MAX_HEATMAP_UNITS]
    cmap = ListedColormap(
        np.linspace([0.97, 0.97, 1.0, 1.0], [0.03, 0.19, 0.42, 1.0], 256), name="abs_w"
    ).with_extremes(bad=ZERO_COLOR)
    image = heat.imshow(
        np.ma.masked_equal(np.abs(shown), 0.0), aspect="auto", interpolation="nearest", cmap=cmap
    )
    fig.colorbar(image, ax=heat, label="|w|", shrink=0.8)
    cut = "" if shown.shape == W1.shape else f" (first {shown.shape[0]}x{shown.shape[1]})"
    heat.set_title(f"first layer |W| {W1.shape[0]}x{W1.shape[1]}{cut}", fontsize=9)
    heat.set_xlabel("unit")
    heat.xaxis.set_major_locator(MaxNLocator(integer=True))
    labels = _row_labels(model, W1.shape[0])[: shown.shape[0]]
    if len(labels) <= 40:
        heat.set_yticks(range(len(labels)), labels, fontsize=7)
    else:
        heat.set_ylabel("input row")
    heat.legend(handles=[Patch(color=ZERO_COLOR, label="exactly 0")], loc="upper right", fontsize=7)

    # Feature importance; dropped features (all outgoing weights exactly 0) greyed.
    importance: dict[str, float] = stats["feature_importance"]
    dropped = set(stats["dropped_features"])
    names = list(importance)
    if len(names) > MAX_FEATURE_BARS:
        names = sorted(names, key=lambda n: -importance[n])[:MAX_FEATURE_BARS]
    y = np.arange(len(names))
    bars.barh(
        y,
        [importance[n] for n in names],
        color=[DROPPED_COLOR if n in dropped else KEPT_COLOR for n in names],
    )
    bars.set_yticks(y, names, fontsize=7)
    bars.invert_yaxis()
    bars.set_xlabel("importance ||W1[feature, :]||_2")
    bars.set_title(
        f"features: {len(stats['selected_features'])} kept, {len(dropped)} dropped", fontsize=9
    )
    bars.legend(
        handles=[
            Patch(color=KEPT_COLOR, label="kept"),
            Patch(color=DROPPED_COLOR, label="dropped (all weights 0)"),
        ],
        loc="lower right",
        fontsize=7,
    )

    # Fraction of exact zeros per layer.
    names = [layer["name"] for layer in stats["layers"]]
    fractions = [layer["zero_fraction"] for layer in stats["layers"]]
    layers.bar(range(len(names)), fractions, color="#7f7f7f")
    layers.set_xticks(range(len(names)), names, fontsize=7, rotation=30)
    layers.set_ylim(0.0, 1.0)
    layers.set_ylabel("fraction of weights exactly 0")
    layers.set_title(f"zero fraction (all: {stats['zero_fraction']:.1%})", fontsize=9)
    for x, value in enumerate(fractions):
        layers.text(x, min(value + 0.02, 0.95), f"{value:.0%}", ha="center", fontsize=7)
    return fig


def sparsity_plot(*, session: Session, model_id: str, owner_id: str | None, fmt: str) -> bytes:
    """Load the caller's model from its row (``engine.load``) and draw its sparsity plot."""
    weights = service.get_weights(session=session, model_id=model_id, owner_id=owner_id)
    session.close()  # loading and drawing take a while; no reason to hold a connection
    model = engine.load(weights)
    return render(sparsity_figure(model, title=f"model {model_id}"), fmt)
