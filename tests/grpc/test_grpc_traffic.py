"""Traffic policies over gRPC, as over HTTP: a sticky split by the ``x-subject-id``
metadata, a named ``model_version`` answering itself, and the shadow version's copy
recorded under the live request's id."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pandas as pd
import pytest

from tests.server import DEMO_MODELS, Server, copy_demo_models, free_port, running_server
from xserve.grpc.proto import grpc_predict_v2_pb2 as pb
from xserve.grpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

MODEL = "credit-risk"
ROW = pd.read_csv(DEMO_MODELS / MODEL / "1" / "background.csv").head(1).to_numpy(np.float64)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Any]]:
    """Versions 1, 2 and 3 of one model: 1 and 2 split evenly, 3 the shadow."""
    root = copy_demo_models(tmp_path_factory.mktemp("repo") / "models", [MODEL])
    for version in ("2", "3"):
        shutil.copytree(root / MODEL / "1", root / MODEL / version)
    (root / MODEL / "deployment.yaml").write_text(
        'policy: split\nsplit: {"1": 50, "2": 50}\nshadow: "3"\n'
    )
    port = free_port()
    with running_server(root, env={"XSERVE_GRPC_PORT": str(port)}) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield server, GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        channel.close()


def _infer(stub: Any, version: str = "", subject: str | None = None) -> Any:
    request = pb.ModelInferRequest(model_name=MODEL, model_version=version)
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 8])
    tensor.contents.fp64_contents.extend(ROW.ravel().tolist())
    metadata = [("x-subject-id", subject)] if subject is not None else None
    return stub.ModelInfer(request, metadata=metadata)


def test_a_subject_always_meets_the_same_version(served: tuple[Server, Any]) -> None:
    _, stub = served
    seen = {}
    for n in range(20):
        versions = {_infer(stub, subject=f"applicant-{n}").model_version for _ in range(3)}
        assert len(versions) == 1  # sticky
        seen[n] = versions.pop()
    assert set(seen.values()) == {"1", "2"}  # both halves of the split meet subjects
    assert "3" not in seen.values()


def test_a_named_version_answers_outside_the_split(served: tuple[Server, Any]) -> None:
    _, stub = served
    assert _infer(stub, version="3").model_version == "3"


def test_the_shadow_copy_is_recorded_under_the_live_request_id(
    served: tuple[Server, Any],
) -> None:
    server, stub = served
    answer = _infer(stub, subject="shadowed")
    request_id = answer.parameters["request_id"].string_param
    deadline, kinds = time.monotonic() + 20, {}
    while time.monotonic() < deadline:  # the shadow runs after the answer
        with httpx.Client(base_url=server.url, timeout=30) as c:
            found = c.get("/v1/audit/records", params={"request_id": request_id}).json()
        kinds = {r["kind"]: r["version"] for r in found["records"]}
        if "shadow" in kinds:
            break
        time.sleep(0.2)
    assert kinds == {"infer": answer.model_version, "shadow": "3"}
