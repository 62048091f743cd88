"""Server configuration, read from ``XSERVE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every knob of the server; each is also an ``XSERVE_<NAME>`` variable."""

    model_config = SettingsConfigDict(env_prefix="XSERVE_", extra="ignore")

    models_dir: Path = Path("./models")
    """The model repository: ``<models_dir>/<name>/<version>/xserve.yaml``."""

    load_timeout: float = 120.0
    """Seconds one model version may take to load; a slower one is marked failed, and no
    version holds up the others."""

    poll_interval: float = 2.0
    """Seconds between scans of the repository for added or removed versions."""

    max_body_bytes: int = 10 * 1024 * 1024
    """Largest request body accepted; larger ones get 413 (gRPC: the largest message)."""

    body_timeout: float = 20.0
    """Seconds a request body may take to arrive, plus one second per ``body_min_rate``
    bytes received; a slower body gets 408 and its connection is closed."""

    body_min_rate: float = 1024.0
    """Bytes per second that extend a body's deadline by one second (see ``body_timeout``)."""

    max_header_bytes: int = 32 * 1024
    """Largest request line and headers; larger ones get 431 and the connection is closed."""

    header_timeout: float = 10.0
    """Seconds from a request's first byte to the end of its headers; slower gets 408."""

    grpc_port: int = 0
    """Port of the Open Inference Protocol over gRPC, served by every server process beside
    HTTP; 0: none. ``xserve serve`` sets it from ``--grpc-port`` (default 8081)."""

    grpc_host: str = "127.0.0.1"
    """Address gRPC listens on; ``xserve serve`` sets it from ``--host``."""

    max_instances: int = 10_000
    """Largest number of instances in one request; more get 413."""

    broker_url: str | None = None
    """Celery broker for explanation jobs; unset runs jobs in-process."""

    cache_url: str = "./explainer_cache"
    """Explanation cache: a folder, or ``redis://...``."""

    audit_url: str = "sqlite:///./audit/audit.db"
    """Audit log: ``sqlite:///path`` (relative; ``sqlite:////abs/path``), ``postgresql://...``,
    or ``none`` to record nothing (not for regulated use)."""

    audit_digest_key: str | None = None
    """Secret for the keyed digests (HMAC-SHA256) that replace personal features in audit
    records; unset, a random key file is created beside the audit store and used."""

    audit_signing_key: Path | None = None
    """Ed25519 private key (PEM, from ``xserve keys signing-key``) that signs checkpoints of
    the audit chain head; unset, no checkpoints are signed."""

    audit_checkpoint_every: str = "1000"
    """How often the chain head is signed: a number of records (``1000``) or of seconds
    (``300s``)."""

    audit_checkpoint_dir: Path | None = None
    """Folder each signed checkpoint is also appended to: a place shipped off the host."""

    api_keys: Path | None = None
    """File of API keys with roles; unset runs open."""

    threads_per_worker: int | None = None
    """Native (OpenMP/BLAS) threads per server process; default cores // workers."""

    batch_max_size: int = 32
    """Micro-batching: most rows coalesced into one model call."""

    batch_max_wait_ms: float = 0.0
    """Micro-batching: extra wait for company before a call made while the model is busy.
    A request arriving at an idle model never waits."""

    # -- explanation jobs (kernel_shap, lime, anchors) and their cache ----------
    job_workers: int | None = None
    """In-process job queue: worker processes; default cores - 1 (at least 1), leaving a
    core to the API."""

    job_threads: int = 1
    """Native (OpenMP/BLAS) threads in each job worker process (in-process pool and
    ``xserve worker`` children): parallelism comes from processes, not threads."""

    jobs_dir: Path | None = None
    """In-process job queue: job state files, shared by the server processes; default
    ``<cache folder>/jobs`` (``./explainer_jobs`` when the cache is in Redis)."""

    job_queue: str = "xserve-explain"
    """Celery queue the server sends jobs to and ``xserve worker`` consumes."""

    job_soft_time_limit: float = 300.0
    """Seconds a job may run before it is failed with a time-limit error (Celery)."""

    job_time_limit: float = 360.0
    """Seconds after which a job's worker process is killed outright (Celery)."""

    job_visibility_timeout: float = 3600.0
    """Seconds before a job taken by a worker that vanished (host lost) is delivered
    again (Celery on Redis); longer than ``job_time_limit``."""

    job_max_deliveries: int = 3
    """Deliveries of one job before it fails: a job that kills its worker every time
    is failed, not retried for ever."""

    job_result_ttl: float = 86400.0
    """Seconds a finished job's state and result are kept."""

    jobs_max_queued: int = 1000
    """Explanation jobs queued or running at once, over all callers; more get 429."""

    jobs_max_queued_per_caller: int = 100
    """Explanation jobs queued or running at once for one caller; more get 429."""

    job_max_work: int = 50_000_000
    """Largest job: rows times model evaluations per row (KernelSHAP's ``nsamples``, LIME's
    ``num_samples``, Anchors' sampling); larger ones get 413."""

    explain_max_wait: float = 60.0
    """Longest ``?wait=S`` honoured on ``/explain``."""

    cache_max_entries: int = 100_000
    """Explanation cache: most entries kept (oldest evicted first)."""

    cache_max_bytes: int = 1 << 30
    """Explanation cache on disk: most bytes kept (Redis: use its ``maxmemory``)."""

    cache_max_age: float = 30 * 86400.0
    """Explanation cache: seconds an entry is served after it was written."""

    shadow_max_pending: int = 128
    """Shadow traffic: most copies in flight per server process; beyond, copies are dropped
    (and counted in ``xserve_shadow_requests_total{outcome="dropped"}``)."""

    min_outcomes: int = 30
    """Performance: decisions with outcomes a version needs before its figures get a
    concept-drift status (fewer: ``insufficient_data``, never ``ok``)."""

    performance_interval: float = 600.0
    """Seconds between refreshes of the ``xserve_performance`` gauges: each server process
    reads the audit records of the last ``performance_window`` seconds (a cost that grows
    with the log); 0 turns the refresh off (reads of ``/performance`` still update them)."""

    performance_window: float = 7 * 86400.0
    """Seconds of decisions the ``xserve_performance`` gauges cover."""

    concept_drift_margin: float = 0.05
    """Performance: concept drift is flagged when a metric is worse than the version's
    baseline by more than this share of the baseline (0.05: 5 %)."""

    drift_window: int = 1000
    """Live drift: the most recent input rows kept per model version (and server process)
    to compare with the version's background on ``GET /v1/models/{m}/drift``."""
