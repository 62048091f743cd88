"""``xserve report``: compliance reports and decision notices from the audit log."""

from __future__ import annotations

from pathlib import Path

import click

from xserve.cli.options import models_dir_option

__all__ = ["report"]


@click.command()
@click.argument("model", required=False)
@click.option("--version", "version", help="Model version; default the serving one.")
@click.option("--since", help="From this date or time (ISO 8601, UTC unless an offset is given).")
@click.option("--until", help="Before this time; a bare date includes that day.")
@click.option(
    "--decision",
    "request_id",
    metavar="REQUEST_ID",
    help="Write the notice of one decision instead of a report.",
)
@click.option(
    "--instance",
    type=click.IntRange(min=0),
    help="With --decision: only this instance of a multi-instance request (from 0).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["html", "pdf"]), default="html", show_default=True
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("compliance_reports"),
    show_default=True,
)
@models_dir_option
@click.option("--audit-url", help="Audit store URL; overrides XSERVE_AUDIT_URL.")
def report(
    model: str | None,
    version: str | None,
    since: str | None,
    until: str | None,
    request_id: str | None,
    instance: int | None,
    fmt: str,
    out_dir: Path,
    models_dir: Path | None,
    audit_url: str | None,
) -> None:
    """A compliance report on MODEL (model card, importance, reason codes, fidelity, drift,
    audit verification), or with --decision the notice of one decision."""
    from xserve.errors import XServeError
    from xserve.reports.run import Format, write_notice, write_report
    from xserve.settings import Settings

    settings = Settings()
    root = models_dir or settings.models_dir
    url = audit_url or settings.audit_url
    if (model is None) == (request_id is None):
        raise click.UsageError("give either MODEL or --decision REQUEST_ID")
    fmt_: Format = "pdf" if fmt == "pdf" else "html"
    try:
        if request_id is not None:
            path = write_notice(root, url, request_id, fmt_, out_dir, instance)
        else:
            assert model is not None
            path = write_report(root, url, model, version, since, until, fmt_, out_dir)
    except XServeError as exc:
        raise click.ClickException(exc.message) from None
    except ValueError as exc:  # a bad XSERVE_AUDIT_URL
        raise click.ClickException(str(exc)) from None
    click.echo(str(path))
