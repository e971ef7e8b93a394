"""The mailforge command line: one module per command group, each parsing, calling the library and
printing; the only package that imports Typer or Rich or decides exit codes (see `common`)."""

from __future__ import annotations

import sys

from . import certs, deploy, dkim, dns, drift, graph, lab, maps, queue, render, status, validate, verify  # noqa: F401 - each registers its commands
from .app import app

__all__ = ["app", "main"]

# `mailforge --help` lists the commands in the order a cluster's life uses them.
_ORDER = ["validate", "render", "certs", "deploy", "verify", "status", "maps", "drift", "graph", "schema", "rotation_step", "tls_stage"]
app.registered_commands.sort(key=lambda c: _ORDER.index(getattr(c.callback, "__name__", "")))


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        sys.exit(exc.code)
