"""``xserve serve``: the HTTP server (uvicorn workers running the Litestar app), and in each
worker the gRPC server of the Open Inference Protocol."""

from __future__ import annotations

import os
from pathlib import Path

import click

from xserve.cli.options import models_dir_option

__all__ = ["serve"]


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--workers", default=1, show_default=True, type=int, help="Server processes sharing the port."
)
@click.option(
    "--grpc-port",
    default=8081,
    show_default=True,
    type=click.IntRange(0, 65535),
    envvar="XSERVE_GRPC_PORT",
    help="Port of the Open Inference Protocol over gRPC (inference.GRPCInferenceService), "
    "shared by the workers; 0 turns gRPC off. [env: XSERVE_GRPC_PORT]",
)
@models_dir_option
@click.option("--log-level", default="info", show_default=True)
def serve(
    host: str, port: int, workers: int, grpc_port: int, models_dir: Path | None, log_level: str
) -> None:
    """Serve the model repository over HTTP and gRPC."""
    from xserve.settings import Settings
    from xserve.threads import pin_env, threads_per_worker

    if models_dir is not None:
        os.environ["XSERVE_MODELS_DIR"] = str(models_dir)
    # Read by every worker's app (uvicorn spawns them): gRPC listens where HTTP does.
    os.environ["XSERVE_GRPC_PORT"] = str(grpc_port)
    os.environ["XSERVE_GRPC_HOST"] = host
    # Before numpy/xgboost load: each worker gets its share of the cores.
    pin_env(threads_per_worker(Settings(), workers))
    import uvicorn

    from xserve.api.limits import uvicorn_limits
    from xserve.monitoring.procdir import metrics_dir

    # Before prometheus-client loads anywhere: /metrics adds up every worker's figures.
    with metrics_dir():
        uvicorn.run(
            "xserve.api.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=False,
            # request line and headers bounded in size (431) and time (408)
            **uvicorn_limits(),
        )
