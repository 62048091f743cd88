"""``xserve promote``: pin a model's traffic to a version, through its gate if it has one."""

from __future__ import annotations

from pathlib import Path

import click

from xserve.cli.options import models_dir_option

__all__ = ["promote"]


@click.command()
@click.argument("model")
@click.option("--version", "version", required=True, help="The version to serve.")
@models_dir_option
def promote(model: str, version: str, models_dir: Path | None) -> None:
    """Serve VERSION of MODEL (deployment.yaml: policy pinned). When deployment.yaml names a
    gate (holdout, label, rules), the version and the one serving now are scored on the
    holdout first, and a rule that fails leaves the policy as it was (exit 1)."""
    from xserve.cli.deploy import gate_check
    from xserve.errors import XServeError
    from xserve.explainers.attach import attach_inline
    from xserve.repository.repository import ModelRepository
    from xserve.repository.traffic import DEPLOYMENT_NAME, LATEST, load_deployment, save_deployment
    from xserve.settings import Settings

    root = models_dir or Settings().models_dir
    model_dir = root / model
    path = model_dir / DEPLOYMENT_NAME
    try:
        deployment = load_deployment(path) if path.exists() else LATEST
        repository = ModelRepository(root, on_load=[attach_inline])
        repository.scan(only=model)
        candidate = repository.get(model, version)
        serving = repository.get(model)
        if serving.version == version and deployment.policy == "pinned":
            click.echo(f"{model} version {version} is already pinned")
            return
        gate = deployment.gate
        if gate is not None:
            check = gate_check(serving, gate.holdout_path(model_dir), gate.label, gate.rules)
            check(candidate, write=not (candidate.path / "evaluation.json").exists())
        shadow = None if deployment.shadow == version else deployment.shadow
        update = {"policy": "pinned", "pinned": version, "shadow": shadow}
        save_deployment(model_dir, deployment.model_copy(update=update))
    except XServeError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"{model}: version {version} serves (policy pinned; was {serving.version})")
