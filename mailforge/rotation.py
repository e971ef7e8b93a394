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
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import MailforgeError
from .inventory import Inventory
from .probes import run_probe
from .remote import HostShell

BACKEND = "relays"  # the backend in the rendered haproxy.cfg
ADMIN_SOCKET = "/run/haproxy/admin.sock"  # `stats socket ... level admin` in the rendered haproxy.cfg

# Sends each runtime API command on its own connection to the admin socket (argv[1]), prints the answers as JSON.
_RUNTIME_SCRIPT = """
import json, socket, sys
answers = []
for command in json.loads(sys.stdin.read()):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sys.argv[1])
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
    state: str  # up, down (health checks fail), drain or maint (an admin took it out): drain and maint win over health
    sessions: int  # current sessions through the balancer
    check: str  # the last health check's result, e.g. L7OK, L4CON, L7TOUT
    status: str  # HAProxy's own word, e.g. "UP", "DOWN 1/2", "DRAIN", "MAINT"
    healthy: bool = True  # whether its health checks pass, whatever an admin said

    @property
    def in_rotation(self) -> bool:
        return self.state == "up"


# `show servers state` srv_admin_state bits (HAProxy's SRV_ADMF_*): forced, inherited, from config, resolution maintenance; forced, inherited drain.
_MAINT_BITS, _DRAIN_BITS = 0x01 | 0x02 | 0x04 | 0x20, 0x08 | 0x10


def parse_stat(text: str, backend: str = BACKEND, servers_state: str | None = None) -> dict[str, ServerState]:
    """`show stat` (CSV, header line starting with '# ') to the state of each server of `backend`;
    with `show servers state` as well, a drained or maintained server says so even when its health
    checks fail too (`show stat` would then only say DOWN)."""
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise RotationError(f"the balancer's `show stat` answer is not its CSV: {text[:200]!r}")
    admin = _admin_states(servers_state, backend) if servers_state else {}
    servers = {}
    for row in csv.DictReader([lines[0][2:], *lines[1:]]):
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        status = row.get("status", "")
        word = status.split()[0].upper() if status else ""
        healthy = word in ("UP", "NOLB", "DRAIN", "NO")  # "no check": no health check, counted as healthy
        state = {"MAINT": "maint", "DRAIN": "drain", "NOLB": "drain"}.get(word, "up" if healthy else "down")
        bits = admin.get(row["svname"], 0)
        if bits & _MAINT_BITS:
            state = "maint"
        elif bits & _DRAIN_BITS:
            state = "drain"
        servers[row["svname"]] = ServerState(row["svname"], state, int(row.get("scur") or 0), row.get("check_status", ""), status, healthy)
    return servers


def _admin_states(text: str, backend: str) -> dict[str, int]:
    """srv_admin_state of each server of `backend`, from `show servers state`."""
    header: list[str] = []
    states = {}
    for line in text.splitlines():
        if line.startswith("# "):
            header = line[2:].split()
        elif header and line.strip() and not line.startswith("#"):
            row = dict(zip(header, line.split(), strict=False))
            if row.get("be_name") == backend and "srv_admin_state" in row:
                states[row["srv_name"]] = int(row["srv_admin_state"])
    return states


def runtime(shell: HostShell, commands: list[str], socket: str = ADMIN_SOCKET) -> list[str]:
    """HAProxy runtime API commands on the balancer's admin socket, each answer as text."""
    code = base64.b64encode(_RUNTIME_SCRIPT.encode()).decode()
    result = shell.run(f'python3 -c "$(echo {code} | base64 -d)" {shlex.quote(socket)}', stdin=json.dumps(commands).encode(), timeout=60)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        if "FileNotFoundError" in stderr or "ConnectionRefusedError" in stderr:
            raise BalancerNotServing(f"{shell.name}: no HAProxy answers on {socket}")
        raise RotationError(f"{shell.name}: HAProxy's admin socket {socket}: {stderr.splitlines()[-1] if stderr else 'exit ' + str(result.returncode)}")
    return json.loads(result.stdout)


def servers(shell: HostShell, socket: str = ADMIN_SOCKET) -> dict[str, ServerState]:
    """Each relay's state and sessions as this balancer sees them."""
    stat, state = runtime(shell, ["show stat", f"show servers state {BACKEND}"], socket)
    return parse_stat(stat, servers_state=state)


def set_state(shell: HostShell, relays: list[str], state: str, socket: str = ADMIN_SOCKET) -> None:
    """Tell the balancer: `drain` (no new connections), `ready` (back in rotation) or `maint`."""
    answers = runtime(shell, [f"set server {BACKEND}/{relay} state {state}" for relay in relays], socket)
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
    answer = run_probe(shell, {"probes": [{"kind": "greeting", "host": address, "port": port, "proxy": proxy, "helo": "rotation.mailforge.invalid"}]})[0]
    said = " / ".join(answer.get("replies", [])) or answer.get("error", "no answer")
    return bool(answer.get("ok")), said


@dataclass
class RelaySpot:
    name: str
    address: str
    fqdn: str


@dataclass
class Hooks:
    balancer: str
    take_out: str
    put_back: str


@dataclass
class RotationPlan:
    """What a rotation needs of the topology, as plain data (it travels to the step Ansible runs)."""

    relays: dict[str, RelaySpot]
    managed: list[str]  # the managed balancers' names
    drain_seconds: int
    hooks: list[Hooks]
    backend_port: int
    proxy: str  # v1, v2, none

    @property
    def needed(self) -> bool:
        """Whether the relays have a balancer that can be told: a managed one, or an external one with hooks."""
        return bool(self.managed or self.hooks)

    @classmethod
    def from_dict(cls, data: dict) -> RotationPlan:
        return cls(
            {n: RelaySpot(**r) for n, r in data["relays"].items()},
            data["managed"],
            data["drain_seconds"],
            [Hooks(**h) for h in data["hooks"]],
            data["backend_port"],
            data["proxy"],
        )


def batch_size(plan: RotationPlan, asked: int) -> tuple[int, str | None]:
    """How many relays may change at once: an external balancer's hooks take relays out one at a
    time (a cloud balancer's drain is per target, and slow), so its relays change one by one."""
    if plan.hooks and asked > 1:
        names = ", ".join(h.balancer for h in plan.hooks)
        return 1, f"--batch {asked} ignored: the relays behind {names} change one at a time (its rotation hooks take one relay out at a time)"
    return asked, None


def plan_of(inventory: Inventory) -> RotationPlan:
    t = inventory.topology
    return RotationPlan(
        {r.name: RelaySpot(r.name, r.address, r.fqdn) for r in t.relays},
        [lb.name for lb in t.managed_balancers],
        max([lb.drain_seconds for lb in t.managed_balancers] or [0]),
        [Hooks(lb.name, lb.rotation.take_out, lb.rotation.put_back) for lb in t.load_balancers if lb.external and lb.rotation is not None],
        t.backend_port,
        t.proxy_protocol,
    )


def _run_hook(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=1800)


@dataclass
class Rotation:
    """Takes relays out and puts them back; `say` is told each step as it happens."""

    plan: RotationPlan
    shells: dict[str, HostShell]  # the managed balancers' and the relays' shells, by host name
    say: Callable[[Step], None] = lambda step: None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    run_hook: Callable[[str], subprocess.CompletedProcess] = _run_hook

    def _managed(self) -> list[tuple[str, HostShell]]:
        return [(name, self.shells[name]) for name in self.plan.managed if name in self.shells]

    def take_out(self, relays: list[str]) -> list[Step]:
        """Stop new connections to `relays` and wait (bounded) for their sessions to end. A balancer
        that cannot be told raises: nothing may change under live traffic."""
        steps: list[Step] = []
        started = self.clock()
        serving = []
        for name, shell in self._managed():
            try:
                set_state(shell, relays, "drain")
                serving.append((name, shell))
            except BalancerNotServing:
                steps += [Step(r, "skipped", f"{name} does not run HAProxy yet, so nothing routes to {r}") for r in relays]
        if serving:
            limit = self.plan.drain_seconds
            while True:
                seen = [servers(shell) for _, shell in serving]
                busy = {r: n for r in relays if (n := sum(states[r].sessions for states in seen if r in states))}
                waited = round(self.clock() - started, 1)
                if not busy or waited >= limit:
                    break
                self.sleep(1)
            names = ", ".join(n for n, _ in serving)
            for r in relays:
                if busy.get(r):
                    detail = f"drained on {names}; {busy[r]} session(s) still open after {limit} s (a reload lets them finish)"
                else:
                    detail = f"drained on {names}, no session left"
                steps.append(Step(r, "drained", detail, waited))
        for hooks in self.plan.hooks:
            for r in relays:
                steps.append(self._hook(hooks.balancer, hooks.take_out, r, "drained"))
        for step in steps:
            self.say(step)
        failed = [s for s in steps if not s.ok]
        if failed:
            raise RotationError("; ".join(f"{s.relay}: {s.detail}" for s in failed))
        return steps

    def _hook(self, balancer: str, template: str, relay_name: str, action: str) -> Step:
        relay = self.plan.relays[relay_name]
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
        """Prove each relay takes mail with a PROXY SMTP probe (from the first managed balancer, else from
        the relay itself); put back those that do, keep the others out."""
        managed = self._managed()
        steps: list[Step] = []
        for name in relays:
            relay = self.plan.relays[name]
            prober = managed[0][1] if managed else self.shells[name]
            ok, said = prove(prober, relay.address, self.plan.backend_port, self.plan.proxy)
            if not ok:
                steps.append(Step(name, "kept out", f"the PROXY SMTP probe from {prober.name} failed: {said}", ok=False))
                continue
            back = []
            for lb_name, shell in managed:
                try:
                    set_state(shell, [name], "ready")
                    back.append(lb_name)
                except BalancerNotServing:
                    pass
            hooked = [self._hook(h.balancer, h.put_back, name, "back") for h in self.plan.hooks]
            failed = [h for h in hooked if not h.ok]
            if failed:
                steps += failed
                continue
            where = ", ".join(back + [h.balancer for h in self.plan.hooks])
            steps.append(Step(name, "back", f"takes mail ({said}); back in rotation on {where or 'no balancer yet'}"))
        for step in steps:
            self.say(step)
        return steps


def as_dicts(steps: list[Step]) -> list[dict]:
    return [asdict(s) for s in steps]


def save(plan: RotationPlan, shells: dict[str, HostShell], path: Path) -> None:
    """The plan and the shells, for the rotation step Ansible runs between a batch's tasks (`step`)."""
    names = set(plan.managed) | set(plan.relays)
    path.write_text(json.dumps({"plan": asdict(plan), "shells": {n: asdict(s) for n, s in shells.items() if n in names}}))
    path.chmod(0o600)


def step(path: Path, action: str, relays: list[str]) -> tuple[list[Step], bool]:
    """One rotation step from a saved plan: (what happened, whether every relay is where it should be)."""
    data = json.loads(path.read_text())
    rotation = Rotation(RotationPlan.from_dict(data["plan"]), {n: HostShell(**s) for n, s in data["shells"].items()})
    if action == "take-out":
        try:
            return rotation.take_out(relays), True
        except RotationError as exc:
            return [Step(r, "kept out", str(exc), ok=False) for r in relays], False
    steps = rotation.put_back(relays)
    return steps, all(s.ok for s in steps)
