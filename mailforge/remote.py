"""Shell commands on the cluster's hosts, bytes in and bytes out: over SSH, or `docker exec` for the lab.

`maps`, `drift` and `verify` need more than Ansible's per-task round trips: a
no-change map run must finish in seconds, and a map push streams megabytes on
stdin. Each host gets one `sh -c SCRIPT` per call, with the topology's
connection settings (user, port, key, become) or the lab container's name; a
host named on the command line (verify's `--probe-from`) by a spec,
`ssh://user@host[:port]` or `docker://name`.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from .errors import MailforgeError

_SUDO_REFUSED = re.compile(r"^sudo: .*(password is required|not in the sudoers|may not run sudo|not allowed to execute)", re.M)


_MASTER_GONE = re.compile(
    r"mux_client|master (?:is )?(?:gone|exit)|Control socket connect|ControlSocket .* already exists|Broken pipe|Connection closed by|Session open refused|multiplex",
    re.I,
)


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

    def run(self, script: str, stdin: bytes | None = None, timeout: float = 900, become: bool | None = None) -> subprocess.CompletedProcess:
        """Run `script` with /bin/sh on the host (as root with sudo when the host is reached with
        become); returns the completed process (bytes). Unreachable, or sudo refused, raises."""
        command = ["sh", "-c", script]
        become = self.become if become is None else become
        if become:
            command = ["sudo", "-n", *command]
        if self.remote_command_is_string:
            command = [shlex.join(command)]
        for attempt in (1, 2):
            try:
                result = subprocess.run([*self.argv, *command], input=stdin if stdin is not None else b"", capture_output=True, timeout=timeout, env=self.env)
            except subprocess.TimeoutExpired:
                raise HostUnreachable(f"{self.name}: no answer within {timeout:.0f} s") from None
            except FileNotFoundError as exc:
                raise HostUnreachable(f"{self.name}: {exc.filename} is not installed on this machine") from None
            # ssh's shared master connection can end (ControlPersist) just as a command is handed to it:
            # that command fails with 255 though the host answers. Asked once more, with a fresh connection.
            if attempt == 1 and self._unreachable(result) and _MASTER_GONE.search(result.stderr.decode(errors="replace")):
                time.sleep(0.5)
                continue
            break
        if self._unreachable(result):
            raise HostUnreachable(f"cannot reach {self.name}: {self.why_unreachable(result.stderr.decode(errors='replace'), result.returncode)}")
        if become and result.returncode == 1 and _SUDO_REFUSED.search(result.stderr.decode(errors="replace")):
            raise HostUnreachable(
                f"{self.name}: {self.login} may not use sudo without a password ({result.stderr.decode(errors='replace').strip().splitlines()[-1]}); "
                f"mailforge runs its commands as root with `sudo -n`: give {self.login} a sudoers rule such as "
                f"`{self.login.split('@')[0]} ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/, or connect as a user that has one"
            )
        return result

    @property
    def login(self) -> str:
        """user@host as ssh is asked to reach it (the argv's last word), or the container's name."""
        return self.argv[-1]

    def why_unreachable(self, stderr: str, returncode: int) -> str:
        """What went wrong, in words that say what to do: ssh's own messages are terse and scattered."""
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit {returncode}"
        if self.argv[0] != "ssh":
            return last
        target = self.login.rsplit("@", 1)[-1]
        port = self.argv[self.argv.index("-p") + 1] if "-p" in self.argv else "22"
        known = self.option("UserKnownHostsFile") or "~/.ssh/known_hosts"
        keyed = f"[{target}]:{port}" if port != "22" else target
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "Host key for" in stderr and "has changed" in stderr:
            return (
                f"its SSH host key has CHANGED since it was recorded in {known}: nothing was done. If the host was rebuilt and you have "
                f"checked its new key's fingerprint out of band, remove the old one with `ssh-keygen -R '{keyed}' -f {known}` and accept the new one"
            )
        if "Host key verification failed" in stderr or "No ED25519 host key is known" in stderr or "host key is known for" in stderr:
            return (
                f"its SSH host key is not known (not in {known}): nothing was done. Check the key's fingerprint out of band, then accept it: "
                f"`ssh-keyscan -p {port} {target} >> {known}` (or connect once with ssh and answer yes)"
            )
        if "Permission denied" in stderr:
            key = self.argv[self.argv.index("-i") + 1] if "-i" in self.argv else "your ssh keys or agent"
            return f"{self.login} refused the login ({last}): the key ({key}) or the user is wrong; set connection.user / private_key_file"
        if "Connection refused" in stderr:
            return f"nothing accepts SSH on {target} port {port} ({last}): is sshd running, and is connection.port right?"
        if "Could not resolve hostname" in stderr or "Name or service not known" in stderr or "Temporary failure in name resolution" in stderr:
            return f"the name {target} does not resolve ({last}): fix the host's address or connection.host"
        if "timed out" in stderr:
            return f"no answer from {target} port {port} ({last}): a firewall, a wrong address, or the host is down"
        return last

    def option(self, name: str) -> str | None:
        """The value of an `-o Name=value` option in the ssh command line."""
        for word in self.argv:
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
        return None

    def _unreachable(self, result: subprocess.CompletedProcess) -> bool:
        if self.argv[0] == "ssh":
            return result.returncode == 255
        stderr = result.stderr.decode(errors="replace").lower()
        return result.returncode in (125, 126, 127) and (
            "no such container" in stderr or "is not running" in stderr or "error" in stderr and "container" in stderr
        )


def control_directory() -> str:
    """Where ssh keeps its master connections: Ansible's own directory (~/.ansible/cp, made 0700 as
    ssh insists), so a deploy and the commands after it share one connection per host."""
    import os

    path = os.path.expanduser("~/.ansible/cp")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def control_path(key: str | None, known_hosts: str | None) -> str:
    """ssh's ControlPath for connections made with this key and known_hosts file (%C: this machine, the
    host, port and user). A master connection skips the login and the host key check, so a command
    asked to use another key or another known_hosts file must never be handed one made with these."""
    import hashlib

    which = hashlib.sha256(f"{key or ''}\0{known_hosts or ''}".encode()).hexdigest()[:8]
    return f"{control_directory()}/mf-{which}-%C"


def close_master(argv: list[str]) -> None:
    """End ssh's master connection for the host `argv` reaches, if there is one (a lab host about to be
    replaced at the same address must not be reached through the old one's connection)."""
    if argv and argv[0] == "ssh":
        subprocess.run([*argv[:-1], "-O", "exit", argv[-1]], capture_output=True, timeout=30)


def docker_argv(container: str) -> list[str]:
    """A shell in a container of the engine the docker CLI reaches (`sh -c SCRIPT` is appended)."""
    return ["docker", "exec", "-i", container]


def ssh_argv(
    target: str,
    user: str | None = None,
    port: int | str | None = None,
    key: str | None = None,
    connect_timeout: int = 10,
    known_hosts: str | None = None,
) -> list[str]:
    """ssh in batch mode (a key or an agent, never a password prompt) to `target`, its host key checked
    against `known_hosts` (ssh's own file by default), whatever ~/.ssh/config says: a host whose key
    is unknown or changed is not talked to. One master connection per host, kept for a minute, so
    the many short commands of maps, drift and verify pay for one handshake."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}", "-o", "StrictHostKeyChecking=yes"]
    if known_hosts:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}"]
    argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_path(key, known_hosts)}", "-o", "ControlPersist=60"]
    if port:
        argv += ["-p", str(port)]
    if key:
        argv += ["-i", str(key)]
    argv.append(f"{user}@{target}" if user else target)
    return argv


def shell_from_spec(spec: str, name: str = "probe", env: dict[str, str] | None = None, connect_timeout: int = 10) -> HostShell:
    """A host named on the command line: `ssh://[user@]host[:port]` (an IPv6 address in brackets;
    `?ssh_identity_file=PATH` names a key, `known_hosts_file=PATH` the file its host key is checked against) or `docker://container` (run with `env`, the engine's)."""
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
        unknown = sorted(set(query) - {"ssh_identity_file", "known_hosts_file"})
        if unknown or any(len(v) != 1 or not v[0] for v in query.values()):
            raise ShellSpecError(
                f"bad host spec {spec!r}: the options are ?ssh_identity_file=PATH and &known_hosts_file=PATH"
                + (f", not {', '.join(unknown)}" if unknown else "")
            )
        key = query.get("ssh_identity_file", [None])[0]
        known = query.get("known_hosts_file", [None])[0]
        argv = ssh_argv(parts.hostname, parts.username, port, key, connect_timeout, known)
        return HostShell(name, argv, remote_command_is_string=True)
    raise ShellSpecError(f"bad host spec {spec!r}: {usage}")
