"""Shell commands on the cluster's hosts, bytes in and bytes out: over SSH, or `docker exec` for the lab.

`maps`, `drift` and `verify` need more than Ansible's per-task round trips: a
no-change map run must finish in seconds, and a map push streams megabytes on
stdin. Each host gets one `sh -c SCRIPT` per call, with the topology's
connection settings (user, port, key, become) or the lab container's name; a
host named on the command line (verify's `--probe-from`) by a spec,
`ssh://user@host[:port]` or `docker://name`.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from .errors import MailforgeError


class HostUnreachable(MailforgeError):
    """A host could not be reached at all (not: a command failed on it)."""


class ShellSpecError(MailforgeError):
    """A host spec given on the command line is not `ssh://user@host[:port]` or `docker://name`."""


@dataclass
class HostShell:
    """One host, reached by running a shell there: `argv` (ssh ..., docker exec -i NAME) + `sh -c SCRIPT`."""

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
            result = subprocess.run([*self.argv, *command], input=stdin if stdin is not None else b"", capture_output=True, timeout=timeout, env=self.env)
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
        return result.returncode in (125, 126, 127) and (
            "no such container" in stderr or "is not running" in stderr or "error" in stderr and "container" in stderr
        )


def docker_argv(container: str) -> list[str]:
    """A shell in a container of the engine the docker CLI reaches (`sh -c SCRIPT` is appended)."""
    return ["docker", "exec", "-i", container]


def ssh_argv(target: str, user: str | None = None, port: int | str | None = None, key: str | None = None, connect_timeout: int = 10) -> list[str]:
    """ssh in batch mode (a key or an agent, never a password prompt) to `target`."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}"]
    if port:
        argv += ["-p", str(port)]
    if key:
        argv += ["-i", str(key)]
    argv.append(f"{user}@{target}" if user else target)
    return argv


def shell_from_spec(spec: str, name: str = "probe", env: dict[str, str] | None = None, connect_timeout: int = 10) -> HostShell:
    """A host named on the command line: `ssh://[user@]host[:port]` (an IPv6 address in brackets;
    `?ssh_identity_file=PATH` names a key) or `docker://container` (run with `env`, the engine's)."""
    usage = "expected ssh://[user@]host[:port] or docker://container"
    try:
        parts = urlsplit(spec)
        port = parts.port if parts.scheme == "ssh" else None
    except ValueError as exc:
        raise ShellSpecError(f"bad host spec {spec!r}: {exc}; {usage}") from None
    if parts.scheme == "docker":
        container = parts.netloc
        if not container or container.startswith("-") or parts.path not in ("", "/") or parts.query or any(c in container for c in "@: "):
            raise ShellSpecError(f"bad host spec {spec!r}: name one container, as docker://NAME")
        return HostShell(name, docker_argv(container), env=env)
    if parts.scheme == "ssh":
        if (
            not parts.hostname
            or parts.path not in ("", "/")
            or parts.password is not None
            or port == 0
            or parts.hostname.startswith("-")
            or (parts.username or "").startswith("-")
        ):
            raise ShellSpecError(f"bad host spec {spec!r}: {usage}")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"ssh_identity_file"})
        if unknown or any(len(v) != 1 or not v[0] for v in query.values()):
            raise ShellSpecError(f"bad host spec {spec!r}: the only option is ?ssh_identity_file=PATH" + (f", not {', '.join(unknown)}" if unknown else ""))
        key = query.get("ssh_identity_file", [None])[0]
        argv = ssh_argv(parts.hostname, parts.username, port, key, connect_timeout)
        return HostShell(name, argv, remote_command_is_string=True)
    raise ShellSpecError(f"bad host spec {spec!r}: {usage}")
