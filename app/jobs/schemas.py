"""Request and response schemas of /jobs: the TrainingSpec, a job, its loss history.

The spec's fields, defaults, bounds and choices come from the engine's registry
(``app.jobs.spec_schema``); the service still runs ``normalize_spec`` after pydantic, so the
engine stays the one authority on what a spec means (and fills every default).
"""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.jobs.spec_schema import EngineSpec

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
# A column name longer than this cannot exist in a dataset (uploads cap names at 255 characters).
MAX_NAME_CHARS = 255
MAX_FEATURES = 100_000


def _as_utc(value: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; every timestamp we store is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


UTCDateTime = Annotated[datetime, AfterValidator(_as_utc)]


# Matches app/examples/credit.csv (upload it first and paste its id): an L1 + L2 network whose
# sparsity report shows the irrelevant columns switched off.
TRAINING_SPEC_EXAMPLE: dict[str, Any] = {
    "dataset_id": "3f2c1a9e8b7d4c6f9a0b1c2d3e4f5a6b",
    "target": "default",
    "features": None,
    "task": "classification",
    "model": {"hidden_layers": [16], "activation": "relu", "init": "he"},
    "loss": "softmax_cross_entropy",
    "regularization": {"l1": 0.005, "l2": 0.0001, "group_l1": 0.04, "l1_method": "proximal"},
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


class TrainingSpec(EngineSpec):
    """What to train: a dataset, its target and features, and the engine spec."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [TRAINING_SPEC_EXAMPLE]}
    )

    dataset_id: str = Field(min_length=1, max_length=64, description="An uploaded dataset's id.")
    target: str = Field(
        min_length=1, max_length=MAX_NAME_CHARS, description="The column to predict."
    )
    features: list[Annotated[str, Field(max_length=MAX_NAME_CHARS)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_FEATURES,
        description="Input columns; null = every column but the target.",
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
    progress: float = Field(
        description="Fraction of epochs done, 0..1 (of path points over all splits for a search)."
    )
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
    statements: int = Field(
        description="SQL statements those polls ran (two per poll, three for a search job)."
    )
