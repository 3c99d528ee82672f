"""The ``arcoforge`` command line."""

from arcoforge.cli.main import main

__all__ = ["main"]
