"""The whole log of an Ansible run that failed, kept where the admin can read it afterwards.

A failed deploy prints one line per failed task; the log says everything Ansible said (every task,
every host, with -v what it ran). It is kept in $XDG_STATE_HOME/mailforge/runs (by default
~/.local/state/mailforge/runs) as <UTC time>-<command>.log, readable by its owner only: it can
hold what the hosts printed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def runs_directory() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "mailforge" / "runs"


def keep(text: str, command: str) -> Path:
    """Write `text` to a new file of the runs directory (mode 0600, never over an older log)."""
    directory = runs_directory()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = command.replace(" ", "-")
    for n in range(1000):
        path = directory / (f"{stamp}-{name}.log" if n == 0 else f"{stamp}-{name}-{n}.log")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        return path
    raise FileExistsError(f"{directory}: no free name for {stamp}-{name}.log")
