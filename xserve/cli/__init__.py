"""The ``xserve`` command, one module per command group."""

from xserve.cli.main import main

__all__ = ["main"]
