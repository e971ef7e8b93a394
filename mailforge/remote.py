"""Shell commands on the cluster's hosts, bytes in and bytes out: over SSH, or `docker exec` for the lab.

`maps` and `drift` need more than Ansible's per-task round trips: a no-change
map run must finish in seconds, and a map push streams megabytes on stdin.
Each host gets one `sh -c SCRIPT` per call, with the topology's connection
settings (user, port, key, become) or the lab container's name.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass

from .errors import MailforgeError


class HostUnreachable(MailforgeError):
    """A host could not be reached at all (not: a command failed on it)."""


@dataclass
class HostShell:
    name: str
    argv: list[str]  # the command that runs a shell on the host; `sh -c SCRIPT` is appended
    env: dict[str, str] | None = None
    remote_command_is_string: bool = False  # ssh joins its arguments into one remote command line
    become: bool = False

    def run(self, script: str, stdin: bytes | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        """Run `script` with /bin/sh on the host; returns the completed process (bytes). Unreachable raises."""
        command = ["sh", "-c", script]
        if self.become:
            command = ["sudo", "-n", *command]
        if self.remote_command_is_string:
            command = [shlex.join(command)]
        try:
            result = subprocess.run([*self.argv, *command], input=stdin if stdin is not None else b"", capture_output=True,
                                    timeout=timeout, env=self.env)
        except subprocess.TimeoutExpired:
            raise HostUnreachable(f"{self.name}: no answer within {timeout:.0f} s") from None
        except FileNotFoundError as exc:
            raise HostUnreachable(f"{self.name}: {exc.filename} is not installed on this machine") from None
        if self._unreachable(result):
            message = result.stderr.decode(errors="replace").strip().splitlines()
            raise HostUnreachable(f"cannot reach {self.name}: {message[-1] if message else f'exit {result.returncode}'}")
        return result

    def _unreachable(self, result: subprocess.CompletedProcess) -> bool:
        if self.argv[0] == "ssh":
            return result.returncode == 255
        stderr = result.stderr.decode(errors="replace").lower()
        return result.returncode in (125, 126, 127) and ("no such container" in stderr or "is not running" in stderr
                                                         or "error" in stderr and "container" in stderr)
