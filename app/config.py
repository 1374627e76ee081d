"""Every knob of the service, one env var each. Nothing else reads os.environ."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerPool(BaseModel):
    """Workers that consume one queue on one kind of machine (app/planning/pools.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", examples=["gpu-24g"])
    device: Literal["cpu", "gpu"]
    # What one job may use there; None = unknown (the plan never refuses on it).
    device_memory_bytes: int | None = Field(default=None, gt=0)
    host_memory_bytes: int | None = Field(default=None, gt=0)


# Secret keys anyone can read (this file, docker-compose.yml): links signed with one are forgeable.
KNOWN_DEFAULT_SECRETS = frozenset({"dev-insecure-change-me", "change-me-in-production"})

DEFAULT_POOLS = (WorkerPool(queue="gpu", device="gpu"), WorkerPool(queue="cpu", device="cpu"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    # Connections. Production: Postgres, Redis, s3://bucket. Embedded: sqlite, filesystem://,
    # file:///dir — the same code with other URLs.
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/squash"
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Prefix for every Redis key Celery writes, so several deployments (or test runs) share
    # one Redis without seeing each other's queues.
    broker_key_prefix: str = ""
    # Folder used by the filesystem:// broker (embedded mode).
    broker_folder: Path = Path(".squash/broker")
    object_store_url: str = "file://.squash/objects"
    # Postgres connections one process may hold, all its pools together (an API process splits
    # them: half for the ORM behind threadpool routes, half for the event loop's pool of job
    # status and API-key reads; a worker uses the first share). Size it so that
    # processes x this < the server's max_connections (100 by default), or put PgBouncer in front.
    db_connections_per_process: int = Field(default=24, ge=4, le=1000)
    # Threads that run an API process's ORM work (submit, cancel, lists, events). Few on
    # purpose: each busy one takes the GIL in turn with the event loop that serves status
    # polls. 500 clients on 2 cores (bench/api_load.py, 60 s runs): 12 threads, poll p99
    # 120-290 ms; 4: 122 ms; 2: 48 ms, with ORM routes' medians lower too. Scale out with
    # processes, not threads. Capped by the ORM's share of the connection budget.
    api_orm_threads: int = Field(default=2, ge=1, le=200)
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    # Tries per S3 request (botocore "standard" retries: refused connections, 5xx, throttling,
    # with jittered exponential backoff); an upload is also re-sent whole if its read-back
    # sha256 differs (workers/publish.py).
    s3_max_attempts: int = Field(default=5, ge=1, le=20)
    # Base URL clients use to reach this API; local-store download links point here.
    public_base_url: str = "http://127.0.0.1:8000"
    # Signs the local store's download links (S3 links are presigned by S3). An API server with
    # a local store refuses to start on a published default (KNOWN_DEFAULT_SECRETS); the
    # embedded stack generates one per data dir.
    secret_key: str = Field(default="dev-insecure-change-me", min_length=8)
    # GET /metrics (app/metrics.py): open when unset (scraped from inside the cluster), else
    # only with `Authorization: Bearer <token>`.
    metrics_token: str | None = None
    # A worker's own metrics (workers/metrics.py: phase durations, peak memory, jobs by outcome)
    # on this port of the worker host, Prometheus text format; 0 = not served.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    # Job lifecycle. Worst case for a dead worker's job to be picked up again:
    # lease_ttl_s + reaper_interval_s (see README "Failure bounds").
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    # A running job asked to cancel stops at its next check point; one that reaches none within
    # this long of the cancel (a single library call: an hours-long oneshot, a model import) is
    # ended by its heartbeat thread, which ends the job's process. Bound:
    # heartbeat_interval_s + cancel_grace_s (the interval is margin for the commit and exit).
    cancel_grace_s: float = Field(default=20.0, gt=0)
    lease_ttl_s: float = Field(default=60.0, gt=0)
    reaper_interval_s: float = Field(default=15.0, gt=0)
    reaper_enabled: bool = True
    # A queued job whose message is older than this is sent again (message lost in Redis).
    requeue_after_s: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    max_job_runtime_s: float = Field(default=6 * 3600, gt=0)
    # API processes remember a valid key this long, so a revoked key stops working within it.
    auth_cache_ttl_s: float = Field(default=5.0, ge=0)
    presign_expiry_s: int = Field(default=3600, gt=0, le=7 * 24 * 3600)
    default_device: Literal["cpu", "gpu"] = "gpu"
    # Worker pools by device and memory, as JSON: '[{"queue": "gpu-24g", "device": "gpu",
    # "device_memory_bytes": 24e9, "host_memory_bytes": 64e9}, ...]'. A job goes to the smallest
    # pool of its device whose memory fits its plan, or is refused (422) when none does.
    worker_pools: tuple[WorkerPool, ...] = Field(default=DEFAULT_POOLS, min_length=1)
    # The memory this worker gives one job (its pool's figures); None = measured when the job
    # starts (free host memory, free GPU memory).
    worker_host_memory_bytes: int | None = Field(default=None, gt=0)
    worker_device_memory_bytes: int | None = Field(default=None, gt=0)
    # How this worker holds the model (app/planning/memory_plan.py): "auto" = in memory when
    # the plan fits, else disk-offloaded; a named mode forces it (tests, benchmarks, a pool of
    # small workers that should never hold a whole model).
    worker_execution_mode: Literal["auto", "in_memory", "disk_offloaded"] = "auto"
    # glibc's mmap threshold, fixed for the job's process (workers/memory.py); 0 = glibc's
    # default (a threshold that grows, keeping freed tensors in the heap).
    worker_malloc_mmap_threshold_bytes: int = Field(default=2**20, ge=0, le=2**30)

    # Per-tenant limits (app/limits/). Token buckets: `burst` requests at once, refilled at
    # `per_minute` (0 disables); submissions have their own, stricter bucket. Active jobs are
    # queued, running or cancel_requested ones. Answers 429 with Retry-After, or 413.
    rate_limit_per_minute: float = Field(default=1200, ge=0)
    rate_limit_burst: int = Field(default=200, ge=1)
    submit_rate_limit_per_minute: float = Field(default=60, ge=0)
    submit_rate_limit_burst: int = Field(default=20, ge=1)
    max_active_jobs_per_tenant: int = Field(default=50, ge=0, description="0 = unlimited")
    quota_retry_after_s: int = Field(default=30, ge=1)
    max_request_bytes: int = Field(default=1_048_576, ge=1024)

    # Webhooks (app/webhooks/): a delivery is retried with exponential backoff from
    # webhook_retry_base_s up to webhook_retry_max_s between attempts, until acknowledged (2xx)
    # or older than webhook_max_age_s. Hosts in webhook_allowed_hosts skip the https and
    # public-address rules (an operator's internal receivers; tests).
    webhook_dispatch_enabled: bool = True
    webhook_poll_interval_s: float = Field(default=1.0, gt=0)
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    webhook_retry_base_s: float = Field(default=5.0, gt=0)
    webhook_retry_max_s: float = Field(default=3600.0, gt=0)
    webhook_max_age_s: float = Field(default=3 * 24 * 3600, gt=0)
    webhook_allowed_hosts: tuple[str, ...] = ()

    # Where workers may read models from by path, and where they cache downloads.
    model_dirs: tuple[Path, ...] = ()
    # S3 roots (s3://bucket/prefix/) that job sources (models, datasets, task files) may name;
    # `{tenant}` stands for the caller's tenant id. Empty: S3 sources are refused. The artifact
    # store is never a source (app/source_policy.py).
    source_s3_prefixes: tuple[str, ...] = ()
    # Largest model (sum of its weight files) a worker will fetch or load; bigger ones fail
    # `invalid_model` before any download.
    max_model_bytes: int = Field(default=200 * 10**9, ge=1)
    # Largest dataset or task file (S3) a worker reads; it is held in memory whole.
    max_dataset_bytes: int = Field(default=1_000_000_000, ge=1)
    # Hugging Face repositories whose own code (config auto_map) a job may run, each pinned to a
    # commit: "org/name@<40-hex sha>". Empty: remote code never runs.
    trust_remote_code_repos: tuple[str, ...] = ()
    work_dir: Path = Path(".squash/work")
    hf_offline: bool = False

    # Test seam for the fault suite (workers/faults.py): lets a job's label stop its worker at a
    # named phase. Never set it in production.
    fault_injection: bool = False

    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("postgresql", "sqlite")):
            raise ValueError("DATABASE_URL must be postgresql+psycopg://… or sqlite:///…")
        return value

    @field_validator("object_store_url")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if not value.startswith(("s3://", "file://")):
            raise ValueError("OBJECT_STORE_URL must be s3://bucket[/prefix] or file:///dir")
        return value

    @model_validator(mode="after")
    def _lease_outlives_heartbeat(self) -> Settings:
        if self.lease_ttl_s <= 2 * self.heartbeat_interval_s:
            raise ValueError("LEASE_TTL_S must exceed twice HEARTBEAT_INTERVAL_S")
        return self

    @field_validator("worker_pools")
    @classmethod
    def _unique_queues(cls, pools: tuple[WorkerPool, ...]) -> tuple[WorkerPool, ...]:
        names = [pool.queue for pool in pools]
        if len(set(names)) != len(names):
            raise ValueError("WORKER_POOLS: each pool needs its own queue name")
        return pools

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
