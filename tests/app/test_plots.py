"""Plots: the loss history of a job and the sparsity of a model, as SVG and PNG.

The figures are checked as figures (which curves, which colours, which cells are exact zeros),
the responses as files (content type, a parseable SVG, a PNG of the stated size), and matplotlib
is used without pyplot.
"""

import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from matplotlib.colors import to_hex

import engine
from app.jobs import plots as job_plots
from app.models import plots as model_plots
from tests.app.test_jobs import train, upload

ROOT = Path(__file__).resolve().parents[2]


def _noise_csv(n: int = 200, seed: int = 0) -> bytes:
    """y = 2a - b + noise; c, d, e are pure noise (an L1 model drops them)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = 2 * X[:, 0] - X[:, 1] + 0.05 * rng.normal(size=n)
    lines = ["a,b,c,d,e,y"] + [",".join(f"{v:.5f}" for v in row) for row in np.c_[X, y]]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def lasso(client: TestClient) -> dict[str, Any]:
    dataset = upload(client, _noise_csv())
    return train(
        client,
        dataset["id"],
        target="y",
        loss="mse",
        regularization={"l1": 0.2},
        epochs=30,
        batch_size=32,
        validation_split=0.2,
    )


def _png_size(content: bytes) -> tuple[int, int]:
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", content[16:24])
    return width, height


def test_loss_plot_svg_is_an_svg_document(client: TestClient, lasso: dict[str, Any]) -> None:
    response = client.get(f"/jobs/{lasso['id']}/plots/loss.svg")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(response.content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert b"zero fraction" in response.content and b"val_loss" in response.content


def test_loss_plot_png_has_the_figure_size(client: TestClient, lasso: dict[str, Any]) -> None:
    response = client.get(f"/jobs/{lasso['id']}/plots/loss.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert _png_size(response.content) == (8 * job_plots.PNG_DPI, int(4.5 * job_plots.PNG_DPI))


def test_loss_figure_draws_each_loss_and_zero_fraction_on_its_own_axis(
    client: TestClient, lasso: dict[str, Any]
) -> None:
    rows = client.get(f"/jobs/{lasso['id']}/history").json()["epochs"]
    fig = job_plots.loss_figure(rows)
    loss_ax, zero_ax = fig.axes
    curves = {line.get_label(): line for line in loss_ax.get_lines()}
    assert set(curves) == {"total loss", "data loss", "penalty", "val_loss"}
    np.testing.assert_allclose(curves["penalty"].get_ydata(), [r["penalty"] for r in rows])
    np.testing.assert_array_equal(curves["total loss"].get_xdata(), range(1, 31))
    (zero,) = zero_ax.get_lines()
    np.testing.assert_allclose(zero.get_ydata(), [r["zero_fraction"] for r in rows])
    assert zero_ax.get_ylim() == (0.0, 1.0)


def test_loss_figure_leaves_out_a_missing_validation_curve() -> None:
    rows = [
        {
            "epoch": n,
            "loss": 1 / n,
            "data_loss": 1 / n,
            "penalty": 0.0,
            "val_loss": None,
            "zero_fraction": None,
        }
        for n in (1, 2, 3)
    ]
    fig = job_plots.loss_figure(rows)
    assert len(fig.axes) == 1  # no zero fraction recorded: no second axis
    assert {line.get_label() for line in fig.axes[0].get_lines()} == {
        "total loss",
        "data loss",
        "penalty",
    }


def test_loss_plot_of_a_job_without_epochs_says_so() -> None:
    fig = job_plots.loss_figure([])
    assert "no epoch finished yet" in [t.get_text() for t in fig.axes[0].texts]


def test_sparsity_plot_svg_and_png(client: TestClient, lasso: dict[str, Any]) -> None:
    svg = client.get(f"/models/{lasso['model_id']}/plots/sparsity.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert ET.fromstring(svg.content).tag.endswith("svg")
    png = client.get(f"/models/{lasso['model_id']}/plots/sparsity.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert _png_size(png.content) == (12 * job_plots.PNG_DPI, 5 * job_plots.PNG_DPI)


def test_sparsity_figure_greys_dropped_features_and_marks_exact_zeros(
    client: TestClient, lasso: dict[str, Any]
) -> None:
    model = engine.load(client.get(f"/models/{lasso['model_id']}/export").content)
    stats = engine.sparsity(model)
    assert stats["dropped_features"], "the L1 model should drop some noise columns"
    fig = model_plots.sparsity_figure(model)
    heat, bars, layers = fig.axes[:3]
    # Heatmap: exactly the zero weights of W1 are masked (drawn in the "bad" colour).
    image = heat.get_images()[0]
    W1 = model.network.weights[0]
    np.testing.assert_array_equal(np.ma.getmaskarray(image.get_array()), W1 == 0)
    assert to_hex(image.get_cmap().get_bad()) == model_plots.ZERO_COLOR
    # Bars: one per feature, in order, grey where dropped.
    names = [t.get_text() for t in bars.get_yticklabels()]
    assert names == model.feature_names
    for name, patch in zip(names, bars.patches, strict=True):
        grey = name in stats["dropped_features"]
        expected = model_plots.DROPPED_COLOR if grey else model_plots.KEPT_COLOR
        assert to_hex(patch.get_facecolor()) == expected
        assert patch.get_width() == pytest.approx(stats["feature_importance"][name])
    # Zero fraction per layer.
    heights = [p.get_height() for p in layers.patches]
    assert heights == pytest.approx([layer["zero_fraction"] for layer in stats["layers"]])


def test_plots_of_unknown_job_or_model_are_404(client: TestClient) -> None:
    assert client.get("/jobs/nope/plots/loss.svg").status_code == 404
    response = client.get("/models/nope/plots/sparsity.png")
    assert response.status_code == 404
    assert response.json()["detail"][0]["loc"] == ["path", "model_id"]


def test_plot_format_must_be_svg_or_png(client: TestClient, lasso: dict[str, Any]) -> None:
    response = client.get(f"/jobs/{lasso['id']}/plots/loss.gif")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "fmt"]


@pytest.mark.integration  # a subprocess
def test_plotting_never_imports_pyplot() -> None:
    code = (
        "import sys; from app.jobs import plots; from app.models import plots as m; "
        "plots.render(plots.loss_figure([{'epoch': 1, 'loss': 1.0}]), 'png'); "
        "print('matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
