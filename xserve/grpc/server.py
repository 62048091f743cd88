"""The gRPC server of one server process, opened and closed by the app's lifespan.

Every ``xserve serve`` worker listens on the same gRPC port with ``SO_REUSEPORT`` (Linux):
the kernel spreads connections over the workers as it does for HTTP.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from xserve.grpc.auth import KeyCheck
from xserve.grpc.proto.grpc_predict_v2_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from xserve.grpc.servicer import InferenceServicer
from xserve.security.keys import KeyRing
from xserve.serving.dataplane import DataPlane
from xserve.settings import Settings

__all__ = ["grpc_server"]

log = logging.getLogger("xserve")

STOP_GRACE = 5.0
"""Seconds calls in flight get to finish when the server stops."""


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextlib.asynccontextmanager
async def grpc_server(
    dataplane: DataPlane, settings: Settings, keys: KeyRing | None
) -> AsyncIterator[int | None]:
    """Serve gRPC on ``settings.grpc_host:grpc_port`` while the context is open; yields the
    port (None when ``grpc_port`` is 0: no gRPC)."""
    if not settings.grpc_port:
        yield None
        return
    server = grpc.aio.server(
        options=[
            # The same bound as an HTTP body; a larger message is refused RESOURCE_EXHAUSTED.
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.so_reuseport", 1),
        ]
    )
    servicer = InferenceServicer(dataplane, KeyCheck(keys))
    add_GRPCInferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    address = _address(settings.grpc_host, settings.grpc_port)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(
            f"gRPC cannot listen on {address} ({exc}): choose another --grpc-port "
            "(XSERVE_GRPC_PORT), or 0 for none"
        ) from None
    await server.start()
    log.info("gRPC (inference.GRPCInferenceService) on %s", address)
    try:
        yield port
    finally:
        await server.stop(STOP_GRACE)
