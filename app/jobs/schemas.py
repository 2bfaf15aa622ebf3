"""Request and response schemas of /jobs: the TrainingSpec, a job, its loss history.

The enums come from the engine's registries, so the schema and the engine accept the same names.
Numeric ranges mirror ``engine.normalize_spec``; the service still runs ``normalize_spec`` after
pydantic, so the engine stays the one authority on what a spec means (and fills every default).
"""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

import engine
from engine.spec import SEARCH_PARAMS, SEARCH_SELECT

Task = Literal[engine.TASKS]  # type: ignore[valid-type]
LossName = Literal[engine.LOSSES]  # type: ignore[valid-type]
Activation = Literal[engine.ACTIVATIONS]  # type: ignore[valid-type]
# "glorot" / "xavier" are accepted aliases of glorot_uniform (stored under the canonical name).
Initializer = Literal[(*engine.INITIALIZERS, "glorot", "xavier")]  # type: ignore[valid-type]
DropoutMode = Literal[engine.DROPOUT_MODES]  # type: ignore[valid-type]
OptimizerName = Literal[engine.OPTIMIZERS]  # type: ignore[valid-type]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def _as_utc(value: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; every timestamp we store is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


UTCDateTime = Annotated[datetime, AfterValidator(_as_utc)]


class _Strict(BaseModel):
    # Unknown fields are errors: a typo such as "l1_strength" must not silently train without L1.
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """Network shape: hidden layer widths (empty = a linear model), activation, initializer."""

    hidden_layers: list[int] = Field(
        default=[64, 32],
        max_length=64,
        description="Hidden layer widths; [] gives a linear model (Lasso, Ridge, logistic...).",
    )
    activation: Activation = "relu"
    init: Initializer = "he"
    leaky_slope: float = Field(default=0.01, ge=0.0, lt=1.0)


class LossParams(_Strict):
    """Loss hyperparameters."""

    huber_delta: float = Field(default=1.0, gt=0.0)
    hinge_margin: float = Field(default=1.0, gt=0.0)
    eps: float = Field(default=1e-7, gt=0.0, lt=0.5, description="Probability clipping.")


class Regularization(_Strict):
    """Penalty ``l1 * sum|W| + l2 * sum(W^2) + group_l1 * sum_j ||W1[j, :]||_2`` (weights only)."""

    l1: float = Field(default=0.0, ge=0.0)
    l2: float = Field(default=0.0, ge=0.0)
    group_l1: float = Field(default=0.0, ge=0.0)
    l1_method: Literal["proximal", "subgradient"] = "proximal"


class Dropout(_Strict):
    """Dropout: rates are DROP probabilities in [0, 1)."""

    input: float = Field(default=0.0, ge=0.0, lt=1.0)
    hidden: float = Field(default=0.0, ge=0.0, lt=1.0)
    mode: DropoutMode = "inverted"


class Optimizer(_Strict):
    """Optimizer and its hyperparameters; decay: ``lr_t = lr / (1 + decay * t)``."""

    name: OptimizerName = "sgd"
    learning_rate: float = Field(default=0.01, gt=0.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    decay: float = Field(default=0.0, ge=0.0)
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta2: float = Field(default=0.999, ge=0.0, lt=1.0)
    eps: float = Field(default=1e-8, gt=0.0)
    rho: float = Field(default=0.9, ge=0.0, lt=1.0)


class EarlyStopping(_Strict):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    monitor: Literal["val_loss", "loss"] | None = Field(
        default=None, description="Default: val_loss with a validation split, else loss."
    )
    patience: int = Field(default=5, ge=1)
    min_delta: float = Field(default=0.0, ge=0.0)


# A search multiplies the work of one fit by (points x (folds + 1)): the per-fit limits of the
# service stay per fit, and these bound the multiplier (the engine's own caps are far looser).
MAX_SEARCH_POINTS = 200
MAX_SEARCH_FOLDS = 20


class Search(_Strict):
    """A regularization path: fit every value of ``param`` on a descending grid (``values``, or
    ``num`` log-spaced from lambda_max down to ``min_ratio * lambda_max``), score each by
    ``folds``-fold cross-validation and train the final model at the ``select`` choice."""

    param: Literal[SEARCH_PARAMS] = "l1"  # type: ignore[valid-type]
    values: list[Annotated[float, Field(ge=0.0)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SEARCH_POINTS,
        description="An explicit grid; excludes num and min_ratio.",
    )
    num: int | None = Field(default=None, ge=2, le=MAX_SEARCH_POINTS, description="Default 20.")
    min_ratio: float | None = Field(default=None, gt=0.0, lt=1.0, description="Default 1e-3.")
    folds: int = Field(default=5, ge=2, le=MAX_SEARCH_FOLDS)
    select: Literal[SEARCH_SELECT] = Field(  # type: ignore[valid-type]
        default="min",
        description="min: lowest mean CV loss; 1se: largest value within one standard error.",
    )


# Matches app/examples/credit.csv (upload it first and paste its id): an L1 + L2 network whose
# sparsity report shows the irrelevant columns switched off.
TRAINING_SPEC_EXAMPLE: dict[str, Any] = {
    "dataset_id": "3f2c1a9e8b7d4c6f9a0b1c2d3e4f5a6b",
    "target": "default",
    "features": None,
    "task": "classification",
    "model": {"hidden_layers": [16], "activation": "relu", "init": "he"},
    "loss": "softmax_cross_entropy",
    "regularization": {"l1": 0.005, "l2": 0.0001, "group_l1": 0.02, "l1_method": "proximal"},
    "dropout": {"input": 0.0, "hidden": 0.1, "mode": "inverted"},
    "optimizer": {"name": "adam", "learning_rate": 0.01, "decay": 1e-6},
    "epochs": 60,
    "batch_size": 64,
    "validation_split": 0.2,
    "shuffle": True,
    "seed": 1024,
    "early_stopping": {"monitor": "val_loss", "patience": 10},
    "standardize": True,
    "dtype": "float32",
}


class TrainingSpec(_Strict):
    """What to train: a dataset, its target and features, and the engine spec."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [TRAINING_SPEC_EXAMPLE]}
    )

    dataset_id: str = Field(min_length=1, max_length=64, description="An uploaded dataset's id.")
    target: str = Field(min_length=1, description="The column to predict.")
    features: list[str] | None = Field(
        default=None, min_length=1, description="Input columns; null = every column but the target."
    )
    task: Task | None = Field(default=None, description="Default: inferred from the loss.")
    model: ModelSpec = ModelSpec()
    loss: LossName | None = Field(
        default=None,
        description="Default: softmax_cross_entropy (classification) or mse (regression).",
    )
    loss_params: LossParams = LossParams()
    regularization: Regularization = Regularization()
    dropout: Dropout = Dropout()
    optimizer: Optimizer = Optimizer()
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=32, ge=1)
    validation_split: float = Field(default=0.0, ge=0.0, lt=1.0)
    shuffle: bool = True
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    early_stopping: EarlyStopping | None = None
    standardize: bool = True
    dtype: Literal["float32", "float64"] = "float32"
    search: Search | None = Field(
        default=None, description="null = a single fit; else a regularization path (see Search)."
    )

    def engine_spec(self) -> dict[str, Any]:
        """The engine part of the spec: only what the caller set (the engine fills defaults)."""
        return self.model_dump(
            exclude_unset=True, exclude={"dataset_id", "target", "features"}, mode="json"
        )


class LatestEpoch(BaseModel):
    """The headline figures of a job's last finished epoch (the full row is in /history)."""

    epoch: int
    loss: float | None
    val_loss: float | None
    metric: float | None
    zero_fraction: float | None


class JobRead(BaseModel):
    """A training job."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    status: JobStatus
    progress: float = Field(description="Fraction of epochs done, 0..1.")
    error: str | None = Field(description="Why the job failed, as a sentence.")
    error_code: str | None = Field(description="Stable machine-readable failure code.")
    model_id: str | None
    dataset_id: str | None
    created_at: UTCDateTime
    started_at: UTCDateTime | None
    finished_at: UTCDateTime | None
    epochs_done: int
    attempts: int
    cancel_requested: bool
    spec: dict[str, Any] = Field(
        description="The normalized spec: every default filled in, plus dataset_id/target/features."
    )
    latest: LatestEpoch | None = Field(
        default=None, description="The last finished epoch's figures; null before the first epoch."
    )
    eta_seconds: float | None = Field(
        default=None,
        description="Seconds left: mean seconds per epoch x epochs left (an upper bound when early "
        "stopping may end the job sooner); 0 once finished, null when unknown (queued, or no "
        "epoch finished yet).",
    )


class EpochRead(BaseModel):
    """One epoch of a job's history (training-split loss = data_loss + penalty)."""

    model_config = ConfigDict(from_attributes=True)

    epoch: int
    loss: float | None
    data_loss: float | None
    penalty: float | None
    val_loss: float | None
    metric: float | None
    val_metric: float | None
    zero_fraction: float | None
    learning_rate: float | None
    seconds: float | None


class JobHistory(BaseModel):
    """A job's loss history, one row per finished epoch."""

    job_id: str
    epochs: list[EpochRead]


class EventStats(BaseModel):
    """The poller of a job's event stream: one per job, however many subscribers."""

    active: bool = Field(description="A poller is running for this job now.")
    subscribers: int = Field(description="Clients connected to the stream now.")
    peak_subscribers: int = Field(description="Most clients connected at once to this poller.")
    polls: int = Field(description="Database polls made by the job's current (or last) poller.")
    statements: int = Field(description="SQL statements those polls ran (two per poll).")
