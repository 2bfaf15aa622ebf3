"""One settings object, read from ``REGULA_*`` environment variables (and an optional ``.env``)."""

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings; the defaults give a working embedded service (SQLite, local workers)."""

    model_config = SettingsConfigDict(env_prefix="REGULA_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./regula.db",
        description="SQLAlchemy URL; `postgresql+psycopg://user:password@host:5432/db` for "
        "scale-out",
    )
    data_dir: Path = Field(
        default=Path("./data"),
        description="folder of the uploaded datasets; shared by the API and all workers",
    )
    executor: str = Field(
        default="local",
        description="`local`: an embedded Dask `LocalCluster`; `tcp://host:8786`: an existing "
        "Dask scheduler; `inline`: a thread of the API process (tests)",
    )
    workers: int = Field(
        default=2, ge=1, le=256, description="worker processes of the embedded `LocalCluster`"
    )
    host: str = Field(default="127.0.0.1", description="bind address of `regula serve`")
    port: int = Field(default=8000, ge=0, le=65535, description="port of `regula serve`")

    max_upload_mb: int = Field(default=200, ge=1, description="largest accepted upload")
    max_columns: int = Field(default=2000, ge=1, description="most columns in a dataset")
    body_read_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="a request body that sends nothing for this long is answered 408 (a "
        "stalled or gone client)",
    )
    ingest_threads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="threads of the uploads' own pool (parsing, converting, committing)",
    )
    max_image_pixels: int = Field(
        default=4096 * 4096, ge=1, le=2**31, description="pixels of one decoded uploaded image"
    )
    max_decoded_mb: int = Field(
        default=4096,
        ge=1,
        le=1_048_576,
        description="bytes of an image upload's whole decoded array",
    )
    max_epochs: int = Field(default=10_000, ge=1, description="most epochs in one job")
    max_batch_size: int = Field(default=65_536, ge=1, description="largest batch size")
    max_epoch_rows: int = Field(
        default=2_000_000_000,
        ge=1,
        description="most epochs x rows one job may process (a guard against accidental "
        "giant jobs)",
    )
    max_predict_rows: int = Field(
        default=100_000, ge=1, description="most rows in one predict request"
    )
    max_job_memory_mb: int = Field(
        default=4096,
        ge=1,
        le=1_048_576,
        description="a job whose estimated peak memory (data, encoded copies, weights, "
        "optimizer state, activations, validation pass) is larger is refused at submit; a "
        "worker holds a running job to it (with a 25% margin) and fails it as `out_of_memory`",
    )
    max_model_mb: int = Field(
        default=256,
        ge=1,
        le=1000,
        description="largest model (its weights must fit one database value and the "
        "prediction cache); larger networks are refused at submit",
    )
    max_classes: int = Field(
        default=1000,
        ge=2,
        le=100_000,
        description="a classification target with more distinct values is refused at submit",
    )
    job_timeout_seconds: float = Field(
        default=3600.0, gt=0, description="a job running longer fails with code `timeout`"
    )
    heartbeat_seconds: float = Field(
        default=2.0, gt=0, le=3600, description="how often a running job refreshes its heartbeat"
    )
    history_flush_seconds: float = Field(
        default=0.25,
        ge=0,
        le=60,
        description="epoch rows are written at most this often (one commit per flush)",
    )
    progress_log_seconds: float = Field(
        default=5.0, ge=0, le=3600, description="how often a running job logs its progress"
    )
    stale_after_seconds: float = Field(
        default=30.0,
        gt=0,
        description="a running job whose heartbeat is older is taken back by the reaper",
    )
    max_attempts: int = Field(
        default=2, ge=1, description="attempts per job before a lost worker fails it for good"
    )
    model_cache_mb: int = Field(
        default=512,
        ge=0,
        le=1_048_576,
        description="loaded models kept for prediction, bounded by their arrays' bytes (0 "
        "disables the cache)",
    )
    max_predict_mb: int = Field(
        default=16,
        ge=1,
        le=4096,
        description="largest predict body (parsed into Python objects of ~10x its size: far "
        "below the upload limit)",
    )
    max_queued_per_key: int = Field(
        default=20,
        ge=1,
        le=100_000,
        description="queued + running jobs one API key may have at once; beyond it `POST "
        "/jobs` answers 429",
    )
    quota_retry_after_seconds: int = Field(
        default=30, ge=1, le=3600, description="the `Retry-After` of that 429"
    )

    auth_required: bool = Field(
        default=False,
        description="require an API key (`regula keys create --name NAME`) on every request",
    )
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="a server trusts a key it found valid this long without asking the database "
        "again (0: every request asks); a revocation made in the same process applies at once, "
        "one made by another process (`regula keys revoke`, another server) within this time",
    )
    metrics_token: str | None = Field(
        default=None,
        description="when set, `GET /metrics` needs `Authorization: Bearer <this token>`; "
        "when unset, no key at all",
    )
    log_level: str = Field(default="info", description="log level")

    @field_validator("executor")
    @classmethod
    def _check_executor(cls, value: str) -> str:
        if value not in ("local", "inline") and not value.startswith(("tcp://", "tls://")):
            raise ValueError(
                "executor must be 'local', 'inline' or a scheduler address tcp://host:port"
            )
        return value

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def max_decoded_bytes(self) -> int:
        return self.max_decoded_mb * 1024 * 1024

    @property
    def max_predict_bytes(self) -> int:
        return self.max_predict_mb * 1024 * 1024

    @property
    def model_cache_bytes(self) -> int:
        return self.model_cache_mb * 1024 * 1024


def settings_table() -> str:
    """The README's table of settings, from the fields above (a test holds the README to it)."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        value = field.default
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, Path) and not value.is_absolute():
            value = f"./{value}"
        default = "unset" if value is None else f"`{value}`"
        lines.append(f"| `REGULA_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(lines) + "\n"


settings = Settings()
