"""Is the file on a host the rendered one? One shell function asks, one parser reads the answer.

`maps` (its survey of the live maps), `drift` (every rendered file) and, through drift, `verify`
ask a host the same question about an installed file: its sha256, mode, owner and group, and, for
a table postmap compiles, whether its database is there and not older than the table (a map
edited without postmap has a stale database). Written once here, so the three cannot disagree.

The function is POSIX sh and prints one line per file:

    TYPE SHA256 MODE OWNER GROUP DB PATH

TYPE is `f` (a regular file), `l` (a symbolic link to a regular file: sha256 and stat are the
target's) or `-` (absent, or not a regular file; SHA256 MODE OWNER GROUP are then `-`). DB is `1`
(the database is current), `0` (missing, or older than the file) or `-` (the file is not compiled).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

FUNCTION = "mf_installed"
SHELL_FUNCTION = (
    f'{FUNCTION}() {{ if [ -f "$1" ]; then sha=$(sha256sum < "$1" | cut -d" " -f1); st=$(stat -L -c "%a %U %G" -- "$1"); '
    'if [ -L "$1" ]; then t=l; else t=f; fi; else t=- sha=- st="- - -"; fi; '
    'if [ -z "$2" ]; then db=-; elif [ -f "$2" ] && [ ! "$1" -nt "$2" ]; then db=1; else db=0; fi; '
    'printf "%s %s %s %s %s\\n" "$t" "$sha" "$st" "$db" "$1"; }'
)

CONTENT_DIFFERS = "content differs from the rendered file"
DATABASE_STALE = "database missing or older than the map: edited without postmap"


@dataclass(frozen=True)
class Installed:
    """What a host says about one installed file."""

    path: str
    sha256: str | None  # None: absent, or not a regular file
    mode: str | None  # as stat prints it (644), None when absent
    owner: str | None
    group: str | None
    database_current: bool | None  # None: the file is not compiled
    symlink: bool = False

    @property
    def stat(self) -> str:
        """Mode, owner and group in the form `expected_stat` gives the rendered ones."""
        return " ".join(x or "-" for x in (self.mode, self.owner, self.group))


def check_command(path: str, database: str | None = None) -> str:
    """The shell command (after SHELL_FUNCTION) that reports `path`; `database` is the file postmap
    makes for it (`render.files.database_path`), None for a file that is not compiled."""
    return f"{FUNCTION} {shlex.quote(path)} {shlex.quote(database or '')}"


def script(files: Iterable[tuple[str, str | None]]) -> str:
    """A whole script reporting every (path, database) pair, one line each: one round trip per host."""
    return "\n".join([SHELL_FUNCTION, *(check_command(path, database) for path, database in files)]) + "\n"


def parse_line(line: str) -> Installed | None:
    """One line of the function's output, or None for a line that is not one."""
    parts = line.split(" ", 6)
    if len(parts) != 7 or parts[0] not in ("f", "l", "-") or parts[5] not in ("0", "1", "-"):
        return None
    kind, sha, mode, owner, group, db, path = parts
    present = kind != "-"
    return Installed(
        path,
        sha if present else None,
        mode if present else None,
        owner if present else None,
        group if present else None,
        None if db == "-" else db == "1",
        symlink=kind == "l",
    )


def parse(text: str) -> dict[str, Installed]:
    """The function's output for many files -> {path: Installed}; other lines are ignored."""
    result = {}
    for line in text.splitlines():
        installed = parse_line(line)
        if installed is not None:
            result[installed.path] = installed
    return result


def expected_stat(mode: str, owner: str, group: str) -> str:
    """A manifest's mode ("0644"), owner and group as `Installed.stat` shows the live ones."""
    return f"{int(mode, 8):o} {owner} {group}"


def mismatches(live: Installed, entry: dict, database: str | None) -> list[str]:
    """Why a present file is not the rendered one (empty: it is): its bytes, its mode/owner/group
    against the manifest entry, and its database when `database` says it is compiled."""
    problems = []
    if live.sha256 != entry["sha256"]:
        problems.append(CONTENT_DIFFERS)
    want = expected_stat(entry["mode"], entry["owner"], entry["group"])
    if live.stat != want:
        problems.append(f"mode/owner/group {live.stat}, rendered {want}")
    if database is not None and live.database_current is not True:
        problems.append(DATABASE_STALE)
    return problems


def map_entries(text: bytes | str) -> set[bytes]:
    """The entry lines of a map as a set. Comment lines are found from the few '#' in the text, not
    by testing a million lines one by one."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    lines = set(data.split(b"\n"))
    lines.discard(b"")
    hit = data.find(b"#")
    while hit != -1:
        begin = data.rfind(b"\n", 0, hit) + 1
        end = data.find(b"\n", hit)
        end = len(data) if end == -1 else end
        line = data[begin:end]
        if line.lstrip().startswith(b"#"):
            lines.discard(line)
        hit = data.find(b"#", end)
    return lines
