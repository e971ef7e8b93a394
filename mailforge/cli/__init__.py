"""The mailforge command line: one module per command group, each parsing, calling the library and
printing; the only package that imports Typer or Rich or decides exit codes (see `common`)."""

from __future__ import annotations

import sys

from . import deploy, dns, drift, lab, maps, render, validate, verify  # noqa: F401 - each registers its commands
from .app import app

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        sys.exit(exc.code)
