"""Service settings, shared by `api/` and `worker/` (the worker never imports the web layer).

Defaults are the embedded profile: a SQLite file and Celery's file-system broker inside one
data dir, so a single process tree runs everything with no servers. Setting
`SQUEEZE_DATABASE_URL=postgresql+psycopg://...` and `SQUEEZE_BROKER_URL=redis://...`
switches to the real deployment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SQUEEZE_", extra="ignore")

    data_dir: Path = Path("var")
    # Empty means "inside data_dir": sqlite file / file-system broker folder.
    database_url: str = ""
    broker_url: str = ""

    # Upload limits (bytes). The cap is enforced on the streamed body, not on Content-Length.
    # Models over 2 GB come as archives with external data: the cap must admit them.
    max_model_bytes: int = Field(default=8 * 1024**3, gt=0)
    max_dataset_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)
    # Sum of the uncompressed member sizes an .npz may declare (zip-bomb guard).
    max_dataset_uncompressed_bytes: int = Field(default=4 * 1024 * 1024 * 1024, gt=0)
    # A model with external data is uploaded as one .zip/.tar/.tar.gz archive (the archive
    # itself is capped by max_model_bytes). Checked before anything is extracted: the sum
    # of its members' declared sizes, their number, and how far they expand the archive.
    max_model_uncompressed_bytes: int = Field(default=16 * 1024 * 1024 * 1024, gt=0)
    max_model_archive_members: int = Field(default=4096, gt=0)
    max_model_archive_compression_ratio: float = Field(default=100.0, gt=1)
    # What an uploaded graph may make a runtime compute or hold (core/graph_limits.py),
    # checked statically from shapes and constants: any one tensor of known static shape;
    # what constant folding would materialise (on top of 4x the model's own size); a
    # Loop's constant trip count; how deep If/Loop/Scan bodies nest.
    max_model_tensor_bytes: int = Field(default=4 * 1024**3, gt=0)
    max_model_folded_bytes: int = Field(default=2 * 1024**3, gt=0)
    max_model_loop_trip_count: int = Field(default=1_000_000, gt=0)
    max_model_subgraph_depth: int = Field(default=16, ge=0, le=30)
    # An .npz dataset's members (arrays): each costs a file header read and a row in the
    # dataset's description, so a million tiny arrays are refused.
    max_dataset_arrays: int = Field(default=1024, gt=0)

    # Celery queues; tests give each run its own names so runs cannot steal each other's work.
    queue_cpu: str = "cpu"
    queue_gpu: str = "gpu"
    task_soft_time_limit_s: int = Field(default=3 * 3600, gt=0)
    task_hard_time_limit_s: int = Field(default=3 * 3600 + 300, gt=0)
    # Redis redelivers an unacknowledged message after this; it must exceed the hard limit,
    # or a long job would be handed to a second worker while the first still runs it.
    broker_visibility_timeout_s: int = Field(default=4 * 3600, gt=0)

    # Job leases: a running job's worker renews its lease; the reaper re-enqueues jobs
    # whose lease expired (dead worker) and queued jobs whose message was lost.
    lease_s: float = Field(default=60.0, gt=0)
    heartbeat_s: float = Field(default=10.0, gt=0)
    reaper_interval_s: float = Field(default=15.0, gt=0)
    requeue_queued_after_s: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # A queued job whose message is not claimed is sent again after requeue_queued_after_s,
    # then after twice that, four times ... at most max_resends times; the next time it is
    # due unclaimed it fails with `never_claimed`. Jobs of a queue whose live workers are
    # all busy are waiting their turn: neither re-sent nor counted.
    max_resends: int = Field(default=5, ge=0)
    # Job messages wait in the database's outbox until the broker takes them: the API
    # and every worker send what is left every outbox_interval_s (a broker outage delays
    # jobs by the outage, not by requeue_queued_after_s).
    outbox_interval_s: float = Field(default=2.0, gt=0)

    # The pool children that run jobs lower their CPU priority by this much (os.nice), so
    # on a machine shared with the API a busy worker cannot starve status polls; the
    # worker's parent (heartbeat, reaper) keeps its priority. 0 turns it off.
    worker_job_nice: int = Field(default=10, ge=0, le=19)
    # Workers register in the database and beat every worker_heartbeat_s from their
    # parent process; one silent for worker_dead_after_s counts as dead, and its row is
    # deleted after worker_forget_after_s.
    worker_heartbeat_s: float = Field(default=10.0, gt=0)
    worker_dead_after_s: float = Field(default=60.0, gt=0)
    worker_forget_after_s: float = Field(default=7 * 86400.0, gt=0)
    # A job whose queue (and device) no live worker serves, at submission:
    #   "refuse": 422 `no_worker_for_target` (the default);
    #   "queue":  accepted, the job's events say so, and it fails `no_worker_available`
    #             once its queue has had no live worker for absent_worker_expiry_s;
    #   "off":    no check (tests that run jobs in-process; workers started on demand).
    # The expiry applies under every policy: a job is never re-sent forever.
    absent_worker_policy: Literal["refuse", "queue", "off"] = "refuse"
    absent_worker_expiry_s: float = Field(default=3600.0, gt=0)
    # Queues whose lack of a live worker makes /readyz answer 503 (by default readiness
    # stays 200 and lists the unserved queues as warnings: the API itself can serve).
    ready_requires_workers_for: list[str] = Field(default_factory=list)

    # How much memory one job may take on a worker beyond what its engine process held when
    # the job started (heap and anonymous mappings, and the resident set); None: the
    # default below. A job spec may ask for less (`max_memory_bytes`), never more.
    job_memory_limit_bytes: int | None = Field(default=None, gt=0)
    # Without job_memory_limit_bytes, the ceiling is this share of the machine's memory
    # (or of the worker's cgroup limit) divided by the worker's pool size (--concurrency:
    # its jobs run at once), enforced on each job's engine process. Several workers on one
    # machine each take the whole share: give each a smaller fraction.
    job_memory_fraction: float = Field(default=0.8, gt=0, le=1)
    # Engine children are forked by a per-pool-process server that has imported the engine's
    # modules once (worker/engine_server.py); false: a fresh interpreter per job (seconds
    # of imports each).
    engine_fork_server: bool = True

    # Requests inside the API at once (the rest wait on the event loop). Below the database
    # pool (store.db: 40 connections per process) and the sync thread pool (40): see
    # api/concurrency.py for the deadlock this prevents.
    api_max_concurrent_requests: int = Field(default=32, ge=1, le=39)
    # Of those, how many may be uploads streaming their bodies (the slow requests that
    # legitimately hold a slot); the rest stay free for polls and probes.
    api_max_concurrent_uploads: int = Field(default=8, ge=1, le=38)
    # Request bodies: a JSON body (up to 1 MiB) must arrive whole within
    # api_body_timeout_s (it is read before the request takes a slot); an upload may
    # stream for as long as it needs but never wait over api_body_idle_timeout_s for its
    # next bytes. Either is a 408 `body_timeout`.
    api_body_timeout_s: float = Field(default=30.0, gt=0)
    api_body_idle_timeout_s: float = Field(default=30.0, gt=0)

    # Rate limit of the write routes (POST/PUT/PATCH/DELETE under /v1), per API key: a
    # token bucket refilled at rate_limit_per_s up to rate_limit_burst; an empty bucket is
    # a 429 `rate_limited` with Retry-After. 0 turns it off. Kept in Redis (shared by every
    # API process) when rate_limit_redis_url is set, or the broker is Redis; otherwise in
    # each API process's memory (N processes then allow N times the rate).
    rate_limit_per_s: float = Field(default=10.0, ge=0)
    rate_limit_burst: int = Field(default=100, ge=1)
    rate_limit_redis_url: str = ""

    # Measurement: ONNX Runtime threads per timed session and repetitions.
    measure_threads: int = Field(default=1, ge=1)
    measure_warmup_runs: int = Field(default=5, ge=0)
    measure_runs: int = Field(default=30, ge=3)

    # Auth. The admin key manages tenants and keys. When unset, the service makes one on
    # first start and writes it to `admin_key_file` (mode 0600) so the embedded default
    # works out of the box; a deployment sets it (or provisions keys) explicitly.
    admin_api_key: SecretStr | None = None

    # Per-tenant quotas, used when the tenant's own row sets none.
    quota_storage_bytes: int = Field(default=50 * 1024**3, gt=0)
    quota_concurrent_jobs: int = Field(default=8, gt=0)
    # What a client is told to wait (Retry-After) when a quota is reached.
    quota_retry_after_s: int = Field(default=30, gt=0)

    # Retention: uploads of models and datasets and job artifacts older than this many
    # days are deleted by the cleanup task (None keeps them forever); a model or dataset
    # that a queued or running job names is kept until that job ends.
    model_retention_days: float | None = Field(default=None, gt=0)
    dataset_retention_days: float | None = Field(default=None, gt=0)
    artifact_retention_days: float | None = Field(default=None, gt=0)
    cleanup_interval_s: float = Field(default=3600.0, gt=0)

    # Webhooks (a job's `webhook_url`), delivered by a periodic pass in every worker's
    # parent process. Attempt n+1 waits webhook_backoff_s * 2**(n-1), at most
    # webhook_backoff_max_s; after webhook_max_attempts failures the delivery gives up.
    webhook_interval_s: float = Field(default=2.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_s: float = Field(default=10.0, ge=0)
    webhook_backoff_max_s: float = Field(default=3600.0, ge=0)
    # Deliveries to loopback, link-local and private addresses are refused (SSRF) unless
    # the receivers really live on the service's own network.
    webhook_allow_private_hosts: bool = False

    # Blob storage (uploads and job artifacts, named by sha256): "local" keeps files under
    # data_dir/blobs (the embedded default; API and workers must then share that folder),
    # "s3" an S3-compatible object store, so the API and the workers share nothing on disk.
    blob_store: Literal["local", "s3"] = "local"
    s3_bucket: str = ""
    # Keys are `<prefix><sha256>`; several services may share one bucket under prefixes.
    s3_prefix: str = "blobs/"
    # Empty: AWS's own endpoint for the region. SeaweedFS, MinIO, ...: their URL.
    s3_endpoint_url: str = ""
    # The endpoint clients are redirected to for downloads (presigned URLs), when the
    # service reaches the store by another name than its users do; empty: s3_endpoint_url.
    s3_public_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    # Empty: boto3's own credential chain (environment, instance role, ...).
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr | None = None
    # Files from this size on are uploaded in parts of s3_multipart_part_bytes (S3's
    # minimum part is 5 MiB; at most 10,000 parts, so 64 MiB parts reach 640 GB).
    s3_multipart_threshold_bytes: int = Field(default=64 * 1024**2, ge=5 * 1024**2)
    s3_multipart_part_bytes: int = Field(default=64 * 1024**2, ge=5 * 1024**2)
    # Create the bucket on start when it does not exist (a key without that right can
    # still use a bucket made beforehand).
    s3_create_bucket: bool = True
    # The inputs a worker fetched from the object store stay in a local cache keyed by
    # sha256 (data_dir/blob-cache) up to this size; the least recently used go first.
    blob_cache_max_bytes: int = Field(default=20 * 1024**3, gt=0)
    # Downloads of artifacts: streamed through the API (default), or, with the object
    # store, a 307 redirect to a presigned URL valid for blob_presigned_url_expires_s.
    blob_download_redirect: bool = False
    blob_presigned_url_expires_s: int = Field(default=300, ge=1, le=7 * 24 * 3600)

    # MLflow (the tracking server's URL, e.g. http://mlflow:5000): jobs may take their
    # model from its model registry (spec model_uri) and register their result there
    # (spec register). Unset: such jobs are refused at submission. Artifacts are read and
    # written through the server's artifact proxy (`mlflow server --serve-artifacts`, the
    # default), so workers need no credentials for the artifact store behind it.
    mlflow_tracking_uri: str | None = Field(default=None, pattern=r"^https?://")
    # Sent as "Authorization: Bearer ..." when the server wants one.
    mlflow_token: SecretStr | None = None
    mlflow_timeout_s: float = Field(default=30.0, gt=0)
    # The experiment the registering runs are logged in (created when missing).
    mlflow_experiment: str = Field(default="squeeze", min_length=1)

    # Batches: the most models one POST /v1/batches may name.
    max_batch_jobs: int = Field(default=100, gt=0, le=1000)

    # Logs of the API and the workers: "json" (one object a line, with the job id while a
    # job is handled; docker-compose sets it) or "text" (the embedded default).
    log_format: Literal["json", "text"] = "text"

    @model_validator(mode="after")
    def _limits_are_consistent(self) -> Settings:
        if self.task_soft_time_limit_s >= self.task_hard_time_limit_s:
            raise ValueError("task_soft_time_limit_s must be below task_hard_time_limit_s")
        if self.broker_visibility_timeout_s <= self.task_hard_time_limit_s:
            raise ValueError("broker_visibility_timeout_s must exceed task_hard_time_limit_s")
        if self.heartbeat_s >= self.lease_s:
            raise ValueError("heartbeat_s must be shorter than lease_s")
        if self.worker_heartbeat_s >= self.worker_dead_after_s:
            raise ValueError("worker_heartbeat_s must be shorter than worker_dead_after_s")
        if self.worker_forget_after_s <= self.worker_dead_after_s:
            raise ValueError("worker_forget_after_s must exceed worker_dead_after_s")
        if self.api_max_concurrent_uploads >= self.api_max_concurrent_requests:
            raise ValueError("api_max_concurrent_uploads must be below api_max_concurrent_requests")
        if self.blob_store == "s3" and not self.s3_bucket:
            raise ValueError("blob_store 's3' needs s3_bucket (SQUEEZE_S3_BUCKET)")
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'squeeze.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_rate_limit_redis_url(self) -> str | None:
        """Where the rate limit's buckets live: None for this process's memory."""
        if self.rate_limit_redis_url:
            return self.rate_limit_redis_url
        broker = self.resolved_broker_url
        return broker if broker.startswith(("redis://", "rediss://")) else None

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def admin_key_file(self) -> Path:
        return (self.data_dir / "admin-api-key").resolve()

    @property
    def blob_dir(self) -> Path:
        return (self.data_dir / "blobs").resolve()

    @property
    def blob_cache_dir(self) -> Path:
        return (self.data_dir / "blob-cache").resolve()

    @property
    def blob_staging_dir(self) -> Path:
        """Where uploads and results are written (and hashed) before they are stored."""
        return self.blob_dir / "staging"

    @property
    def work_dir(self) -> Path:
        return (self.data_dir / "work").resolve()

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.blob_dir, self.work_dir, self.broker_dir):
            path.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
