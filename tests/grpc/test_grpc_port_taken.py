"""A gRPC port another socket holds stops the server's start with a message saying what to
change (as uvicorn does for the HTTP port), instead of serving without gRPC."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from xserve.grpc.server import grpc_server
from xserve.repository.repository import ModelRepository
from xserve.serving.dataplane import DataPlane
from xserve.settings import Settings


def test_a_taken_port_is_an_error_naming_the_option(tmp_path: Path) -> None:
    with socket.socket() as held:  # no SO_REUSEPORT: nobody may share it
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        settings = Settings(models_dir=tmp_path, grpc_port=port, audit_url="none")
        dataplane = DataPlane(ModelRepository(tmp_path), settings)

        async def start() -> None:
            async with grpc_server(dataplane, settings, None):
                pass

        with pytest.raises(RuntimeError, match=f"gRPC cannot listen on 127.0.0.1:{port}") as err:
            asyncio.run(start())
    assert "--grpc-port" in str(err.value) and "0 for none" in str(err.value)


def test_port_zero_starts_nothing(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path, grpc_port=0, audit_url="none")
    dataplane = DataPlane(ModelRepository(tmp_path), settings)

    async def start() -> int | None:
        async with grpc_server(dataplane, settings, None) as port:
            return port

    assert asyncio.run(start()) is None
