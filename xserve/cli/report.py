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
@click.option(
    "--segment-values",
    "segment_values",
    multiple=True,
    metavar="NAME=V1,V2,...",
    help="Name the values of an outcome segment in the fair-lending tables (records keep "
    "them only as digests); other values are shown as 'other #k'. Repeatable.",
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
    segment_values: tuple[str, ...],
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
            labels = _segment_labels(segment_values, url, settings.audit_digest_key)
            path = write_report(root, url, model, version, since, until, fmt_, out_dir, labels)
    except XServeError as exc:
        raise click.ClickException(exc.message) from None
    except ValueError as exc:  # a bad XSERVE_AUDIT_URL
        raise click.ClickException(str(exc)) from None
    click.echo(str(path))


def _segment_labels(given: tuple[str, ...], url: str, key: str | None) -> dict[str, str]:
    """digest -> value for each value named in ``--segment-values NAME=V1,V2``: digested as
    the records digest them (a number as a number, and as text)."""
    if not given:
        return {}
    from xserve.audit.entry import personal_digest
    from xserve.audit.factory import digest_key_for

    secret = digest_key_for(url, key).encode()
    labels: dict[str, str] = {}
    for item in given:
        _, sep, values = item.partition("=")
        if not sep or not values:
            raise click.UsageError(f"--segment-values {item!r}: expected NAME=V1,V2,...")
        for value in (v.strip() for v in values.split(",")):
            forms: list[object] = [value]
            try:
                number = float(value)
                forms.append(int(number) if number.is_integer() else number)
            except ValueError:
                pass
            for form in forms:
                labels[personal_digest(form, secret)] = value
    return labels
