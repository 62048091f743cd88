"""``--grpc-port 0`` (``XSERVE_GRPC_PORT=0``): the server listens for HTTP only."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.grpc.test_grpc_workers import listening_inodes, sockets
from tests.server import copy_demo_models, running_server


def test_port_zero_serves_http_only(tmp_path: Path) -> None:
    root = copy_demo_models(tmp_path / "models", ["credit-risk"])
    with running_server(root, env={"XSERVE_GRPC_PORT": "0"}) as server:
        assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
        mine = sockets(server.proc.pid) & listening_inodes()
        assert mine == sockets(server.proc.pid) & listening_inodes(server.port)
        assert len(mine) == 1  # the HTTP socket, and no other
