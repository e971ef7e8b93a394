"""Graphviz's `dot` (Debian's graphviz package) turns `diagram.dot` text into a picture."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .errors import MailforgeError

FORMATS = {".svg": "svg", ".png": "png", ".dot": "dot", ".gv": "dot"}


class DrawingError(MailforgeError):
    """The picture could not be drawn."""


def format_of(path: Path) -> str:
    """The picture format a file name asks for, by its suffix."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DrawingError(
            f"cannot tell what to draw from the name {str(path)!r}: end it in .svg or .png (a picture, drawn by Graphviz), or .dot (the DOT text)"
        )
    return fmt


def draw(dot_text: str, fmt: str) -> bytes:
    """Run `dot -T<fmt>` on the text; a missing `dot` or one that fails is a DrawingError that says what to do."""
    if fmt == "dot":
        return dot_text.encode("utf-8")
    binary = shutil.which("dot")
    if binary is None:
        raise DrawingError(
            f"drawing {fmt.upper()} needs Graphviz's `dot`, which is not installed (not on PATH): install Debian's graphviz package "
            "(apt-get install graphviz), or write the DOT text with -o FILE.dot"
        )
    try:
        result = subprocess.run([binary, f"-T{fmt}"], input=dot_text.encode("utf-8"), capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DrawingError(f"Graphviz's dot could not run: {exc}") from None
    if result.returncode != 0 or not result.stdout:
        raise DrawingError(f"Graphviz's dot failed: {result.stderr.decode('utf-8', 'replace').strip() or f'exit {result.returncode}'}")
    return result.stdout
