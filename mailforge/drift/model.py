"""The words drift speaks in: an item's status, the item, what a host should be.

Kept apart from `drift/__init__.py` so that the survey and the comparison can use them without
importing the package that imports them (no import cycle); the package re-exports every name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MailforgeError

IN_SYNC, DRIFTED, MISSING, UNEXPECTED = "in sync", "drifted", "missing", "unexpected"


class DriftError(MailforgeError):
    """drift could not run: a host unreachable, or its state could not be read."""


@dataclass
class Item:
    """One thing on one host, compared: a package, a service, a parameter, a file, a ruleset."""

    host: str
    kind: str  # package, service, instance, main.cf, master.cf, map, file, firewall, tls file
    name: str
    status: str
    instance: str | None = None  # the Postfix config directory a main.cf/master.cf/map item belongs to
    desired: str | None = None
    live: str | None = None
    detail: str = ""
    diff: str = ""

    @property
    def label(self) -> str:
        """How a table names the item: kind and name, and the instance for a parameter or service."""
        return f"{self.kind} {self.name}" + (f" ({self.instance})" if self.instance and self.kind in ("main.cf", "master.cf") else "")


@dataclass
class Desired:
    """What one host should be, from the rendered tree."""

    host: str
    group: str
    files: dict[str, dict]  # the manifest's entries: path -> {sha256, mode, owner, group, action, ...}
    directory: Path  # render_dir/host
    packages: list[str]
    tls: dict[str, str] = field(default_factory=dict)  # a shipped TLS file's host path -> sha256 of what was shipped

    @property
    def instances(self) -> list[str]:
        """The Postfix config directories rendered for the host."""
        return sorted({f["config_directory"] for f in self.files.values() if f.get("config_directory")})

    def local(self, path: str) -> Path:
        """Where the rendered copy of the host's `path` is on this machine."""
        return self.directory / path.lstrip("/")
