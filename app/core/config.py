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
    # A request body that sends nothing for this long is answered 408 (a stalled or gone client).
    body_read_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Threads of the datasets domain's own pool (parsing, converting, committing uploads).
    ingest_threads: int = Field(default=2, ge=1, le=64)
    # Image uploads: pixels of one decoded image, and bytes of the whole decoded array.
    max_image_pixels: int = Field(default=4096 * 4096, ge=1, le=2**31)
    max_decoded_mb: int = Field(default=4096, ge=1, le=1_048_576)
    max_epochs: int = Field(default=10_000, ge=1)
    max_batch_size: int = Field(default=65_536, ge=1)
    # A job may process at most this many epoch x row units (a guard against accidental giant jobs).
    max_epoch_rows: int = Field(default=2_000_000_000, ge=1)
    max_predict_rows: int = Field(default=100_000, ge=1)
    # Estimated peak memory of one training job (weights, gradients, optimizer state, activations).
    max_job_memory_mb: int = Field(default=4096, ge=1, le=1_048_576)
    # A model's weights must fit one database value (SQLite and PostgreSQL cap those at 1 GB)
    # and the prediction cache; larger networks are refused at submit.
    max_model_mb: int = Field(default=256, ge=1, le=1000)
    # A classification target with more distinct values than this is refused at submit.
    max_classes: int = Field(default=1000, ge=2, le=100_000)
    job_timeout_seconds: float = Field(default=3600.0, gt=0)
    heartbeat_seconds: float = Field(default=2.0, gt=0, le=3600)
    # Epoch rows are written at most this often (one commit per flush), and logged this often.
    history_flush_seconds: float = Field(default=0.25, ge=0, le=60)
    progress_log_seconds: float = Field(default=5.0, ge=0, le=3600)
    # A running job whose heartbeat is older than this is considered orphaned at start-up.
    stale_after_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=2, ge=1)
    # Loaded models kept for prediction, bounded by their arrays' bytes (0 disables the cache).
    model_cache_mb: int = Field(default=512, ge=0, le=1_048_576)
    # A predict body is parsed into Python objects (~10x its size): far below the upload limit.
    max_predict_mb: int = Field(default=16, ge=1, le=4096)
    # Queued + running jobs one API key may have at once; beyond it POST /jobs answers 429.
    max_queued_per_key: int = Field(default=20, ge=1, le=100_000)
    quota_retry_after_seconds: int = Field(default=30, ge=1, le=3600)

    auth_required: bool = False
    # A key found valid in the database is trusted this long by the server process without asking
    # again: a revocation made in the same process applies at once, one made by another process
    # (`regula keys revoke`, another server) within this many seconds. 0 asks on every request.
    key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # GET /metrics needs "Authorization: Bearer <this>" when set; no key at all when unset.
    metrics_token: str | None = None
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
    def max_decoded_bytes(self) -> int:
        return self.max_decoded_mb * 1024 * 1024

    @property
    def max_predict_bytes(self) -> int:
        return self.max_predict_mb * 1024 * 1024

    @property
    def model_cache_bytes(self) -> int:
        return self.model_cache_mb * 1024 * 1024


settings = Settings()
