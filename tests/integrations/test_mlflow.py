"""The MLflow integration against a real tracking store and model registry (SQLite,
local artifacts): log and register models, deploy them with the deployments plugin (its
Python API and the ``mlflow deployments`` command), follow an alias with ``xserve sync``,
and serve what was deployed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import mlflow.pyfunc
import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
import xgboost as xgb
import yaml
from mlflow import MlflowClient
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc.model import PythonModel
from sklearn.ensemble import RandomForestClassifier

from tests.server import free_port, running_server
from xserve.errors import ManifestError, ModelLoadError
from xserve.explainers.attach import attach_inline
from xserve.explainers.kernel_shap import KernelShap, KernelShapParams
from xserve.repository.version import ModelVersion, load_version

FEATURES = ["income", "debt", "age", "tenure"]
TREE_TYPES = ["sklearn.tree._tree.Tree"]  # what skops asks MLflow to trust for forests


def applicants(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "income": rng.normal(50.0, 15.0, n),
            "debt": rng.uniform(0.0, 1.0, n),
            "age": rng.integers(18, 80, n),  # an int64 column: "long" in the signature
            "tenure": rng.normal(5.0, 2.0, n),
        }
    )
    y = (frame["debt"] * 60 - frame["income"] + rng.normal(0, 5, n) > -20).astype(int)
    return frame, y


def custom_classifier() -> Any:
    """A pyfunc with predict_proba and classes_ (defined here, so cloudpickle stores the
    class by value and any process can load it)."""

    class Logistic(PythonModel):
        classes_ = ["approve", "decline"]

        def predict_proba(self, model_input: pd.DataFrame) -> npt.NDArray[np.float64]:
            z = 0.1 * (60 * model_input["debt"] - model_input["income"] + 20)
            z = z + 0.01 * model_input["age"]
            p = 1 / (1 + np.exp(-z.to_numpy(dtype=float)))
            return np.column_stack([1 - p, p])

        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
            return np.array(self.classes_)[self.predict_proba(model_input).argmax(axis=1)]

    return Logistic()


def custom_regressor() -> Any:
    class Score(PythonModel):
        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
            # age must arrive as integers: the signature says long
            assert model_input["age"].dtype == np.int64, model_input.dtypes
            return model_input["income"] - 40 * model_input["debt"] + model_input["age"] // 10

    return Score()


@dataclass
class Registry:
    uri: str
    x: pd.DataFrame
    """Rows to predict on."""
    forests: dict[str, RandomForestClassifier]
    """credit versions 1 and 2, as trained."""
    booster: xgb.XGBClassifier

    def env(self) -> dict[str, str]:
        return {**os.environ, "MLFLOW_TRACKING_URI": self.uri}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A tracking store and registry holding credit v1 (a random forest in MLflow's
    default skops format, its run with a background.csv), credit v2 (another forest,
    cloudpickled as MLflow 2 did), boost v1 (XGBoost), custom v1 (a pyfunc classifier)
    and score v1 (a pyfunc regressor)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    x, y = applicants(400, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        artifacts = (tmp / "artifacts").as_uri()
        experiment = mlflow.create_experiment("credit", artifact_location=artifacts)
        forests = {
            "1": RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0).fit(x, y),
            "2": RandomForestClassifier(n_estimators=30, max_depth=5, random_state=1).fit(x, y),
        }
        signature = infer_signature(x, forests["1"].predict_proba(x))
        with mlflow.start_run(experiment_id=experiment):
            background = tmp / "background.csv"
            x.head(60).to_csv(background, index=False)
            mlflow.log_artifact(str(background))
            mlflow.sklearn.log_model(
                forests["1"],
                name="model",
                registered_model_name="credit",
                signature=signature,
                skops_trusted_types=TREE_TYPES,
            )
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(
                forests["2"],
                name="model",
                registered_model_name="credit",
                signature=signature,
                serialization_format="cloudpickle",
            )
        booster = xgb.XGBClassifier(n_estimators=15, max_depth=3).fit(x, y)
        with mlflow.start_run(experiment_id=experiment):
            mlflow.xgboost.log_model(
                booster,
                name="model",
                registered_model_name="boost",
                signature=infer_signature(x, booster.predict_proba(x)),
            )
        with mlflow.start_run(experiment_id=experiment):
            mlflow.log_artifact(str(background))
            mlflow.pyfunc.log_model(
                name="model",
                python_model=custom_classifier(),
                registered_model_name="custom",
                signature=infer_signature(x, np.array(["approve"] * len(x))),
            )
            mlflow.pyfunc.log_model(
                name="model",
                python_model=custom_regressor(),
                registered_model_name="score",
                signature=infer_signature(x, np.zeros(len(x))),
            )
        yield Registry(uri, applicants(50, seed=1)[0], forests, booster)
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None: back to the default


def plugin(root: Path) -> Any:
    """The deployments client for target ``xserve:<root>``, found through the entry point."""
    return get_deploy_client(f"xserve:{root}")  # type: ignore[no-untyped-call]


def deployed(root: Path, name: str, version: str) -> tuple[ModelVersion, dict[str, Any]]:
    folder = root / name / version
    manifest = yaml.safe_load((folder / "xserve.yaml").read_text())
    return attach_inline(load_version(name, version, folder)), manifest


def versions(root: Path, name: str) -> list[str]:
    return sorted(p.name for p in (root / name).iterdir()) if (root / name).exists() else []


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def assert_additive(model: ModelVersion, x: npt.NDArray[np.float64]) -> None:
    """TreeSHAP's values add up to the model's own output, row by row."""
    assert model.inline is not None, model.inline_error
    attribution = model.inline.explain(x)
    total = attribution.base + attribution.values.sum(axis=1)
    np.testing.assert_allclose(total, model.inline.model_output(x), rtol=1e-5, atol=1e-8)


# -- the deployments plugin, Python API -----------------------------------------------


def test_sklearn_model_becomes_a_skops_forest_with_tree_shap(
    registry: Registry, tmp_path: Path
) -> None:
    client = plugin(tmp_path)
    answer = client.create_deployment("credit", "models:/credit/1")
    assert answer["name"] == "credit" and answer["flavor"] == "sklearn"
    assert answer["version"] == "1" and answer["registered_version"] == "1"

    model, manifest = deployed(tmp_path, "credit", "1")
    assert manifest["artifact"] == "model.skops" and "trusted" not in manifest
    assert manifest["mlflow"]["model_uri"] == "models:/credit/1"
    assert manifest["mlflow"]["name"] == "credit" and manifest["mlflow"]["version"] == "1"
    assert len(manifest["mlflow"]["run_id"]) == 32
    # the signature's long column is an integer feature; the run's background came along
    assert [(f["name"], f["type"]) for f in manifest["features"]] == [
        ("income", "numeric"),
        ("debt", "numeric"),
        ("age", "integer"),
        ("tenure", "numeric"),
    ]
    assert manifest["background"] == "background.csv" and model.background is not None
    assert model.task == "classification" and model.classes == [0, 1]
    assert model.inline is not None and model.inline.method == "tree_shap"

    x = registry.x[FEATURES].to_numpy(dtype=np.float64)
    pyfunc = mlflow.pyfunc.load_model("models:/credit/1")
    native = mlflow.sklearn.load_model("models:/credit/1")
    probabilities = model.runtime.predict(x)
    np.testing.assert_allclose(probabilities, native.predict_proba(registry.x), rtol=1e-12)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), pyfunc.predict(registry.x))
    assert_additive(model, x)


def test_xgboost_model_becomes_a_native_json_booster_with_tree_shap(
    registry: Registry, tmp_path: Path
) -> None:
    client = plugin(tmp_path)
    assert client.create_deployment("boost", "models:/boost/1")["flavor"] == "xgboost"
    model, manifest = deployed(tmp_path, "boost", "1")
    assert manifest["artifact"] == "model.json"
    assert (tmp_path / "boost" / "1" / "model.json").read_text().startswith("{")  # JSON
    assert model.feature_names == FEATURES and model.classes == [0, 1]
    assert model.inline is not None and model.inline.method == "tree_shap"

    x = registry.x[FEATURES].to_numpy(dtype=np.float64)
    pyfunc = mlflow.pyfunc.load_model("models:/boost/1")
    np.testing.assert_allclose(
        model.runtime.predict(x), registry.booster.predict_proba(registry.x), rtol=1e-6
    )
    np.testing.assert_array_equal(
        model.runtime.predict(x).argmax(axis=1), np.asarray(pyfunc.predict(registry.x)).reshape(-1)
    )
    assert_additive(model, x)


def test_custom_pyfunc_classifier_runs_through_pyfunc_with_job_explanations(
    registry: Registry, tmp_path: Path
) -> None:
    client = plugin(tmp_path)
    assert client.create_deployment("custom", "models:/custom/1")["flavor"] == "mlflow"
    model, manifest = deployed(tmp_path, "custom", "1")
    assert manifest["flavor"] == "mlflow" and manifest["trusted"] is True
    assert (tmp_path / "custom" / "1" / "model" / "MLmodel").is_file()
    # classification because the python model has predict_proba; labels from its classes_
    assert model.task == "classification" and model.classes == ["approve", "decline"]
    assert model.inline is None and "kernel_shap" in (model.inline_error or "")

    pyfunc = mlflow.pyfunc.load_model("models:/custom/1")
    x = registry.x[FEATURES].to_numpy(dtype=np.float64)
    probabilities = model.runtime.predict(x)
    np.testing.assert_allclose(
        probabilities, pyfunc.unwrap_python_model().predict_proba(registry.x), rtol=1e-12
    )
    labels = [model.classes[i] for i in probabilities.argmax(axis=1)]
    assert labels == list(pyfunc.predict(registry.x))

    # Model-agnostic explanations work on it: KernelSHAP adds up to its probabilities.
    explainer = KernelShap(model, KernelShapParams(nsamples=200, background=10, seed=0))
    record = explainer.explain_row(x[0])
    values, base = np.array(record["values"]), np.array(record["base"])
    np.testing.assert_allclose(base + values.sum(axis=0), probabilities[0], rtol=1e-5)


def test_pyfunc_without_predict_proba_is_a_regressor_and_cannot_be_called_a_classifier(
    registry: Registry, tmp_path: Path
) -> None:
    client = plugin(tmp_path)
    client.create_deployment("score", "models:/score/1")
    model, manifest = deployed(tmp_path, "score", "1")
    assert model.task == "regression" and manifest["task"] == "regression"
    x = registry.x[FEATURES].to_numpy(dtype=np.float64)
    expected = mlflow.pyfunc.load_model("models:/score/1").predict(registry.x)
    np.testing.assert_allclose(
        model.runtime.predict(x), np.asarray(expected, dtype=float), rtol=1e-12
    )

    folder = tmp_path / "score" / "1"
    manifest.update(task="classification", classes=["low", "high"])
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(ModelLoadError, match="no predict_proba"):
        load_version("score", "1", folder)
    manifest.update(task="regression", trusted=False)
    manifest.pop("classes")
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(ModelLoadError, match="trusted: true"):
        load_version("score", "1", folder)


def test_create_update_get_list_delete(registry: Registry, tmp_path: Path) -> None:
    client = plugin(tmp_path)
    client.create_deployment("credit", "models:/credit/1")
    with pytest.raises(MlflowException, match="already exists"):
        client.create_deployment("credit", "models:/credit/2")

    # update adds a version: credit v2 was cloudpickled, and is served from skops too
    answer = client.update_deployment("credit", "models:/credit/2")
    assert answer["version"] == "2" and answer["registered_version"] == "2"
    model, manifest = deployed(tmp_path, "credit", "2")
    assert manifest["artifact"] == "model.skops" and manifest["mlflow"]["version"] == "2"
    assert "background" not in manifest  # v2's run logged none
    x = registry.x[FEATURES].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(
        model.runtime.predict(x), registry.forests["2"].predict_proba(registry.x), rtol=1e-12
    )
    assert model.inline is not None

    # a model of the repository that MLflow did not deploy is not a deployment, and stays
    other = tmp_path / "other" / "1"
    other.mkdir(parents=True)
    (other / "xserve.yaml").write_text("artifact: model.json\n")
    got = client.get_deployment("credit")
    assert got["version"] == "2" and [v["version"] for v in got["versions"]] == ["1", "2"]
    assert got["versions"][0]["mlflow"]["version"] == "1"
    assert [d["name"] for d in client.list_deployments()] == ["credit"]
    with pytest.raises(MlflowException, match="no deployment"):
        client.get_deployment("nothing")
    with pytest.raises(MlflowException, match="no deployment"):
        client.update_deployment("nothing", "models:/credit/1")

    client.delete_deployment("credit")
    assert not (tmp_path / "credit").exists() and versions(tmp_path, "other") == ["1"]
    assert client.list_deployments() == []
    client.delete_deployment("credit")  # idempotent


def test_bad_requests_fail_cleanly_and_leave_nothing(registry: Registry, tmp_path: Path) -> None:
    client = plugin(tmp_path)
    with pytest.raises(MlflowException, match="not in the MLflow registry"):
        client.create_deployment("credit", "models:/credit/9")
    with pytest.raises(MlflowException, match="only"):
        client.create_deployment("custom", "models:/custom/1", flavor="sklearn")
    with pytest.raises(MlflowException, match="unknown config keys"):
        client.create_deployment("credit", "models:/credit/1", config={"backgrund": "x.csv"})
    with pytest.raises(MlflowException, match="deployment name"):
        client.create_deployment("../escape", "models:/credit/1")
    assert list(tmp_path.iterdir()) == []


def test_an_alias_is_resolved_and_recorded_and_flavor_mlflow_forces_pyfunc(
    registry: Registry, tmp_path: Path
) -> None:
    MlflowClient().set_registered_model_alias("credit", "candidate", "2")
    client = plugin(tmp_path)
    client.create_deployment(
        "credit", "models:/credit@candidate", flavor="mlflow", config={"classes": "good,bad"}
    )
    model, manifest = deployed(tmp_path, "credit", "1")
    assert manifest["mlflow"] == {
        "model_uri": "models:/credit@candidate",
        "name": "credit",
        "version": "2",
        "alias": "candidate",
        "run_id": manifest["mlflow"]["run_id"],
    }
    # the sklearn model runs through pyfunc: predict_proba of the raw model, no TreeSHAP
    assert model.flavor == "mlflow" and model.classes == ["good", "bad"]
    assert model.inline is None
    x = registry.x[FEATURES].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(
        model.runtime.predict(x), registry.forests["2"].predict_proba(registry.x), rtol=1e-12
    )


def test_a_hand_written_manifest_may_name_a_registry_version(
    registry: Registry, tmp_path: Path
) -> None:
    """A manifest's artifact may be a registry URI (``models:/...``, flavor mlflow),
    fetched at load."""
    folder = tmp_path / "score" / "1"
    folder.mkdir(parents=True)
    manifest: dict[str, Any] = {"artifact": "models:/score/1", "trusted": True}
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest))
    model = load_version("score", "1", folder)  # flavor inferred from the URI
    assert model.flavor == "mlflow" and model.feature_names == FEATURES
    x = registry.x[FEATURES].to_numpy(dtype=np.float64)
    expected = mlflow.pyfunc.load_model("models:/score/1").predict(registry.x)
    np.testing.assert_allclose(model.runtime.predict(x), np.asarray(expected, dtype=float))
    # the digest is the downloaded folder's: the same registry version, the same digest
    assert model.digest == load_version("score", "1", folder).digest

    MlflowClient().set_registered_model_alias("score", "live", "1")
    manifest["artifact"] = "models:/score@live"  # an alias moves: a version must not
    (folder / "xserve.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(ModelLoadError, match="xserve sync"):
        load_version("score", "1", folder)


def test_without_mlflow_the_mlflow_flavor_names_the_extra(
    registry: Registry, tmp_path: Path
) -> None:
    plugin(tmp_path).create_deployment("score", "models:/score/1")
    code = (
        "import sys; sys.modules['mlflow'] = None\n"  # as if not installed
        "from pathlib import Path\n"
        "from xserve.repository.version import load_version\n"
        f"load_version('score', '1', Path({str(tmp_path / 'score' / '1')!r}))\n"
    )
    result = run([sys.executable, "-c", code], registry.env(), tmp_path.parent)
    assert result.returncode != 0
    assert "flavor 'mlflow' needs the mlflow package" in result.stderr
    assert "pip install 'xserve[mlflow]'" in result.stderr
    assert ManifestError.__name__ in result.stderr


# -- the mlflow command ---------------------------------------------------------------


def test_mlflow_deployments_command(registry: Registry, tmp_path: Path) -> None:
    mlflow_cli = [sys.executable, "-m", "mlflow", "deployments"]
    target = ["-t", f"xserve:{tmp_path}"]
    created = run(
        [*mlflow_cli, "create", *target, "--name", "boost", "-m", "models:/boost/1"],
        registry.env(),
        tmp_path.parent,
    )
    assert created.returncode == 0, created.stderr
    assert "xgboost deployment boost is created" in created.stdout
    model, manifest = deployed(tmp_path, "boost", "1")
    assert manifest["mlflow"]["model_uri"] == "models:/boost/1" and model.inline is not None

    got = run([*mlflow_cli, "get", *target, "--name", "boost"], registry.env(), tmp_path.parent)
    assert got.returncode == 0, got.stderr
    assert "flavor: xgboost" in got.stdout and "registered_version: 1" in got.stdout

    helped = run([*mlflow_cli, "help", "-t", "xserve"], registry.env(), tmp_path.parent)
    assert "xserve:/path/to/models" in helped.stdout, helped.stderr

    deleted = run(
        [*mlflow_cli, "delete", *target, "--name", "boost"], registry.env(), tmp_path.parent
    )
    assert deleted.returncode == 0, deleted.stderr
    assert not (tmp_path / "boost").exists()


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc: children's children too)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has stopped; only its parent's wait is missing


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_run_local_deploys_and_serves_until_sigterm(registry: Registry, tmp_path: Path) -> None:
    port, grpc_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "deployments",
        "run-local",
        "-t",
        "xserve",
        "--name",
        "boost",
        "-m",
        "models:/boost/1",
        "-C",
        f"models_dir={tmp_path}",
        "-C",
        f"port={port}",
        "-C",
        f"grpc_port={grpc_port}",
    ]
    env = {**registry.env(), "XSERVE_AUDIT_URL": "none", "XSERVE_POLL_INTERVAL": "0.2"}
    log = tmp_path.parent / "run-local.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, cwd=tmp_path.parent, stdout=out, stderr=subprocess.STDOUT
        )
    servers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        url = f"http://127.0.0.1:{port}"
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        rows = registry.x.head(3)
        r = httpx.post(
            f"{url}/v1/models/boost/predict",
            json={"instances": rows.to_dict(orient="records")},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(
            r.json()["probabilities"], registry.booster.predict_proba(rows), rtol=1e-6
        )
        assert versions(tmp_path, "boost") == ["1"]
        assert _listening(grpc_port)

        # SIGTERM to the mlflow process alone, as a supervisor or `kill` sends it.
        servers = _descendants(proc.pid)
        assert servers, "run-local started no server process"
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, (proc.returncode, log.read_text()[-300:])
        while _listening(port) or _listening(grpc_port) or any(map(_alive, servers)):
            assert time.monotonic() - stopped_at < 10, (
                f"left running: {[p for p in servers if _alive(p)]}"
            )
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in servers | _descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- xserve sync ----------------------------------------------------------------------


def test_sync_follows_the_alias(registry: Registry, tmp_path: Path) -> None:
    client = MlflowClient()
    client.set_registered_model_alias("credit", "champion", "1")
    sync = [
        sys.executable,
        "-m",
        "xserve.cli",
        "sync",
        "credit",
        "--alias",
        "champion",
        "--models-dir",
        str(tmp_path),
        "--tracking-uri",
        registry.uri,
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the option

    first = run(sync, env, tmp_path.parent)
    assert first.returncode == 0, first.stderr
    assert "is version 1: deployed as credit version 1" in first.stdout
    client.set_registered_model_alias("credit", "champion", "2")
    moved = run(sync, env, tmp_path.parent)
    assert moved.returncode == 0, moved.stderr
    assert "is version 2: deployed as credit version 2" in moved.stdout
    again = run(sync, env, tmp_path.parent)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    assert versions(tmp_path, "credit") == ["1", "2"]
    _, manifest = deployed(tmp_path, "credit", "2")
    assert manifest["mlflow"]["alias"] == "champion" and manifest["mlflow"]["version"] == "2"

    # Rolling the alias back deploys v1 again as the newest version, so that it serves.
    from xserve.integrations.mlflow.deploy import sync_alias

    client.set_registered_model_alias("credit", "champion", "1")
    source, folder = sync_alias(tmp_path, "credit", "champion")
    assert source.version == "1" and folder is not None and folder.name == "3"
    assert sync_alias(tmp_path, "credit", "champion")[1] is None


# -- served by a real xserve -----------------------------------------------------------


def test_a_deployed_model_serves_with_explanations_and_picks_up_updates(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    client = plugin(root)
    client.create_deployment("credit", "models:/credit/1")
    client.create_deployment("custom", "models:/custom/1")
    client.create_deployment("score", "models:/score/1")
    rows = registry.x.head(5)
    instances = rows.to_dict(orient="records")
    expected = mlflow.sklearn.load_model("models:/credit/1").predict_proba(rows)
    with running_server(root) as server, server.client() as http:
        r = http.post("/v1/models/credit/predict?explain=true", json={"instances": instances})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["version"] == "1"
        np.testing.assert_allclose(body["probabilities"], expected, rtol=1e-9)
        for explanation, p in zip(body["explanations"], body["probabilities"], strict=True):
            assert explanation["method"] == "tree_shap"
            assert set(explanation["values"]) == set(FEATURES)
            total = explanation["base_value"] + sum(explanation["values"].values())
            assert total == pytest.approx(p[explanation["class"]], rel=1e-5)

        # the pyfunc model serves too, and the plugin's predict goes through the server
        monkeypatch.setenv("XSERVE_URL", server.url)
        answer = client.predict("custom", rows)
        assert answer["predictions"] == list(
            mlflow.pyfunc.load_model("models:/custom/1").predict(rows)
        )
        with pytest.raises(MlflowException, match="422"):
            client.explain("custom", rows)  # no inline explainer for a pyfunc model

        # MLflow's request formats, as users send them, give the same predictions
        split = rows.to_dict(orient="split")  # every digit: no JSON rounding
        records = rows.to_dict(orient="records")
        columns = {c: rows[c].tolist() for c in rows.columns}
        expected_scores = mlflow.pyfunc.load_model("models:/score/1").predict(rows).tolist()
        for inputs in (
            rows,
            {"dataframe_split": split},
            {"dataframe_split": {"columns": split["columns"], "data": split["data"]}},
            {"dataframe_records": records},
            {"instances": records},
            {"inputs": columns},
            {"instances": rows[FEATURES].to_numpy().tolist()},  # rows in feature order
        ):
            got = client.predict("score", inputs)
            assert got["predictions"] == pytest.approx(expected_scores, rel=1e-12), inputs
        for bad, why in (
            ({"dataframe_split": {"columns": FEATURES}}, '"data" list'),
            ({"dataframe_split": {"columns": ["a"], "data": split["data"]}}, "do not fit"),
            ({"rows": records}, "dataframe_split, dataframe_records, instances, inputs"),
            ({"inputs": records, "params": {"x": 1}}, "keys"),
        ):
            with pytest.raises(MlflowException, match=why):
                client.predict("score", bad)
        # ... and through the mlflow command, which reads the file with pandas first
        request = tmp_path / "request.json"
        request.write_text(json.dumps({"dataframe_split": split}))
        command = [sys.executable, "-m", "mlflow", "deployments", "predict"]
        command += ["-t", f"xserve:{root}", "--name", "score", "--input-path", str(request)]
        answered = run(command, {**registry.env(), "XSERVE_URL": server.url}, tmp_path)
        assert answered.returncode == 0, answered.stderr
        printed = json.loads(answered.stdout.strip().splitlines()[-1])
        assert printed["predictions"] == pytest.approx(expected_scores, rel=1e-12)

        client.update_deployment("credit", "models:/credit/2")  # while serving
        deadline = time.monotonic() + 30
        while http.get("/v1/models/credit").json().get("version") != "2":
            assert time.monotonic() < deadline, "version 2 was not picked up"
            time.sleep(0.2)
        r = http.post("/v1/models/credit/predict", json={"instances": instances})
        assert r.json()["version"] == "2"
        np.testing.assert_allclose(
            r.json()["probabilities"], registry.forests["2"].predict_proba(rows), rtol=1e-9
        )
