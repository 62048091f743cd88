"""``xserve keys add|signing-key``: API keys with roles (stored as digests only), and the
key pair that signs audit checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """API keys (stored as digests only), and the audit checkpoint signing key."""


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


@keys.command("signing-key")
@click.option(
    "--out",
    "prefix",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key file; the public key goes to the same name with .pub added.",
)
def signing_key(prefix: Path) -> None:
    """Make an Ed25519 key pair that signs audit checkpoints: PREFIX (private, for
    XSERVE_AUDIT_SIGNING_KEY) and PREFIX.pub (public, for the auditors). Both 0600; an
    existing file is never overwritten."""
    from xserve.security.signing import SigningKeyError, write_key_pair

    try:
        private, public, key_id = write_key_pair(prefix)
    except (SigningKeyError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"private key: {private} (keep it on the server only)", err=True)
    click.echo(f"public key:  {public} (give it to whoever verifies)", err=True)
    click.echo(key_id)
