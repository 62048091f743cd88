"""The ``xserve`` command: the group, and one module per command (group) added to it.

Each command imports what it runs only when it runs: ``xserve --help`` stays fast.
"""

from __future__ import annotations

import click

from xserve.cli.audit import audit
from xserve.cli.deploy import deploy
from xserve.cli.keys import keys
from xserve.cli.outcomes import outcomes
from xserve.cli.precompute import precompute
from xserve.cli.predict import predict
from xserve.cli.promote import promote
from xserve.cli.report import report
from xserve.cli.serve import serve
from xserve.cli.sync import sync
from xserve.cli.worker import worker

__all__ = ["main"]


@click.group()
@click.version_option(package_name="xserve")
def main() -> None:
    """xserve: explainable model serving."""


for command in (
    serve, deploy, promote, predict, worker, precompute, audit, keys, outcomes, sync, report
):  # fmt: skip
    main.add_command(command)
