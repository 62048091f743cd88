"""The MLflow deployments plugin: ``mlflow deployments create -t xserve ...``.

Registered under the ``mlflow.deployments`` entry point as target ``xserve``. MLflow
requires exactly one ``BaseDeploymentClient`` subclass here, plus ``run_local`` and
``target_help``. The deployment logic lives in :mod:`xserve.integrations.mlflow.deploy`;
this module maps MLflow's calls and errors onto it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote, urlparse

import numpy as np
import pandas as pd
from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
)

from xserve.errors import ManifestError, ModelNotFound, XServeError
from xserve.integrations.mlflow.deploy import (
    check_name,
    deploy_model,
    deployed_versions,
    remove_versions,
)

__all__ = ["XServeDeploymentClient", "run_local", "target_help"]

DEFAULT_URL = "http://127.0.0.1:8080"


def _models_dir(target_uri: str) -> Path:
    """``xserve`` → XSERVE_MODELS_DIR (default ./models); ``xserve:/path`` → /path."""
    path = urlparse(target_uri).path if ":" in target_uri else ""
    if path:
        return Path(path)
    from xserve.settings import Settings

    return Settings().models_dir


def _mlflow_error(exc: XServeError) -> MlflowException:
    code = INTERNAL_ERROR
    if isinstance(exc, ModelNotFound):
        code = RESOURCE_DOES_NOT_EXIST
    elif isinstance(exc, ManifestError):
        code = INVALID_PARAMETER_VALUE
    return MlflowException(exc.message, error_code=code)


# The request formats of MLflow's scoring server (``mlflow models serve``): one key each.
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows keyed by column name, as Python values: integers stay integers, floats keep
    every digit (pandas' own JSON rounds them), missing values become null."""
    names = [str(c) for c in frame.columns]
    columns = [[_plain(v) for v in frame[c].tolist()] for c in frame.columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value != value:  # NaN: not JSON
        return None
    if value is pd.NaT or value is None:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def _unwrap(frame: pd.DataFrame) -> dict[str, Any] | None:
    """What ``mlflow deployments predict`` makes of an MLflow request file: it reads the
    file with ``pd.read_json``, so ``{"dataframe_split": {...}}`` arrives as one column of
    that name. Back to the request it was; None for a frame of rows."""
    if len(frame.columns) != 1 or frame.columns[0] not in MLFLOW_FORMATS:
        return None
    column = frame.iloc[:, 0]
    if not all(isinstance(v, list | dict) for v in column):
        return None  # a model with a feature of that name: rows after all
    keyed = not isinstance(frame.index, pd.RangeIndex)
    return {str(frame.columns[0]): column.to_dict() if keyed else column.tolist()}


def _instances(inputs: Any) -> list[Any]:
    """The ``instances`` of an xserve predict request, from what MLflow users send.

    A DataFrame; a list of rows (objects keyed by feature name, or lists in feature
    order); or a request of MLflow's scoring server: ``{"dataframe_split": {"columns":
    [...], "data": [[...]]}}``, ``{"dataframe_records": [...]}``, ``{"instances": ...}``
    or ``{"inputs": ...}`` (rows, or columns as ``{"feature": [values]}``).
    """
    if isinstance(inputs, pd.DataFrame):
        request = _unwrap(inputs)
        if request is None:
            return _records(inputs)
        inputs = request
    if isinstance(inputs, np.ndarray):
        rows: list[Any] = inputs.tolist()
        return rows
    if isinstance(inputs, list):
        return inputs
    if not isinstance(inputs, dict):
        raise _bad_input(f"inputs of type {type(inputs).__name__}")
    keys = [k for k in MLFLOW_FORMATS if k in inputs]
    if len(keys) != 1 or len(inputs) != 1:
        raise _bad_input(f"a request with keys {sorted(inputs)}")
    payload = inputs[keys[0]]
    if keys[0] == "dataframe_split":
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            raise _bad_input('a "dataframe_split" without a "data" list')
        if payload.get("columns") is None:  # rows in feature order
            return list(payload["data"])
        try:
            return _records(pd.DataFrame(payload["data"], columns=payload["columns"]))
        except (ValueError, TypeError) as exc:
            raise _bad_input(f'a "dataframe_split" whose columns do not fit: {exc}') from None
    if isinstance(payload, dict):  # columns, as MLflow's "inputs" and "instances" allow
        try:
            return _records(pd.DataFrame(payload))
        except ValueError as exc:
            raise _bad_input(f'"{keys[0]}" columns of unequal length: {exc}') from None
    if not isinstance(payload, list):
        raise _bad_input(f'"{keys[0]}" of type {type(payload).__name__}')
    return payload


def _bad_input(what: str) -> MlflowException:
    return MlflowException(
        f"cannot predict on {what}: give a DataFrame, a list of rows, or one of MLflow's "
        f"request formats {{{', '.join(MLFLOW_FORMATS)}}}",
        error_code=INVALID_PARAMETER_VALUE,
    )


class XServeDeploymentClient(BaseDeploymentClient):
    """Deployments are model folders of an xserve repository.

    Target URI ``xserve`` (the repository in ``XSERVE_MODELS_DIR``, default ``./models``)
    or ``xserve:/path/to/models``. Every create or update adds a new immutable version;
    a running ``xserve serve`` over the repository picks it up without a restart.
    """

    def __init__(self, target_uri: str) -> None:
        super().__init__(target_uri)  # type: ignore[no-untyped-call]
        self.root = _models_dir(target_uri)

    # -- deployments --------------------------------------------------------

    def create_deployment(
        self,
        name: str,
        model_uri: str,
        flavor: str | None = None,
        config: dict[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> dict[str, Any]:
        if self._versions(name):
            raise MlflowException(
                f"deployment {name!r} already exists in {self.root}: use update",
                error_code=RESOURCE_ALREADY_EXISTS,
            )
        return self._deploy(name, model_uri, flavor, config)

    def update_deployment(
        self,
        name: str,
        model_uri: str | None = None,
        flavor: str | None = None,
        config: dict[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> dict[str, Any]:
        versions = self._versions(name)
        if not versions:
            raise MlflowException(
                f"no deployment {name!r} in {self.root}", error_code=RESOURCE_DOES_NOT_EXIST
            )
        if model_uri is None:
            # Deploy the newest version's URI again: an alias is looked up anew.
            sources = [v.manifest.mlflow for v in versions if v.manifest and v.manifest.mlflow]
            if not sources:
                raise MlflowException(
                    f"{name!r} was not deployed from MLflow: give a model URI (-m)",
                    error_code=INVALID_PARAMETER_VALUE,
                )
            model_uri = sources[-1].model_uri
        return self._deploy(name, model_uri, flavor, config)

    def delete_deployment(
        self, name: str, config: dict[str, Any] | None = None, endpoint: str | None = None
    ) -> None:
        """Remove the versions deployed from MLflow (idempotent); others stay."""
        try:
            remove_versions(self.root, name)
        except XServeError as exc:
            raise _mlflow_error(exc) from None

    def list_deployments(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """The models of the repository with at least one version from MLflow."""
        if not self.root.is_dir():
            return []
        found = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if folder.name.startswith("."):
                continue
            versions = deployed_versions(self.root, folder.name)
            if any(v.manifest and v.manifest.mlflow for v in versions):
                found.append(self._describe(folder.name))
        return found

    def get_deployment(self, name: str, endpoint: str | None = None) -> dict[str, Any]:
        if not self._versions(name):
            raise MlflowException(
                f"no deployment {name!r} in {self.root}", error_code=RESOURCE_DOES_NOT_EXIST
            )
        return self._describe(name)

    # -- inference, through a running server (so every decision is audited) ----

    def predict(
        self, deployment_name: str | None = None, inputs: Any = None, endpoint: str | None = None
    ) -> PredictionsResponse:
        """Predictions from the xserve server at ``XSERVE_URL`` (default
        http://127.0.0.1:8080), with ``XSERVE_CLIENT_KEY`` as the bearer key if set.

        ``inputs``: a DataFrame, a list of rows, or an MLflow scoring request
        (``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``); see
        :func:`_instances`."""
        return PredictionsResponse(self._post(deployment_name, inputs, explain=False))

    def explain(
        self, deployment_name: str | None = None, df: Any = None, endpoint: str | None = None
    ) -> dict[str, Any]:
        """Predictions with their inline explanations (``?explain=true``)."""
        return self._post(deployment_name, df, explain=True)

    # -- helpers -------------------------------------------------------------

    def _versions(self, name: str) -> list[Any]:
        try:
            check_name(name)
        except XServeError as exc:
            raise _mlflow_error(exc) from None
        return deployed_versions(self.root, name)

    def _deploy(
        self, name: str, model_uri: str, flavor: str | None, config: dict[str, Any] | None
    ) -> dict[str, Any]:
        try:
            deploy_model(self.root, name, model_uri, flavor, config)
        except XServeError as exc:
            raise _mlflow_error(exc) from None
        return self._describe(name)

    def _describe(self, name: str) -> dict[str, Any]:
        versions = deployed_versions(self.root, name)
        newest = versions[-1].describe()
        source = newest.get("mlflow", {})
        return {
            "name": name,
            "flavor": newest.get("flavor"),
            "version": newest["version"],
            "model_uri": source.get("model_uri"),
            "registered_version": source.get("version"),
            "path": str(self.root / name),
            "versions": [v.describe() for v in versions],
        }

    def _post(self, name: str | None, inputs: Any, explain: bool) -> dict[str, Any]:
        if not name:
            raise MlflowException("a deployment name is needed", error_code=INVALID_PARAMETER_VALUE)
        url = os.environ.get("XSERVE_URL", DEFAULT_URL).rstrip("/")
        query = "?explain=true" if explain else ""
        request = urllib.request.Request(
            f"{url}/v1/models/{quote(name, safe='')}/predict{query}",
            data=json.dumps({"instances": _instances(inputs)}).encode(),
            headers={"content-type": "application/json"},
        )
        key = os.environ.get("XSERVE_CLIENT_KEY")
        if key:
            request.add_header("authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer: dict[str, Any] = json.load(response)
                return answer
        except urllib.error.HTTPError as exc:
            try:
                detail = json.load(exc).get("error", exc.reason)
            except ValueError:
                detail = exc.reason
            raise MlflowException(f"xserve at {url} answered {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise MlflowException(f"cannot reach xserve at {url}: {exc.reason}") from None


def run_local(
    name: str, model_uri: str, flavor: str | None = None, config: dict[str, Any] | None = None
) -> None:
    """Deploy into a repository (config ``models_dir``, default XSERVE_MODELS_DIR) and
    serve it in the foreground on config ``port`` (default 8080, gRPC on ``grpc_port``,
    default 8081, 0 for none) until stopped: SIGTERM, SIGINT (Ctrl-C) or SIGHUP stop the
    server too."""
    config = dict(config or {})
    root = Path(config.pop("models_dir", None) or _models_dir("xserve"))
    port = str(config.pop("port", 8080))
    host = str(config.pop("host", "127.0.0.1"))
    grpc_port = config.pop("grpc_port", None)
    try:
        folder = deploy_model(root, name, model_uri, flavor, config)
    except XServeError as exc:
        raise _mlflow_error(exc) from None
    print(f"deployed {name} version {folder.name} at {folder}; serving on {host}:{port}")
    command = [
        sys.executable,
        "-m",
        "xserve.cli",
        "serve",
        "--models-dir",
        str(root),
        "--host",
        host,
        "--port",
        port,
    ]
    if grpc_port is not None:
        command += ["--grpc-port", str(grpc_port)]
    # Its own process group, so that a terminal's Ctrl-C reaches this process alone and
    # is passed on once; the server stops its own workers.
    server = subprocess.Popen(command, process_group=0)
    with _forwarding_signals(server):
        code = server.wait()
    if code not in _STOPPED:
        raise MlflowException(f"xserve serve exited with status {code}")


_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# How a server stopped by one of them exits: 0, killed by it, or 128 + its number.
_STOPPED = {0} | {-s for s in _FORWARDED} | {128 + s for s in _FORWARDED}


@contextmanager
def _forwarding_signals(server: subprocess.Popen[bytes]) -> Iterator[None]:
    """Pass SIGTERM, SIGINT and SIGHUP on to the server; a second signal kills its group.

    Without this a SIGTERM ends this process (Python's default) and leaves the server
    listening. Whatever ends the block, the server and its group are gone afterwards.
    """
    received = 0

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        if server.poll() is None:
            if received == 1:
                server.send_signal(signum)
            else:  # asked twice: no more waiting for a graceful shutdown
                _kill_group(server.pid)

    previous = {s: signal.signal(s, forward) for s in _FORWARDED}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if server.poll() is None:  # an error here, not a signal: stop it as Ctrl-C would
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _kill_group(server.pid)
                server.wait()
        _kill_group(server.pid)  # a worker the server left behind


_GRACE_SECONDS = 30.0


def _kill_group(pgid: int) -> None:
    with suppress(ProcessLookupError):  # the group is empty: everything stopped
        os.killpg(pgid, signal.SIGKILL)


def target_help() -> str:
    return """\
Target xserve: deploys MLflow models into an xserve model repository.

Target URI: `xserve` (the repository in XSERVE_MODELS_DIR, default ./models) or
`xserve:/path/to/models`. A deployment is a model of the repository, <models>/<name>/;
every create or update adds its next version folder, with a manifest (xserve.yaml) that
records the MLflow provenance (model URI, registered name and version, alias, run id).
A running `xserve serve` picks new versions up without a restart.

Model URIs: models:/NAME/VERSION, models:/NAME@ALIAS (resolved to its version when
deployed), or any URI MLflow downloads (runs:/..., a path).

Flavors (-f): scikit-learn models become skops files, XGBoost models native JSON
boosters and LightGBM models model.txt files, served by xserve's own runtimes with exact
TreeSHAP/linear SHAP explanations;
other models run through pyfunc (flavor mlflow) and are explained by job methods
(KernelSHAP, LIME, anchors). -f mlflow forces pyfunc.

Config (-C key=value):
  background=PATH|URI   explainer background and drift reference, a CSV or Parquet file
                        with a header of feature names (default: the run's
                        background.csv or background.parquet artifact, if logged)
  classes=a,b,...       class labels in the model's output order
run-local also takes models_dir=PATH, host=H, port=P and grpc_port=P (0: no gRPC).
It serves in the foreground; SIGTERM or Ctrl-C stops the server with it.

update without -m deploys the newest version's URI again (an alias is looked up anew).
delete removes the versions deployed from MLflow. predict and explain call the server at
XSERVE_URL (default http://127.0.0.1:8080) with XSERVE_CLIENT_KEY as its API key, so
every decision is recorded in the audit log.

predict input (--input-path, JSON): rows, [{"income": 52000, "debt": 0.3}, ...], or a
request of MLflow's scoring server:
  {"dataframe_split": {"columns": ["income", "debt"], "data": [[52000, 0.3], ...]}}
  {"dataframe_records": [{"income": 52000, "debt": 0.3}, ...]}
  {"instances": [...]} or {"inputs": [...]}  (rows, or columns {"income": [...], ...})
"""
