"""``xserve sync``: follow an MLflow registry alias (needs the ``mlflow`` extra)."""

from __future__ import annotations

from pathlib import Path

import click

from xserve.cli.options import models_dir_option

__all__ = ["sync"]


@click.command()
@click.argument("name")
@click.option("--alias", required=True, help="Registry alias to follow, e.g. champion.")
@models_dir_option
@click.option("--tracking-uri", help="MLflow tracking/registry URI; default MLFLOW_TRACKING_URI.")
def sync(name: str, alias: str, models_dir: Path | None, tracking_uri: str | None) -> None:
    """Deploy what registered model NAME's alias points to, unless it already serves.

    The newest version of NAME in the repository is compared with models:/NAME@ALIAS by
    the MLflow provenance in its manifest; a difference deploys the alias's version as
    the next version. Run it from cron or a CI job to keep the repository on the alias.
    """
    try:
        import mlflow
    except ImportError:
        raise click.ClickException(
            "xserve sync needs mlflow: pip install 'xserve[mlflow]'"
        ) from None
    from xserve.errors import XServeError
    from xserve.integrations.mlflow.deploy import sync_alias
    from xserve.settings import Settings

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    root = models_dir or Settings().models_dir
    try:
        source, folder = sync_alias(root, name, alias)
    except XServeError as exc:
        raise click.ClickException(exc.message) from None
    target = f"models:/{name}@{alias} is version {source.version}"
    if folder is None:
        click.echo(f"{target}, already the newest version of {name}: nothing to do")
    else:
        click.echo(f"{target}: deployed as {name} version {folder.name} at {folder}")
