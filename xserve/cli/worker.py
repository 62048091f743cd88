"""``xserve worker``: a Celery worker for explanation jobs."""

from __future__ import annotations

import os
from pathlib import Path

import click

from xserve.cli.options import models_dir_option

__all__ = ["worker"]


@click.command()
@click.option("--concurrency", type=click.IntRange(min=1), help="Job processes; default: cores.")
@click.option("--loglevel", default="info", show_default=True)
@models_dir_option
def worker(concurrency: int | None, loglevel: str, models_dir: Path | None) -> None:
    """Run a Celery worker for explanation jobs (needs XSERVE_BROKER_URL)."""
    from xserve.settings import Settings
    from xserve.threads import pin_env

    if models_dir is not None:
        os.environ["XSERVE_MODELS_DIR"] = str(models_dir)
    settings = Settings()
    if not settings.broker_url:
        raise click.ClickException(
            "xserve worker needs XSERVE_BROKER_URL, e.g. XSERVE_BROKER_URL=redis://localhost:6379/0"
        )
    # Before numpy & co. load (the job processes fork from this one): processes, not
    # threads, share the cores.
    pin_env(settings.job_threads)
    from xserve.jobs.celery_app import make_celery
    from xserve.jobs.run import preload

    preload()  # once here rather than in every job process

    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--queues={settings.job_queue}",
        "--pool=prefork",
        f"--hostname=xserve-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    make_celery(settings).worker_main(argv)
