"""``xserve keys add``: API keys with roles, stored as digests only."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """API keys (stored as digests only)."""


@keys.command()
@click.argument("name")
@click.option("--roles", required=True, help="Comma-separated: predict, explain, audit, admin.")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keys file; default XSERVE_API_KEYS, else ./keys.txt.",
)
def add(name: str, roles: str, path: Path | None) -> None:
    """Create a key for caller NAME: print it once, store only its digest."""
    from xserve.security.keys import KeyFileError, add_key
    from xserve.settings import Settings

    target = path or Settings().api_keys or Path("keys.txt")
    try:
        key = add_key(target, name, roles)
    except (KeyFileError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"added a key for {name!r} to {target}; it is shown only this once:", err=True)
    click.echo(key)
