"""One settings object, read from ``REGULA_*`` environment variables (and an optional ``.env``)."""

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings; the defaults give a working embedded service (SQLite, local workers)."""

    model_config = SettingsConfigDict(env_prefix="REGULA_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///./regula.db"
    data_dir: Path = Path("./data")
    # "local": an embedded Dask LocalCluster started by the service; "tcp://host:8786": an
    # existing Dask scheduler; "inline": run job bodies in a thread of the API process (tests).
    executor: str = "local"
    workers: int = Field(default=2, ge=1, le=256)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    max_upload_mb: int = Field(default=200, ge=1)
    max_columns: int = Field(default=2000, ge=1)
    max_epochs: int = Field(default=10_000, ge=1)
    max_batch_size: int = Field(default=65_536, ge=1)
    # A job may process at most this many epoch x row units (a guard against accidental giant jobs).
    max_epoch_rows: int = Field(default=2_000_000_000, ge=1)
    max_predict_rows: int = Field(default=100_000, ge=1)
    # Estimated peak memory of one training job (weights, gradients, optimizer state, activations).
    max_job_memory_mb: int = Field(default=4096, ge=1)
    job_timeout_seconds: float = Field(default=3600.0, gt=0)
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    # A running job whose heartbeat is older than this is considered orphaned at start-up.
    stale_after_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=2, ge=1)
    # Loaded models kept for prediction, bounded by their arrays' bytes (0 disables the cache).
    model_cache_mb: int = Field(default=512, ge=0, le=1_048_576)
    # A predict body is parsed into Python objects (~10x its size): far below the upload limit.
    max_predict_mb: int = Field(default=16, ge=1, le=4096)

    auth_required: bool = False
    log_level: str = "info"

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
    def max_predict_bytes(self) -> int:
        return self.max_predict_mb * 1024 * 1024

    @property
    def model_cache_bytes(self) -> int:
        return self.model_cache_mb * 1024 * 1024


settings = Settings()
