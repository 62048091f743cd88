"""Errors that know nothing of HTTP frameworks; the API maps them by ``status``."""

from __future__ import annotations

__all__ = [
    "AuditDisabled",
    "AuditUnavailable",
    "ExplainerError",
    "Forbidden",
    "InvalidInput",
    "InvalidJson",
    "JobNotFound",
    "JobQueueUnavailable",
    "ManifestError",
    "ModelLoadError",
    "ModelNotFound",
    "ModelNotReady",
    "NotExplainable",
    "PayloadTooLarge",
    "TooManyJobs",
    "Unauthenticated",
    "XServeError",
]


class XServeError(Exception):
    """Base of every error xserve raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(XServeError):
    status = 404
    code = "model_not_found"


class InvalidInput(XServeError):
    status = 422
    code = "invalid_input"


class InvalidJson(XServeError):
    """A body that is not JSON xserve reads (nested deeper than it allows, say)."""

    status = 400
    code = "invalid_json"


class NotExplainable(XServeError):
    status = 422
    code = "not_explainable"


class PayloadTooLarge(XServeError):
    status = 413
    code = "payload_too_large"


class ModelNotReady(XServeError):
    status = 503
    code = "model_not_ready"


class ExplainerError(XServeError):
    """An explainer failed for one request; the model keeps serving."""

    status = 500
    code = "explainer_error"


class ManifestError(XServeError):
    """A version's ``xserve.yaml`` is missing, malformed or inconsistent."""

    code = "manifest_error"


class ModelLoadError(XServeError):
    """A version's artifact could not be loaded."""

    code = "model_load_error"


class AuditUnavailable(XServeError):
    """The audit store cannot make a record durable: the decision is refused, not answered."""

    status = 503
    code = "audit_unavailable"


class AuditDisabled(XServeError):
    """Auditing is turned off (``XSERVE_AUDIT_URL=none``): there are no records to read."""

    status = 404
    code = "audit_disabled"


class Unauthenticated(XServeError):
    """No API key, or one that matches no configured key."""

    status = 401
    code = "unauthenticated"


class Forbidden(XServeError):
    """A valid API key without the role the operation needs."""

    status = 403
    code = "forbidden"


class JobNotFound(XServeError):
    """No explanation job has this id (never submitted, or its result expired)."""

    status = 404
    code = "job_not_found"


class JobQueueUnavailable(XServeError):
    """The explanation job queue (its broker) cannot be reached; predictions still work."""

    status = 503
    code = "job_queue_unavailable"


class TooManyJobs(XServeError):
    """The caller, or every caller together, has as many explanation jobs queued or running
    as allowed (``XSERVE_JOBS_MAX_QUEUED_PER_CALLER``, ``XSERVE_JOBS_MAX_QUEUED``): retry later."""

    status = 429
    code = "too_many_jobs"
