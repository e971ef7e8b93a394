"""What the scenarios' testinfra tests ask of a converged host, written once.

Each scenario's tests import it (molecule/conftest.py puts this directory on the path). The
rendered tree is the one molecule/shared/rendered_files.yml produced with `mailforge render`,
so "the live file is the rendered one" compares against mailforge's own output.
"""

import hashlib
import json
import os
from pathlib import Path

import yaml

from mailforge.resources import role_dir

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
RENDER = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "render"  # molecule/shared/inventory's
# inventories/mx-proxy's, staged apart in the same scenario (mailforge_stage_dir in molecule/roles/molecule.yml)
MX_PROXY_RENDER = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "mx-proxy" / "render"
ROLES_INVENTORY = PROJECT / "molecule/shared/inventory/topology.yml"


def topology(path: Path = ROLES_INVENTORY) -> dict:
    return yaml.safe_load(path.read_text())


def role_defaults(role: str) -> dict:
    return yaml.safe_load((role_dir(role) / "defaults/main.yml").read_text())


def rendered_files(host_name: str, render: Path = RENDER) -> dict:
    """{path: manifest entry} of everything rendered for `host_name` (in the render `render`)."""
    return json.loads((render / "manifest.json").read_text())["hosts"][host_name]["files"]


def assert_live_file_is_rendered(host, host_name: str, path: str, render: Path = RENDER) -> None:
    """The file on the host is the rendered one, byte for byte, a plain file, with the manifest's owner and mode."""
    meta = rendered_files(host_name, render)[path]
    rendered = (render / host_name / path.lstrip("/")).read_bytes()
    assert hashlib.sha256(rendered).hexdigest() == meta["sha256"], "the render does not match its own manifest"
    live = host.file(path)
    assert live.is_file and not live.is_symlink, path
    assert live.content == rendered, path
    assert (live.user, live.group, live.mode) == (meta["owner"], meta["group"], int(meta["mode"], 8)), path


def listening(host) -> set[str]:
    """Local address:port of every listening TCP socket."""
    return {line.split()[3] for line in host.check_output("ss -Hltn").splitlines()}


def listens_on(host, address: str, port: int) -> bool:
    """A TCP socket accepts connections on address:port (bound to it or to every IPv4 address).

    Not host.socket(...).is_listening: testinfra 10.2 does not count a 0.0.0.0 socket for a
    given address.
    """
    return bool({f"{address}:{port}", f"0.0.0.0:{port}", f"*:{port}"} & listening(host))


# Runs on the host: one SMTP session (after a PROXY v1 header when asked); prints every reply as JSON.
# A command's literal "\n" becomes CRLF, so a whole DATA body can be one command.
_SESSION = r'''
import json, socket, sys
address, port, proxy_from, commands = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
s = socket.create_connection((address, port), timeout=30)
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        line = f.readline().decode()
        if not line:
            lines.append("<closed>")
            return lines
        lines.append(line.rstrip("\r\n"))
        if line[3:4] != "-":
            return lines
if proxy_from != "-":
    s.sendall(("PROXY TCP4 %s %s 5555 %d\r\n" % (proxy_from, address, port)).encode())
replies = [reply()]
for command in commands:
    s.sendall(command.encode().replace(b"\\n", b"\r\n") + b"\r\n")
    replies.append(reply())
print(json.dumps(replies))
'''


def smtp(host, address: str, port: int, *commands: str, proxy_from: str | None = None) -> list[list[str]]:
    """The replies (banner first) of one SMTP session run on `host`; with `proxy_from`, the session
    starts with the PROXY header a balancer would send for a client at that address."""
    quoted = " ".join("'%s'" % c for c in commands)
    result = host.run(f"python3 - {address} {port} {proxy_from or '-'} {quoted} <<'EOF'\n{_SESSION}\nEOF")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def code(reply: list[str]) -> str:
    return reply[-1][:3]
