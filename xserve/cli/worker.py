"""``xserve worker``: a Celery worker for explanation jobs.

Options Celery's own ``celery worker`` takes (``-E``, ``--pool``,
``--max-tasks-per-child``, ``--queues``, ``--hostname``, …) are passed through
to it, after xserve's defaults, so they override them. The same application is
``celery -A xserve.jobs.celery_app``, for ``inspect``, ``status`` and Flower.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from xserve.cli.options import models_dir_option

__all__ = ["celery_argv", "worker"]


def celery_argv(
    queue: str, loglevel: str, concurrency: int | None, passed: tuple[str, ...]
) -> list[str]:
    """The ``celery worker`` arguments: xserve's defaults first, so that the caller's own
    (``passed``) win where both name an option (Celery keeps the last)."""
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--queues={queue}",
        "--pool=prefork",
        "--hostname=xserve@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    return [*argv, *passed]


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True},
    epilog=(
        "Any other option is Celery's (celery worker --help), e.g. -E, --pool=solo, "
        "--max-tasks-per-child=50, --queues=Q, --hostname=NAME@%h, --autoscale=8,2."
    ),
)
@click.option("--concurrency", type=click.IntRange(min=1), help="Job processes; default: cores.")
@click.option("--loglevel", default="info", show_default=True)
@models_dir_option
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    concurrency: int | None, loglevel: str, models_dir: Path | None, celery_args: tuple[str, ...]
) -> None:
    """Run a Celery worker for explanation jobs (needs XSERVE_BROKER_URL).

    The worker is named xserve@HOSTNAME (--hostname overrides), so a probe can ping it:
    celery -A xserve.jobs.celery_app inspect ping -d xserve@$HOSTNAME
    """
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

    argv = celery_argv(settings.job_queue, loglevel, concurrency, celery_args)
    make_celery(settings).worker_main(argv)
