"""The Debian releases mailforge deploys to and tests on, and the Postfix each one ships.

A host's release decides which Postfix parameters exist on it (`postfix_parameters`) and which
lab image its container starts from (`mailforge-lab/<codename>:latest`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

# What topology.yml may say in debian_release.
Codename = Literal["trixie", "bookworm"]


@dataclass(frozen=True)
class DebianRelease:
    codename: str  # what the inventory says, e.g. trixie
    version: str  # Debian's number, e.g. 13
    postfix: str  # the Postfix version Debian ships, major.minor

    def __str__(self) -> str:
        return f"{self.codename} (Debian {self.version}, Postfix {self.postfix})"


# Newest first; the first is the default of `debian_release` in topology.yml.
RELEASES: dict[Codename, DebianRelease] = {
    "trixie": DebianRelease("trixie", "13", "3.10"),
    "bookworm": DebianRelease("bookworm", "12", "3.7"),
}
DEFAULT_RELEASE: Codename = "trixie"
assert list(RELEASES) == list(get_args(Codename)) and DEFAULT_RELEASE == next(iter(RELEASES))
