"""Problems found in an inventory, reported all at once with file, line and key.

Library code only raises; `cli.py` alone turns these into messages and exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in an inventory, where a person can find it."""

    file: Path
    line: int | None
    column: int | None
    key: str
    message: str
    expected: str = ""

    def __str__(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        if self.expected:
            text += f" (expected {self.expected})"
        return text


class MailforgeError(Exception):
    """Base of every error mailforge reports to a person."""


class InventoryError(MailforgeError):
    """The inventory cannot be used: carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None):
        self.problems = problems
        self.warnings = warnings or []
        super().__init__("\n".join(str(p) for p in problems))


class OutputError(MailforgeError):
    """The rendered tree could not be written where asked."""
