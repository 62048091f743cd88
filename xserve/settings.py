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

    poll_interval: float = 2.0
    """Seconds between scans of the repository for added or removed versions."""

    max_body_bytes: int = 10 * 1024 * 1024
    """Largest request body accepted; larger ones get 413."""

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
    records; unset, they are plain SHA-256 digests, which small value sets give away."""

    api_keys: Path | None = None
    """File of API keys with roles; unset runs open."""

    threads_per_worker: int | None = None
    """Native (OpenMP/BLAS) threads per server process; default cores // workers."""

    batch_max_size: int = 32
    """Micro-batching: most rows coalesced into one model call."""

    batch_max_wait_ms: float = 0.0
    """Micro-batching: extra wait for company before a call made while the model is busy.
    A request arriving at an idle model never waits."""
