"""What a worker process does with a job: load the version, explain the rows, fill the cache,
record the decision.

Runs inside the in-process pool's workers and inside Celery workers alike. The
model version is loaded from the worker's own model repository (``models_dir``)
and kept per process by (path, digest); a worker whose artifact differs from
the one the server saw refuses the job rather than answer for another model.
Each row is looked up in the cache first and written to it as soon as it is
explained, so a job stopped halfway keeps the rows it finished. The answer is
recorded in the audit log, under the caller who submitted the job, before the
job is marked succeeded: polls only read it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from xserve.audit.factory import digest_key_for, sink_from_url
from xserve.audit.log import AuditLog
from xserve.cache import ExplanationCache, explanation_key, open_cache
from xserve.errors import XServeError
from xserve.explainers.methods import (
    JobExplainer,
    canonical_params,
    check_offered,
    job_method,
    parse_params,
)
from xserve.jobs.base import JobFailed, JobSpec
from xserve.monitoring.metrics import observe_explanation
from xserve.repository.version import ModelVersion, load_version
from xserve.serving.decision import Decision, commit_one
from xserve.serving.envelope import envelope
from xserve.settings import Settings
from xserve.tracing import span

__all__ = ["WorkerContext", "preload", "run_job", "worker_model"]

_MODELS_KEPT = 8
_EXPLAINERS_KEPT = 16


@dataclass(frozen=True)
class WorkerContext:
    """A worker's configuration: picklable, so the in-process pool can pass it."""

    models_dir: Path
    cache_url: str
    cache_max_entries: int
    cache_max_bytes: int
    cache_max_age: float
    threads: int
    audit_url: str = "none"
    audit_digest_key: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerContext:
        return cls(
            models_dir=settings.models_dir.resolve(),
            cache_url=settings.cache_url,
            cache_max_entries=settings.cache_max_entries,
            cache_max_bytes=settings.cache_max_bytes,
            cache_max_age=settings.cache_max_age,
            threads=settings.job_threads,
            audit_url=_absolute(settings.audit_url),
            audit_digest_key=settings.audit_digest_key,
        )

    def settings(self) -> Settings:
        return Settings(
            models_dir=self.models_dir,
            cache_url=self.cache_url,
            cache_max_entries=self.cache_max_entries,
            cache_max_bytes=self.cache_max_bytes,
            cache_max_age=self.cache_max_age,
        )


def _absolute(url: str) -> str:
    """A relative SQLite path made absolute: workers may run in another folder."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url.removeprefix(prefix)).resolve())
    return url


def preload() -> None:
    """Import the explainers' libraries now, so that worker processes forked afterwards
    (Celery's prefork pool) start their first job warm. Call with native thread pools
    already pinned: nothing here starts threads."""
    import shap  # noqa: F401
    from lime import lime_tabular  # noqa: F401

    from xserve.explainers.methods import job_method

    job_method("kernel_shap")  # registers the built-in methods


_lock = threading.Lock()
_models: OrderedDict[tuple[Path, str], ModelVersion] = OrderedDict()
_explainers: OrderedDict[tuple[Path, str, str, str], JobExplainer] = OrderedDict()
_caches: dict[WorkerContext, ExplanationCache] = {}
_logs: dict[tuple[str, str | None], AuditLog | None] = {}


def _remember(store: OrderedDict[Any, Any], key: Any, value: Any, keep: int) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > keep:
        store.popitem(last=False)


def worker_model(ctx: WorkerContext, name: str, version: str, digest: str) -> ModelVersion:
    path = ctx.models_dir / name / version
    with _lock:
        model = _models.get((path, digest))
    if model is not None:
        return model
    if not path.is_dir():
        raise JobFailed(
            f"model {name!r} version {version} is not in this worker's repository ({path})"
        )
    model = load_version(name, version, path, ctx.threads)
    if model.digest != digest:
        raise JobFailed(
            f"model {name!r} version {version} at {path} has artifact sha256 {model.digest}, "
            f"the server's has {digest}: the worker's model repository differs"
        )
    with _lock:
        _remember(_models, (path, digest), model, _MODELS_KEPT)
    return model


def _explainer(
    model: ModelVersion, cls: type[JobExplainer], spec: JobSpec, params_text: str
) -> JobExplainer:
    key = (model.path, model.digest, cls.method, params_text)
    with _lock:
        explainer = _explainers.get(key)
    if explainer is None:
        explainer = cls(model, parse_params(cls, spec.params))
        with _lock:
            _remember(_explainers, key, explainer, _EXPLAINERS_KEPT)
    return explainer


def worker_cache(ctx: WorkerContext) -> ExplanationCache:
    with _lock:
        cache = _caches.get(ctx)
        if cache is None:
            cache = _caches[ctx] = open_cache(ctx.settings())
    return cache


def worker_audit_log(ctx: WorkerContext) -> AuditLog | None:
    """This process's audit log (None when auditing is off), opened on first use."""
    key = (ctx.audit_url, ctx.audit_digest_key)
    with _lock:
        if key not in _logs:
            sink = sink_from_url(ctx.audit_url)
            audit_log = None
            if sink is not None:
                digest_key = digest_key_for(ctx.audit_url, ctx.audit_digest_key)
                audit_log = AuditLog(sink, digest_key)
            if audit_log is not None:
                audit_log.open()
            _logs[key] = audit_log
        return _logs[key]


def run_job(
    spec: JobSpec, ctx: WorkerContext, job_id: str, time_limit: float | None = None
) -> dict[str, Any]:
    """Explain every row of ``spec`` (cached rows are read, not recomputed) and record the
    decision under ``job_id``; the answer, as JSON. Traced as a child of the submitter's
    span (``spec.trace``) when tracing is on."""
    where = {"xserve.model": spec.model, "xserve.version": spec.version, "xserve.job": job_id}
    with span("xserve.job.run", where, parent=spec.trace, kind="CONSUMER"):
        return _run_job(spec, ctx, job_id, time_limit)


def _run_job(
    spec: JobSpec, ctx: WorkerContext, job_id: str, time_limit: float | None
) -> dict[str, Any]:
    model = worker_model(ctx, spec.model, spec.version, spec.digest)
    cls = job_method(spec.method)
    check_offered(cls, model)
    params_text = canonical_params(parse_params(cls, spec.params))
    cache = worker_cache(ctx)
    x = spec.matrix()
    keys = [explanation_key(model, cls.method, params_text, row) for row in x]
    records = cache.get_many(keys)
    cached = [r is not None for r in records]
    explainer: JobExplainer | None = None
    deadline = None if time_limit is None else time.monotonic() + time_limit
    with span("xserve.explain", {"xserve.method": cls.method, "xserve.rows": len(x)}):
        for i, record in enumerate(records):
            # Checked between rows too: a library may swallow Celery's soft-limit signal.
            if deadline is not None and time.monotonic() > deadline:
                raise JobFailed(f"job failed: it ran past its time limit of {time_limit:g} s")
            if record is None:
                explainer = explainer or _explainer(model, cls, spec, params_text)
                started = time.perf_counter()
                try:
                    record = explainer.explain_row(x[i])
                except XServeError:
                    raise
                except Exception as exc:
                    raise JobFailed(
                        f"{cls.method} failed on instances[{i}]: {type(exc).__name__}: {exc}"
                    ) from exc
                # Written by this worker process; the server adds it up (multiprocess metrics).
                observe_explanation(cls.method, time.perf_counter() - started, 1)
                cache.put(keys[i], record)
                records[i] = record
    answer = envelope(
        model,
        job_id,
        spec.client_id,
        method=cls.method,
        explanations=[cls.render(model, r, spec.label, spec.reasons) for r in records if r],
        cached=cached,
    )
    if spec.record:
        decision = Decision("explain", model, job_id, spec.caller, x, answer)
        commit_one(worker_audit_log(ctx), decision)
    return msgspec.to_builtins(answer)  # type: ignore[no-any-return]
