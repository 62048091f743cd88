"""``xserve deploy``: add an artifact as the next version of a model."""

from __future__ import annotations

from pathlib import Path

import click

from xserve.cli.options import models_dir_option

__all__ = ["deploy"]


@click.command()
@click.argument("artifact", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="Model name (folder under the repository).")
@click.option("--background", type=click.Path(exists=True, path_type=Path))
@click.option("--flavor", help="Runtime flavor; inferred from the artifact when omitted.")
@click.option("--classes", help="Comma-separated class labels, in the model's output order.")
@click.option("--trusted", is_flag=True, help="Allow pickle-based artifacts.")
@click.option(
    "--allow-no-inline",
    is_flag=True,
    help="Deploy even if the version gets no inline explainer (explain=true would answer "
    "422; explanations only as jobs). Without it, such a deploy fails (exit status 1).",
)
@models_dir_option
def deploy(
    artifact: Path,
    name: str,
    background: Path | None,
    flavor: str | None,
    classes: str | None,
    trusted: bool,
    allow_no_inline: bool,
    models_dir: Path | None,
) -> None:
    """Add ARTIFACT as the next version of model NAME, with its manifest.

    The version must get an exact inline explainer (for predict?explain=true) unless
    --allow-no-inline is given; the output says which one it got, or why none.
    """
    from xserve.errors import XServeError
    from xserve.repository.deploy import deploy_artifact
    from xserve.settings import Settings

    root = models_dir or Settings().models_dir
    labels = [c.strip() for c in classes.split(",")] if classes else None
    try:
        deployed = deploy_artifact(
            root, name, artifact, background, flavor, labels, trusted, allow_no_inline
        )
    except XServeError as exc:
        raise click.ClickException(exc.message) from None
    folder = deployed.folder
    click.echo(f"deployed {name} version {folder.name} at {folder}")
    if deployed.inline is None:
        click.echo(f"warning: {deployed.summary()}", err=True)
    else:
        click.echo(deployed.summary())
