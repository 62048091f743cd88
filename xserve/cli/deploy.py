"""``xserve deploy``: add an artifact as the next version of a model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from xserve.cli.options import models_dir_option

__all__ = ["deploy", "gate_check"]


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
@click.option(
    "--manifest",
    "manifest_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A YAML file of manifest keys that override the inherited ones.",
)
@click.option(
    "--no-inherit", is_flag=True, help="Start from a bare manifest, not the serving version's."
)
@click.option(
    "--evaluate",
    "holdout",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A labelled holdout (CSV/Parquet): score the new and the serving version on it.",
)
@click.option("--label", help="The holdout's label column (with --evaluate).")
@click.option(
    "--gate",
    "gates",
    multiple=True,
    help="A rule on new minus serving, e.g. 'auc>=-0.005' (repeatable; with --evaluate).",
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
    manifest_file: Path | None,
    no_inherit: bool,
    holdout: Path | None,
    label: str | None,
    gates: tuple[str, ...],
    models_dir: Path | None,
) -> None:
    """Add ARTIFACT as the next version of model NAME, with its manifest.

    The manifest inherits what the serving version's says the model means (features with
    their types, descriptions and personal flags, reason texts, classes, the adverse
    class, limitations), and its background unless --background is given; --manifest
    overrides keys, --no-inherit starts bare. The version must get an exact inline
    explainer (for predict?explain=true) unless --allow-no-inline is given.

    With --evaluate HOLDOUT --label COL the new and the serving version are scored on
    the same holdout (metrics, differences, explanation stability); a --gate that fails
    exits 1 and leaves the new version out. Otherwise the evaluation is written to the
    version folder as evaluation.json: its baseline for concept drift.
    """
    import yaml

    from xserve.errors import InvalidInput, XServeError
    from xserve.repository.deploy import deploy_artifact, serving_version
    from xserve.settings import Settings

    if (holdout is None) != (label is None) or (gates and holdout is None):
        raise click.UsageError("--evaluate and --label go together; --gate needs both")
    root = models_dir or Settings().models_dir
    labels = [c.strip() for c in classes.split(",")] if classes else None
    try:
        overrides = yaml.safe_load(manifest_file.read_text()) if manifest_file else None
        if overrides is not None and not isinstance(overrides, dict):
            raise InvalidInput(f"--manifest {manifest_file}: expected a mapping of keys")
        serving = None if no_inherit and holdout is None else serving_version(root, name)
        check = None
        if holdout is not None and label is not None:
            check = gate_check(serving, holdout, label, gates)
        deployed = deploy_artifact(
            root,
            name,
            artifact,
            background,
            flavor,
            labels,
            trusted,
            allow_no_inline,
            serving=None if no_inherit else serving,
            manifest=overrides,
            check=check,
        )
    except XServeError as exc:
        raise click.ClickException(exc.message) from None
    folder = deployed.folder
    click.echo(f"deployed {name} version {folder.name} at {folder}")
    if deployed.inline is None:
        click.echo(f"warning: {deployed.summary()}", err=True)
    else:
        click.echo(deployed.summary())


def gate_check(serving: Any, holdout: Path, label: str, gates: Sequence[str]) -> Any:
    """The check that evaluates a version against ``serving`` on ``holdout``, prints the
    figures, and refuses the version (GateFailed) or writes its evaluation.json."""
    from xserve.outcomes.evaluation import GateFailed, evaluate, parse_rule

    rules = [parse_rule(g) for g in gates]

    def check(model: Any, write: bool = True) -> None:
        result = evaluate(model, serving, holdout, label, rules)
        against = f" against serving version {serving.version}" if serving is not None else ""
        click.echo(f"evaluation on {holdout.name} ({result.holdout['rows']} rows){against}:")
        for metric, figure in result.metrics.items():
            low, high = figure["ci95"]
            diff = result.differences.get(metric)
            change = f", {diff:+.4f} vs serving" if diff is not None else ""
            click.echo(f"  {metric}: {_fmt(figure['value'])} [{_fmt(low)}, {_fmt(high)}]{change}")
        if result.stability is not None:
            click.echo(
                f"  explanation stability (Spearman, mean |attribution|): {result.stability:.3f}"
            )
        failed = [r["rule"] for r in result.rules if not r["holds"]]
        if failed:
            raise GateFailed(f"the gate failed ({', '.join(failed)}): the version is not deployed")
        if write:
            result.write(model.path)

    return check


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
