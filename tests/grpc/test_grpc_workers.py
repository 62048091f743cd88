"""``xserve serve --workers 2``: every worker serves gRPC on the one port (SO_REUSEPORT)
beside HTTP, and every call is answered and audited whichever worker takes it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton

from tests.server import DEMO_MODELS, Server, copy_demo_models, free_port, running_server

CALLS = 24


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int]]:
    root = copy_demo_models(tmp_path_factory.mktemp("repo") / "models", ["credit-risk"])
    port = free_port()
    with running_server(root, workers=2, env={"XSERVE_GRPC_PORT": str(port)}) as server:
        yield server, port


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def listening_inodes(port: int | None = None) -> set[str]:
    """Socket inodes listening (state 0A) on ``port`` (None: any), IPv4 or IPv6."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if fields[3] == "0A" and port in (None, local_port):
                inodes.add(fields[9])
    return inodes


def sockets(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def _grpc_workers(server: Server, port: int) -> list[int]:
    listening = listening_inodes(port)
    return [pid for pid in _children(server.proc.pid) if sockets(pid) & listening]


def test_every_worker_listens_on_the_grpc_port(served: tuple[Server, int]) -> None:
    server, port = served
    deadline = time.monotonic() + 90  # HTTP is ready with the first worker; the second loads
    while len(_grpc_workers(server, port)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    workers = _grpc_workers(server, port)
    assert len(workers) == 2, (workers, server.log.read_text())
    # the supervisor holds the HTTP socket only; each worker has its own gRPC socket
    assert not sockets(server.proc.pid) & listening_inodes(port)
    assert len(listening_inodes(port)) == 2


def test_calls_over_many_connections_are_all_answered_and_audited(
    served: tuple[Server, int],
) -> None:
    server, port = served
    frame = pd.read_csv(DEMO_MODELS / "credit-risk" / "1" / "background.csv").head(CALLS)
    ids = []
    for i, row in enumerate(frame.to_numpy(dtype=np.float64)):
        # A client (a channel, a connection) per call: the kernel spreads them over workers.
        client = triton.InferenceServerClient(
            url=f"127.0.0.1:{port}", channel_args=[("grpc.use_local_subchannel_pool", 1)]
        )
        tensor = triton.InferInput("input-0", [1, 8], "FP64")
        tensor.set_data_from_numpy(row.reshape(1, 8))
        result = client.infer("credit-risk", [tensor], request_id=f"call-{i}")
        assert result.get_response().id == f"call-{i}"
        ids.append(result.get_response().parameters["request_id"].string_param)
        client.close()
    assert len(set(ids)) == CALLS
    with httpx.Client(base_url=server.url, timeout=30) as c:
        records = c.get("/v1/audit/records", params={"model": "credit-risk", "limit": 1000})
    assert records.status_code == 200, records.text
    audited = {r["request_id"] for r in records.json()["records"] if r["kind"] == "infer"}
    assert set(ids) <= audited
