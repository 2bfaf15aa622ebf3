"""Request and response schemas of /models: a model, predictions, sparsity statistics."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.schemas import UTCDateTime


class ModelRead(BaseModel):
    """A trained model: what it was trained on, how, and how well."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    job_id: str | None
    dataset_id: str | None
    task: str
    target: str
    loss: str
    feature_names: list[str] = Field(description="Raw input columns, in order (for 'instances').")
    required_features: list[str] | None = Field(
        default=None,
        description="The features a prediction reads (the others' first-layer weights are all "
        "zero): rows may leave the rest out, and their values are ignored. Given by "
        "GET /models/{id}; null in lists.",
    )
    classes: list[Any] | None = Field(description="Class labels (classification), else null.")
    spec: dict[str, Any]
    metrics: dict[str, Any]
    created_at: UTCDateTime
    size_bytes: int = Field(description="Size of the exported npz.")


PREDICT_EXAMPLES: dict[str, Any] = {
    "rows": {
        "summary": "Rows as objects (feature name -> value)",
        "value": {
            "rows": [
                {
                    "income": 40.3,
                    "debt_ratio": 0.14,
                    "late_payments": 0,
                    "years_employed": 18,
                    "employment": "salaried",
                    "region": "east",
                    "noise_1": 0.6,
                    "noise_2": 0.97,
                    "noise_3": 0.04,
                    "noise_4": -2.07,
                    "shoe_size": 44,
                }
            ]
        },
    },
    "instances": {
        "summary": "Rows as arrays, in the model's feature_names order",
        "value": {
            "instances": [[40.3, 0.14, 0, 18, "salaried", "east", 0.6, 0.97, 0.04, -2.07, 44]]
        },
    },
}


class PredictRequest(BaseModel):
    """Rows to predict: either ``rows`` (objects) or ``instances`` (arrays in feature order)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [PREDICT_EXAMPLES["rows"]["value"]]}
    )

    rows: list[dict[str, Any]] | None = Field(
        default=None, description="One object per row: {feature name: value}."
    )
    instances: list[list[Any]] | None = Field(
        default=None, description="One array per row, values in the model's feature_names order."
    )


class PredictResponse(BaseModel):
    """Predictions in the dataset's own label values (classification) or target units."""

    predictions: list[Any]
    probabilities: list[list[float]] | None = Field(
        description="Per-row class probabilities in 'classes' order; null for regression and "
        "hinge-loss classifiers."
    )
    classes: list[Any] | None


class LayerWeights(BaseModel):
    """One dense layer's weight matrix ``W (D, M)``: ``values[i][j]`` links input ``i`` to unit
    ``j``."""

    layer: str = Field(description="The layer's name, as in /sparsity.")
    shape: list[int] = Field(description="[D, M]: inputs x units.")
    values: list[list[float]]
    row_names: list[str] | None = Field(
        description="Input layer: the encoded feature of each row (one-hot columns as "
        "'name=category'); null for deeper layers."
    )


class Histogram(BaseModel):
    """Histogram of a layer's weights: ``counts[i]`` weights in ``[edges[i], edges[i + 1])``."""

    edges: list[float]
    counts: list[int]


class LayerSparsity(BaseModel):
    """Sparsity statistics of one kernel: a Dense ``W (D, M)`` or a Conv2D ``W (F, C, kh, kw)``.

    The conv fields (``filters_off`` ... ``dead_channel_indices``) are given for Conv2D layers
    (``conv0``, ``conv1``, ...) and null for Dense layers.
    """

    name: str = Field(description="'conv<k>' or 'dense<k>', input side first.")
    shape: list[int] = Field(description="[D, M] for Dense, [F, C, kh, kw] for Conv2D.")
    zeros: int = Field(description="Exactly zero weights.")
    zero_fraction: float
    near_zero: int = Field(description="Weights with |w| <= tolerance.")
    l1_norm: float
    l2_norm: float
    max_abs: float
    dead_units: int = Field(
        description="Units (Dense columns, Conv2D output channels) whose value no longer depends "
        "on the input: all incoming weights zero, or nothing of them read by the next layer."
    )
    dead_unit_indices: list[int] = []
    histogram: Histogram
    filters_off: int | None = Field(
        default=None,
        description="Conv2D: filters whose weights W[f] are all zero (switched off, e.g. by "
        "group_l1: the channel is its bias alone).",
    )
    filter_indices_off: list[int] | None = Field(
        default=None, description="Conv2D: the indices f of those filters."
    )
    filter_l1_norms: list[float] | None = Field(
        default=None, description="Conv2D: ||W[f]||_1 per filter (over C * kh * kw weights)."
    )
    filter_l2_norms: list[float] | None = Field(
        default=None, description="Conv2D: ||W[f]||_2 per filter (over C * kh * kw weights)."
    )
    dead_channels: int | None = Field(
        default=None,
        description="Conv2D: input channels c no filter reads (W[:, c] all zero).",
    )
    dead_channel_indices: list[int] | None = Field(
        default=None, description="Conv2D: the indices c of those input channels."
    )


class SparsityRead(BaseModel):
    """What the model learned to ignore: exact zeros, dropped features, dead units.

    A CNN lists its Conv2D kernels first; its one feature is the image column.
    """

    tolerance: float
    total_weights: int = Field(description="Kernel weights of every Dense and Conv2D layer.")
    zero_weights: int
    zero_fraction: float = Field(
        description="zero_weights / total_weights (biases never count), as in the job history."
    )
    selected_features: list[str]
    dropped_features: list[str]
    feature_importance: dict[str, float]
    layers: list[LayerSparsity]
