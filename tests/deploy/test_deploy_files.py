"""The deployment files: every Kubernetes manifest against the Kubernetes JSON schemas
(offline, from kubernetes-validate), the compose file against the compose spec's schema
(vendored by check-jsonschema), and both against xserve itself: settings that exist,
probes on real paths, names that refer to each other."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from celery import Celery
from celery.app.utils import find_app

from xserve.cli.worker import celery_argv
from xserve.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are meant for
K8S_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))
CRD_KINDS = {"ScaledObject"}
"""Custom resources (KEDA's): not in Kubernetes' own schemas, checked below by their own."""


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}#{i}", doc)
        for path in K8S_FILES
        for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
        if doc is not None
    ]


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def is_setting(variable: str) -> bool:
    return variable.removeprefix("XSERVE_").lower() in Settings.model_fields


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # type: ignore[no-any-return]


# -- schemas ----------------------------------------------------------------------------


def builtin_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(w, d) for w, d in documents() if d["kind"] not in CRD_KINDS]


@pytest.mark.parametrize(
    ("where", "doc"), builtin_documents(), ids=[w for w, _ in builtin_documents()]
)
def test_manifest_is_valid_kubernetes(where: str, doc: dict[str, Any]) -> None:
    # strict: unknown fields (a misspelt key) fail too, as kubectl --validate=strict does
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_catches_mistakes() -> None:
    """The schemas really are applied: broken copies of the API Deployment fail."""
    api = find("Deployment", "xserve-api")
    misspelt = copy.deepcopy(api)
    container(misspelt)["readinesProbe"] = container(misspelt).pop("readinessProbe")
    wrong_type = copy.deepcopy(api)
    wrong_type["spec"]["replicas"] = "two"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())  # type: ignore[no-any-return]


def test_compose_file_follows_the_compose_spec() -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose())
    ]
    assert errors == []
    broken = compose()
    broken["services"]["api"]["ports"] = {"8080": 8080}  # a mapping where a list belongs
    assert list(validator.iter_errors(broken)) != []


# -- the manifests fit together and fit xserve -----------------------------------------


def test_every_kind_is_there() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for _, d in documents())
    assert kinds == [
        ("ConfigMap", "xserve-config"),
        ("Deployment", "xserve-api"),
        ("Deployment", "xserve-redis"),
        ("Deployment", "xserve-worker"),
        ("HorizontalPodAutoscaler", "xserve-api"),
        ("PersistentVolumeClaim", "xserve-models"),
        ("PodDisruptionBudget", "xserve-api"),
        ("ScaledObject", "xserve-worker"),
        ("Service", "xserve-api"),
        ("Service", "xserve-redis"),
    ]


def test_api_deployment_probes_resources_and_security() -> None:
    api = find("Deployment", "xserve-api")
    c = container(api)
    assert c["command"][:2] == ["xserve", "serve"]
    port = c["ports"][0]
    assert port["containerPort"] == 8080
    assert c["command"][c["command"].index("--port") + 1] == "8080"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert {c["readinessProbe"]["httpGet"]["port"], c["livenessProbe"]["httpGet"]["port"]} == {
        port["name"]
    }
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    assert requests["cpu"] and requests["memory"] and limits["cpu"] and limits["memory"]
    # native threads sized to the CPU limit, one server process per pod
    variables = env(c)
    assert variables["OMP_NUM_THREADS"] == variables["XSERVE_THREADS_PER_WORKER"] == limits["cpu"]
    assert c["command"][c["command"].index("--workers") + 1] == "1"
    pod = api["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert variables["XSERVE_AUDIT_URL"]["secretKeyRef"]["name"] == "xserve-audit"


def test_services_hpa_and_pdb_point_at_their_pods() -> None:
    api = find("Deployment", "xserve-api")
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = find("Service", "xserve-api")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == container(api)["ports"][0]["name"]
    assert (
        find("PodDisruptionBudget", "xserve-api")["spec"]["selector"]["matchLabels"]
        == (api["spec"]["selector"]["matchLabels"])
    )
    hpa = find("HorizontalPodAutoscaler", "xserve-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "xserve-api",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    # utilization is measured against requests: the pods must request CPU
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert container(api)["resources"]["requests"]["cpu"]

    redis = find("Deployment", "xserve-redis")
    redis_service = find("Service", "xserve-redis")
    assert redis_service["spec"]["selector"].items() <= (
        redis["spec"]["template"]["metadata"]["labels"].items()
    )
    assert redis_service["spec"]["ports"][0]["port"] == 6379


def test_configuration_uses_real_settings_and_real_services() -> None:
    config = find("ConfigMap", "xserve-config")["data"]
    variables = set(config)
    for name in ("xserve-api", "xserve-worker"):
        c = container(find("Deployment", name))
        variables |= {v for v in env(c) if v.startswith("XSERVE_")}
        assert c["envFrom"] == [{"configMapRef": {"name": "xserve-config"}}]
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts[config["XSERVE_MODELS_DIR"]]["readOnly"] is True
    assert sorted(v for v in variables if not is_setting(v)) == []
    for key in ("XSERVE_BROKER_URL", "XSERVE_CACHE_URL"):
        host = re.match(r"redis://([^:/]+):6379/\d+$", config[key])
        assert host is not None and host[1] == "xserve-redis", config[key]
    assert config["XSERVE_BROKER_URL"] != config["XSERVE_CACHE_URL"]  # separate databases
    assert container(find("Deployment", "xserve-worker"))["command"][:2] == ["xserve", "worker"]
    pvc = find("PersistentVolumeClaim", "xserve-models")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # shared by pods on many nodes


def test_compose_services_match_xserve() -> None:
    services = compose()["services"]
    assert set(services) == {"api", "worker", "redis", "postgres"}
    api, worker = services["api"], services["worker"]
    assert api["command"][:2] == ["xserve", "serve"]
    assert worker["command"][:2] == ["xserve", "worker"]
    assert api["image"] == worker["image"] and api["build"] == worker["build"]
    assert (DEPLOY / api["build"]["context"] / api["build"]["dockerfile"]).is_file()
    assert "/health/ready" in " ".join(api["healthcheck"]["test"])
    for service in (api, worker):
        variables = service["environment"]
        assert sorted(v for v in variables if not is_setting(v)) == []
        assert variables["XSERVE_BROKER_URL"] == "redis://redis:6379/0"
        assert variables["XSERVE_CACHE_URL"] == "redis://redis:6379/1"
        models = [v for v in service["volumes"] if v.split(":")[-2] == "/srv/models"]
        assert models and variables["XSERVE_MODELS_DIR"] == "/srv/models"
    assert api["environment"]["XSERVE_AUDIT_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in api["environment"]["XSERVE_AUDIT_URL"]
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_binds_to_loopback_unless_told_and_sets_api_keys() -> None:
    compose_file = compose()
    api = compose_file["services"]["api"]
    command = api["command"]
    port, grpc_port = (command[command.index(flag) + 1] for flag in ("--port", "--grpc-port"))
    assert (port, grpc_port) == ("8080", "8081")
    # Both ports published, each on ${XSERVE_BIND}, which defaults to the host's loopback.
    assert api["ports"] == [f"${{XSERVE_BIND:-127.0.0.1}}:{p}:{p}" for p in (port, grpc_port)]
    assert not any(p.startswith(("8080", "8081", "0.0.0.0")) for p in api["ports"])
    # Keys: a file of digests, given to the API as a secret; no service runs open.
    keys = api["environment"]["XSERVE_API_KEYS"]
    assert api["secrets"] == ["xserve-api-keys"] and keys == "/run/secrets/xserve-api-keys"
    assert compose_file["secrets"]["xserve-api-keys"]["file"] == "${XSERVE_KEYS_HOST:-./keys.txt}"
    assert "xserve keys add" in (DEPLOY / "compose.yaml").read_text()


# -- the workers: probes, healthcheck and autoscaling ------------------------------------

PING = "celery -A xserve.jobs.celery_app inspect ping -d"


def ping_timeout(command: str) -> float:
    found = re.search(r"--timeout (\d+(?:\.\d+)?)", command)
    assert found is not None, command
    return float(found[1])


def test_worker_probes_ping_the_worker_by_its_own_name(monkeypatch: pytest.MonkeyPatch) -> None:
    c = container(find("Deployment", "xserve-worker"))
    # the name `xserve worker` gives its worker, %h being the pod's hostname
    assert "--hostname=xserve@%h" in celery_argv("q", "info", None, ())
    for kind in ("readinessProbe", "livenessProbe"):
        probe = c[kind]
        shell, flag, command = probe["exec"]["command"]
        assert (shell, flag) == ("sh", "-c") and command.startswith(f"exec {PING} ")
        assert '"xserve@$HOSTNAME"' in command
        # Celery's own wait for the answer ends before the kubelet gives up on the probe
        assert ping_timeout(command) + 5 <= probe["timeoutSeconds"] <= probe["periodSeconds"]
    liveness = c["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 120  # no restart loops
    # running jobs finish on rollout or scale-down (Celery's warm shutdown)
    pod = find("Deployment", "xserve-worker")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= Settings().job_time_limit
    # the -A path the probes name loads the app (offline: building it connects nowhere)
    monkeypatch.setenv("XSERVE_BROKER_URL", "redis://127.0.0.1:6379/0")
    assert isinstance(find_app("xserve.jobs.celery_app"), Celery)


def test_compose_worker_has_a_healthcheck_pinging_it() -> None:
    worker = compose()["services"]["worker"]
    check = worker["healthcheck"]
    kind, command = check["test"]
    assert kind == "CMD-SHELL" and command.startswith(f"{PING} xserve@$$HOSTNAME ")
    assert ping_timeout(command) < int(check["timeout"].removesuffix("s"))
    assert int(check["start_period"].removesuffix("s")) >= 30  # the worker preloads first


# KEDA's ScaledObject (keda.sh/v1alpha1), the part of its CRD these manifests use: unknown
# keys fail, as kubectl's strict validation of the installed CRD would.
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "labels": _STRINGS},
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object"},
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": _STRINGS,  # KEDA takes strings only here
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {"type": "object"},
                            "useCachedMetrics": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


def test_keda_scales_the_workers_on_the_celery_queue_in_redis() -> None:
    scaled = find("ScaledObject", "xserve-worker")
    validator = jsonschema.Draft202012Validator(SCALED_OBJECT_SCHEMA)
    assert [e.message for e in validator.iter_errors(scaled)] == []
    misspelt = copy.deepcopy(scaled)
    misspelt["spec"]["maxReplicas"] = misspelt["spec"].pop("maxReplicaCount")
    not_a_string = copy.deepcopy(scaled)
    not_a_string["spec"]["triggers"][0]["metadata"]["listLength"] = 4
    for broken in (misspelt, not_a_string):
        assert list(validator.iter_errors(broken)) != []
    # the behavior is an HPA's: Kubernetes' own schema for it
    hpa = copy.deepcopy(find("HorizontalPodAutoscaler", "xserve-api"))
    hpa["spec"]["behavior"] = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"][
        "behavior"
    ]
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)

    spec = scaled["spec"]
    worker = find("Deployment", "xserve-worker")
    assert spec["scaleTargetRef"] == {
        "apiVersion": worker["apiVersion"],
        "kind": "Deployment",
        "name": worker["metadata"]["name"],
    }
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis" and int(meta["listLength"]) > 0
    # the list Celery queues jobs in: the queue's name, in the broker's database
    config = find("ConfigMap", "xserve-config")["data"]
    queue = config.get("XSERVE_JOB_QUEUE", Settings.model_fields["job_queue"].default)
    assert meta["listName"] == queue
    broker = re.match(r"redis://([^:/]+):(\d+)/(\d+)$", config["XSERVE_BROKER_URL"])
    assert broker is not None
    host, port = meta["address"].rsplit(":", 1)
    # KEDA runs in its own namespace: the Service's name with its namespace
    assert host.startswith(f"{broker[1]}.") and host.endswith(".svc.cluster.local")
    assert port == broker[2] and meta["databaseIndex"] == broker[3]
    redis_service = find("Service", broker[1])
    assert redis_service["spec"]["ports"][0]["port"] == int(port)
