"""Reading from MLflow: resolving model URIs in the registry and downloading artifacts.

The tracking and registry servers are MLflow's own settings (``MLFLOW_TRACKING_URI``,
``mlflow.set_tracking_uri``); xserve adds none of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from xserve.errors import ModelNotFound, XServeError

__all__ = ["MlflowError", "Source", "download", "download_background", "resolve"]

_MODELS_URI = re.compile(r"^models:/(?P<name>[^@/]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))/?$")
# A run may log its explainer background beside the model; xserve picks it up.
BACKGROUND_ARTIFACTS = ("background.csv", "background.parquet")


class MlflowError(XServeError):
    """MLflow refused or failed a request (unknown model, unreachable server...)."""

    status = 502
    code = "mlflow_error"


@dataclass(frozen=True)
class Source:
    """A model URI resolved to what it points at now."""

    model_uri: str
    """The URI as given."""
    download_uri: str
    """What to download: an alias is replaced by the version it points to, so that what
    is downloaded is what was resolved even if the alias moves meanwhile."""
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    description: str | None = None

    def provenance(self) -> dict[str, str]:
        """The manifest's ``mlflow`` key."""
        keys = {
            "model_uri": self.model_uri,
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "run_id": self.run_id,
        }
        return {k: v for k, v in keys.items() if v}


def resolve(model_uri: str) -> Source:
    """Look ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` up in the registry; any
    other URI MLflow can download (``runs:/``, a path...) is taken as it is."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith("models:/"):
        return Source(model_uri=model_uri, download_uri=model_uri)
    match = _MODELS_URI.match(model_uri)
    if match is None or (match["version"] and not match["version"].isdigit()):
        raise MlflowError(
            f"{model_uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS "
            "(registry stages are deprecated in MLflow; point an alias instead)"
        )
    name, alias = match["name"], match["alias"]
    client = MlflowClient()
    try:
        if alias:
            found = client.get_model_version_by_alias(name, alias)
        else:
            found = client.get_model_version(name, match["version"])
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ModelNotFound(f"{model_uri}: not in the MLflow registry: {exc.message}") from None
        raise MlflowError(f"{model_uri}: {exc.message}") from None
    version = str(found.version)
    return Source(
        model_uri=model_uri,
        download_uri=f"models:/{name}/{version}",
        name=name,
        version=version,
        alias=alias,
        run_id=found.run_id or None,
        description=found.description or None,
    )


def download(uri: str, dst: Path) -> Path:
    """Download ``uri`` (a model folder or a file) into ``dst``; the local path."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as exc:
        raise MlflowError(f"cannot download {uri}: {exc.message}") from None
    except OSError as exc:  # a local path that does not exist
        raise MlflowError(f"cannot download {uri}: {exc}") from None


def download_background(run_id: str | None, dst: Path) -> Path | None:
    """The run's ``background.csv`` (or ``.parquet``) artifact, if it logged one."""
    if run_id is None:
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        logged = {f.path for f in MlflowClient().list_artifacts(run_id)}
    except MlflowException:  # the run is gone or unreadable: no background, not an error
        return None
    for name in BACKGROUND_ARTIFACTS:
        if name in logged:
            return download(f"runs:/{run_id}/{name}", dst)
    return None
