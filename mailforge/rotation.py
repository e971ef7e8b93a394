"""Relays out of the balancer's rotation while they change, and back once they prove they take mail.

A relay that reloads while the balancer sends it new connections can drop one; a relay that comes
back broken would take mail it cannot handle. So `deploy` and `maps` change relays a batch at a
time, and for each batch:

1. take it out: a managed HAProxy is told `set server relays/NAME state drain` on its admin
   socket (no new connections; the open sessions go on), then mailforge waits, at most the
   balancer's `drain_seconds`, until those sessions have ended; an external balancer runs the
   inventory's `rotation.take_out` command (which itself waits for the drain);
2. the change is applied and checked (Ansible, or the maps go-live);
3. prove: a PROXY SMTP probe (PROXY header, 220, EHLO, 250, QUIT, as the health check and real
   clients speak) from the balancer host, or from the relay itself for an external balancer;
4. put it back (`state ready`, or `rotation.put_back`). A relay that fails its proof stays out,
   and the rollout stops there: the relays not yet touched keep serving.

The same HAProxy runtime API gives `status` each relay's state and sessions (`servers`).
"""

from __future__ import annotations

import base64
import csv
import json
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .errors import MailforgeError
from .inventory import Inventory
from .remote import HostShell, HostUnreachable

BACKEND = "relays"  # the backend in the rendered haproxy.cfg
ADMIN_SOCKET = "/run/haproxy/admin.sock"  # `stats socket ... level admin` in the rendered haproxy.cfg

# Sends each runtime API command on its own connection to the admin socket, prints the answers as JSON.
_RUNTIME_SCRIPT = f"""
import json, socket, sys
answers = []
for command in json.loads(sys.stdin.read()):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect({ADMIN_SOCKET!r})
    s.sendall(command.encode() + b"\\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    answers.append(data.decode("utf-8", "replace"))
print(json.dumps(answers))
"""


class RotationError(MailforgeError):
    """The balancer could not be asked or told (not: a relay failed its proof)."""


class BalancerNotServing(RotationError):
    """No HAProxy answers on the balancer's admin socket yet (a first deploy): nothing routes to the relays."""


@dataclass
class ServerState:
    """One relay as a balancer sees it."""

    relay: str
    state: str  # up, down, drain, maint
    sessions: int  # current sessions through the balancer
    check: str  # the last health check's result, e.g. L7OK, L4CON, L7TOUT
    status: str  # HAProxy's own word, e.g. "UP", "DOWN 1/2", "DRAIN", "MAINT"

    @property
    def in_rotation(self) -> bool:
        return self.state == "up"


def parse_stat(text: str, backend: str = BACKEND) -> dict[str, ServerState]:
    """`show stat` (CSV, header line starting with '# ') to the state of each server of `backend`."""
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise RotationError(f"the balancer's `show stat` answer is not its CSV: {text[:200]!r}")
    rows = csv.DictReader([lines[0][2:], *lines[1:]])
    servers = {}
    for row in rows:
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        status = row.get("status", "")
        word = status.split()[0].upper() if status else ""
        state = {"UP": "up", "NOLB": "drain", "DRAIN": "drain", "MAINT": "maint", "DOWN": "down", "no": "up"}.get(word, "down")
        if word == "NO":  # "no check": a server without health checks counts as up
            state = "up"
        servers[row["svname"]] = ServerState(row["svname"], state, int(row.get("scur") or 0), row.get("check_status", ""), status)
    return servers


def runtime(shell: HostShell, commands: list[str]) -> list[str]:
    """HAProxy runtime API commands on the balancer's admin socket, each answer as text."""
    code = base64.b64encode(_RUNTIME_SCRIPT.encode()).decode()
    result = shell.run(f'python3 -c "$(echo {code} | base64 -d)"', stdin=json.dumps(commands).encode(), timeout=60)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        if "FileNotFoundError" in stderr or "ConnectionRefusedError" in stderr:
            raise BalancerNotServing(f"{shell.name}: no HAProxy answers on {ADMIN_SOCKET}")
        raise RotationError(f"{shell.name}: HAProxy's admin socket {ADMIN_SOCKET}: {stderr.splitlines()[-1] if stderr else 'exit ' + str(result.returncode)}")
    return json.loads(result.stdout)


def servers(shell: HostShell) -> dict[str, ServerState]:
    """Each relay's state and sessions as this balancer sees them."""
    return parse_stat(runtime(shell, ["show stat"])[0])


def _set_state(shell: HostShell, relays: list[str], state: str) -> None:
    answers = runtime(shell, [f"set server {BACKEND}/{relay} state {state}" for relay in relays])
    refused = [f"{relay}: {answer.strip()}" for relay, answer in zip(relays, answers, strict=True) if answer.strip()]
    if refused:  # HAProxy answers nothing when it obeys
        raise RotationError(f"{shell.name} refused to set {state}: " + "; ".join(refused))


@dataclass
class Step:
    """What happened to one relay's place in the rotation."""

    relay: str
    action: str  # drained, back, kept out, skipped
    detail: str = ""
    seconds: float = 0.0
    ok: bool = True


def prove(shell: HostShell, address: str, port: int, proxy: str) -> tuple[bool, str]:
    """A PROXY SMTP probe from `shell`'s host to a relay: (takes mail, the replies or the error)."""
    from .verify import run_probe

    answer = run_probe(shell, {"probes": [{"kind": "greeting", "host": address, "port": port, "proxy": proxy, "helo": "rotation.mailforge.invalid"}]})[0]
    said = " / ".join(answer.get("replies", [])) or answer.get("error", "no answer")
    return bool(answer.get("ok")), said


@dataclass
class Rotation:
    """Takes relays out and puts them back, for one cluster's balancers; `say` is told each step."""

    inventory: Inventory
    shells: dict[str, HostShell]  # the balancers' and relays' shells, by host name
    say: Callable[[Step], None] = lambda step: None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    run_hook: Callable[[str], subprocess.CompletedProcess] = field(
        default=lambda command: subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=1800)
    )

    @property
    def needed(self) -> bool:
        """Whether relays have a balancer that can be told: a managed one, or an external one with hooks."""
        t = self.inventory.topology
        return any(not lb.external or lb.rotation is not None for lb in t.load_balancers)

    def _relay(self, name: str):
        return next(r for r in self.inventory.topology.relays if r.name == name)

    def _managed(self) -> list[tuple[str, HostShell]]:
        return [(lb.name, self.shells[lb.name]) for lb in self.inventory.topology.managed_balancers if lb.name in self.shells]

    def take_out(self, relays: list[str]) -> list[Step]:
        """Stop new connections to `relays` and wait (bounded) for their sessions to end."""
        t = self.inventory.topology
        steps: list[Step] = []
        started = self.clock()
        serving = []
        for name, shell in self._managed():
            try:
                _set_state(shell, relays, "drain")
                serving.append((name, shell))
            except BalancerNotServing:
                steps += [Step(r, "skipped", f"{name} does not run HAProxy yet, so nothing routes to {r}") for r in relays]
        if serving:
            limit = max(lb.drain_seconds for lb in t.managed_balancers)
            while True:
                seen = [servers(shell) for _, shell in serving]
                busy = {r: n for r in relays if (n := sum(states[r].sessions for states in seen if r in states))}
                waited = round(self.clock() - started, 1)
                if not busy or waited >= limit:
                    break
                self.sleep(1)
            for r in relays:
                if busy.get(r):
                    detail = f"drained on {', '.join(n for n, _ in serving)}; {busy[r]} session(s) still open after {limit} s (they go on: a reload keeps them)"
                else:
                    detail = f"drained on {', '.join(n for n, _ in serving)}, no session left"
                steps.append(Step(r, "drained", detail, waited))
        for lb in t.load_balancers:
            if lb.external and lb.rotation is not None:
                for r in relays:
                    steps.append(self._hook(lb.name, lb.rotation.take_out, r, "drained"))
        for step in steps:
            self.say(step)
        failed = [s for s in steps if not s.ok]
        if failed:
            raise RotationError("; ".join(f"{s.relay}: {s.detail}" for s in failed))
        return steps

    def _hook(self, balancer: str, template: str, relay_name: str, action: str) -> Step:
        relay = self._relay(relay_name)
        command = template.format(relay=shlex.quote(relay.name), address=shlex.quote(relay.address), fqdn=shlex.quote(relay.fqdn))
        started = self.clock()
        try:
            done = self.run_hook(command)
        except subprocess.TimeoutExpired:
            return Step(relay.name, "kept out", f"{balancer}'s rotation hook did not finish within 30 minutes", ok=False)
        seconds = round(self.clock() - started, 1)
        if done.returncode != 0:
            last = (done.stderr or done.stdout or "").strip().splitlines()
            return Step(relay.name, "kept out", f"{balancer}'s rotation hook failed (exit {done.returncode}): {last[-1] if last else ''}", seconds, ok=False)
        return Step(relay.name, action, f"{balancer}'s rotation hook: {command}", seconds)

    def put_back(self, relays: list[str]) -> list[Step]:
        """Prove each relay takes mail through a PROXY probe; put back those that do, keep the others out."""
        t = self.inventory.topology
        managed = self._managed()
        steps: list[Step] = []
        for name in relays:
            relay = self._relay(name)
            prober = managed[0][1] if managed else self.shells[name]
            ok, said = prove(prober, relay.address, t.backend_port, t.proxy_protocol)
            if not ok:
                steps.append(Step(name, "kept out", f"the PROXY SMTP probe from {prober.name} failed: {said}", ok=False))
                continue
            back = []
            for lb_name, shell in managed:
                try:
                    _set_state(shell, [name], "ready")
                    back.append(lb_name)
                except BalancerNotServing:
                    pass
            hooks = [self._hook(lb.name, lb.rotation.put_back, name, "back") for lb in t.load_balancers if lb.external and lb.rotation is not None]
            failed = [h for h in hooks if not h.ok]
            if failed:
                steps += failed
                continue
            where = ", ".join(back + [lb.name for lb in t.load_balancers if lb.external and lb.rotation is not None])
            steps.append(Step(name, "back", f"takes mail ({said}); back in rotation on {where or 'no balancer yet'}"))
        for step in steps:
            self.say(step)
        return steps


def as_dicts(steps: list[Step]) -> list[dict]:
    return [asdict(s) for s in steps]


def rotation_shells(inventory: Inventory, shells: dict[str, HostShell]) -> dict[str, HostShell]:
    """The shells a rotation needs: the managed balancers' and the relays'."""
    t = inventory.topology
    names = {lb.name for lb in t.managed_balancers} | {r.name for r in t.relays}
    missing = sorted(n for n in names if n not in shells)
    if missing:
        raise HostUnreachable(f"the rotation needs to reach {', '.join(missing)}")
    return {n: shells[n] for n in names}
