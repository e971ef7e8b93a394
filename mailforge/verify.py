"""Prove a deployed cluster works: host state with testinfra, then real mail through the front door.

Every check is a row: what was checked, on which host, whether it held, and
the evidence.  Mail probes run from a probing host (the lab's client container,
or one named on the command line) with the stdlib-only script in probes/.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

from .errors import MailforgeError
from .topology import Inventory

SENDER = "probe@lab-sender.test"
OUTSIDE = "someone@elsewhere.test"


class VerifyError(MailforgeError):
    """verify could not run at all (e.g. a host cannot be reached)."""


@dataclass
class Check:
    group: str
    name: str
    host: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


class Remote:
    """A host verify talks to, through testinfra (docker://container or ssh://user@host:port)."""

    def __init__(self, name: str, spec: str):
        import testinfra

        self.name = name
        self.spec = spec
        self.host = testinfra.get_host(spec)

    def run(self, command: str):
        return self.host.run(command)

    def python(self, script: str, payload: dict) -> object:
        """Run a stdlib python3 script on the host with `payload` as JSON on stdin; return its JSON output."""
        code = base64.b64encode(script.encode()).decode()
        data = base64.b64encode(json.dumps(payload).encode()).decode()
        result = self.run(f"echo {data} | base64 -d | python3 -c \"$(echo {code} | base64 -d)\"")
        if result.rc != 0:
            raise VerifyError(f"probe on {self.name} failed: {result.stderr.strip()[-300:]}")
        return json.loads(result.stdout)


def _listed_recipient(inventory: Inventory) -> tuple[str, str]:
    t = inventory.topology
    domain = sorted(t.domains)[0]
    if inventory.recipients is None:
        return "postmaster", domain
    for candidate in sorted(t.domains):
        local_parts = inventory.recipients.local_parts_at(candidate)
        if local_parts:
            return local_parts[0], candidate
    return "postmaster", domain


def _front_door(inventory: Inventory) -> tuple[str, int]:
    t = inventory.topology
    if t.managed_balancers:
        lb = t.managed_balancers[0]
        return lb.address, lb.frontend_port
    relay = t.relays[0]
    port = relay.instances.inbound.port if relay.instances and relay.instances.inbound else 25
    return relay.address, port


def _local_postconf(directory: Path) -> dict[str, str]:
    """What the rendered main.cf sets, read by the controller's own postconf (config_directory is where it was read)."""
    result = subprocess.run(["postconf", "-c", str(directory), "-n"], capture_output=True, text=True, timeout=60)
    settings = _parse_postconf(result.stdout)
    settings.pop("config_directory", None)
    return settings


def _parse_postconf(text: str) -> dict[str, str]:
    return dict(line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "") for line in text.splitlines())


def host_checks(inventory: Inventory, render_dir: Path, manifest: dict, remotes: dict[str, Remote]) -> list[Check]:
    """Packages, services, ports, effective postconf, compiled maps, loaded firewall: per host."""
    t = inventory.topology
    checks: list[Check] = []
    roles = {lb.name: "balancer" for lb in t.managed_balancers}
    roles.update({r.name: "relay" for r in t.relays})
    roles.update({c.name: "core" for c in t.cores})
    for host, remote in remotes.items():
        role = roles[host]
        files_ = manifest["hosts"][host]["files"]
        packages = ["haproxy", "iptables"] if role == "balancer" else ["postfix", "iptables"]
        missing = [p for p in packages if not remote.host.package(p).is_installed]
        checks.append(Check("host", "packages installed", host, not missing, "missing: " + ", ".join(missing) if missing else ", ".join(packages)))

        listening = remote.run("ss -ltnH").stdout
        ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in listening.splitlines() if line.split()}
        if role == "balancer":
            running = remote.run("pgrep -x haproxy").rc == 0
            checks.append(Check("host", "haproxy running", host, running, "pgrep -x haproxy"))
            want = {lb.frontend_port for lb in t.managed_balancers if lb.name == host}
        else:
            want = set()
            for directory in sorted({f["config_directory"] for f in files_.values() if f.get("config_directory")}):
                status = remote.run(f"postfix -c {directory} status")
                checks.append(Check("host", f"postfix running ({directory})", host, status.rc == 0, (status.stdout + status.stderr).strip()[-200:]))
                live = _parse_postconf(remote.run(f"postconf -c {directory} -n").stdout)
                live.pop("config_directory", None)
                desired = _local_postconf(render_dir / host / directory.lstrip("/"))
                differing = sorted(k for k in set(live) | set(desired) if live.get(k) != desired.get(k))
                detail = "; ".join(f"{k}: live {live.get(k)!r}, rendered {desired.get(k)!r}" for k in differing[:4])
                checks.append(Check("host", f"effective postconf matches ({directory})", host, not differing,
                                    detail or f"{len(desired)} parameters match"))
                services = remote.run(f"postconf -c {directory} -M").stdout
                for line in services.splitlines():
                    words = line.split()
                    if len(words) > 1 and words[1] == "inet":
                        service = words[0].rsplit(":", 1)[-1]
                        want.add({"smtp": 25, "submission": 587}.get(service, int(service) if service.isdigit() else 0))
            stale = []
            for path, meta in files_.items():
                if meta["action"] == "postmap":
                    result = remote.run(f"test -e {path}.db -a ! {path} -nt {path}.db || test -e {path}.lmdb -a ! {path} -nt {path}.lmdb")
                    if result.rc != 0:
                        stale.append(path)
            checks.append(Check("host", "maps compiled and current", host, not stale, "stale or missing: " + ", ".join(stale) if stale else "every map's db is newer than its source"))
        want.discard(0)
        checks.append(Check("host", "ports listening", host, want <= ports, f"want {sorted(want)}, listening {sorted(p for p in ports if p < 20000)}"))

        rules = [p for p in files_ if p.endswith(("rules.v4", "rules.v6"))]
        problems = []
        for path in rules:
            tool = "iptables-save" if path.endswith("v4") else "ip6tables-save"
            live = remote.run(tool).stdout
            rendered = (render_dir / host / path.lstrip("/")).read_text()
            wanted = sum(1 for line in rendered.splitlines() if line.startswith("-A ") and "mailforge:" in line)
            have = sum(1 for line in live.splitlines() if line.startswith("-A ") and "mailforge:" in line)
            if ":INPUT DROP" not in live or have != wanted:
                problems.append(f"{tool}: {have} of {wanted} mailforge rules, policy {'DROP' if ':INPUT DROP' in live else 'not DROP'}")
        checks.append(Check("host", "firewall rules loaded", host, not problems, "; ".join(problems) or f"{len(rules)} rulesets loaded, policy DROP"))
    return checks


def _code(result: dict, stage: str) -> int | None:
    value = result["stages"].get(stage)
    return value[0] if value else None


def _describe(result: dict) -> str:
    return ", ".join(f"{stage} {code} {text[:70]}" for stage, (code, text) in result["stages"].items() if stage != "ehlo")


def mail_checks(inventory: Inventory, remotes: dict[str, Remote], client: Remote, listed_client: Remote | None,
                wait: int = 60) -> list[Check]:
    """Real mail through the front door, the PROXY protocol's truth, and the walls."""
    t = inventory.topology
    probe = files("mailforge.probes").joinpath("smtp_probe.py").read_text()
    host, port = _front_door(inventory)
    token = uuid.uuid4().hex[:12]
    local, domain = _listed_recipient(inventory)
    recipient = f"{local}@{domain}"
    message = (f"From: <{SENDER}>\r\nTo: <{recipient}>\r\nSubject: mailforge verify {token}\r\n"
               f"Message-ID: <{token}@lab-sender.test>\r\n\r\nmailforge verify probe {token}\r\n")
    base = {"kind": "smtp", "host": host, "port": port, "sender": SENDER, "helo": "client.lab-sender.test", "timeout": 30}
    probes = [
        {**base, "recipient": recipient, "data": message},
        {**base, "recipient": f"nobody-{token}@{domain}"},
        {**base, "recipient": OUTSIDE},
    ]
    example = next((c.example for c in t.policy.header_checks if c.example), None)
    if example:
        probes.append({**base, "recipient": recipient, "data": f"From: <{SENDER}>\r\nTo: <{recipient}>\r\n{example}\r\n\r\nbody\r\n"})
    results = client.python(probe, {"probes": probes})
    checks: list[Check] = []
    accepted = _code(results[0], "data") == 250
    checks.append(Check("mail", f"mail to listed {recipient} accepted", client.name, accepted, _describe(results[0])))
    if inventory.recipients is not None:
        checks.append(Check("mail", "unlisted recipient gets 550", client.name, _code(results[1], "rcpt") == 550, _describe(results[1])))
    checks.append(Check("mail", "relaying to an outside domain gets 554", client.name, _code(results[2], "rcpt") == 554, _describe(results[2])))
    if example:
        code = _code(results[3], "data")
        checks.append(Check("mail", "header check rejects its example", client.name, code is not None and 500 <= code < 600, _describe(results[3])))

    # Delivery: the token must show up in a core's Maildir within `wait` seconds.
    cores = [c.name for c in t.cores if c.name in remotes]
    delivered_on = None
    deadline = time.monotonic() + wait
    while accepted and cores and time.monotonic() < deadline and delivered_on is None:
        for core in cores:
            if remotes[core].run(f"grep -rl {token} /var/mail/vhosts/{domain}/ 2>/dev/null").rc == 0:
                delivered_on = core
                break
        else:
            time.sleep(2)
    checks.append(Check("mail", f"message arrives in the core's mailbox of {recipient}", delivered_on or ",".join(cores), delivered_on is not None,
                        f"found on {delivered_on}" if delivered_on else f"not delivered within {wait} s" if accepted else "not accepted, so not delivered"))

    addresses = client.run("hostname -I")
    client_address = addresses.stdout.split()[0] if addresses.rc == 0 and addresses.stdout.split() else None
    if t.load_balancers and t.proxy_protocol != "none":
        seen = [r.name for r in t.relays if r.name in remotes and client_address and
                remotes[r.name].run(f"grep -F 'CONNECT from [{client_address}]' /var/log/mail.log").rc == 0]
        checks.append(Check("proxy", "relay logs show the client's own address", ",".join(seen) or "relays", bool(seen),
                            f"postscreen logged CONNECT from [{client_address}] on {', '.join(seen)}" if seen else
                            f"no relay logged CONNECT from [{client_address}]"))

    if listed_client is not None and t.policy.rbl_clients:
        spam = listed_client.python(probe, {"probes": [{**base, "helo": "spammer.lab-sender.test", "recipient": recipient}]})[0]
        code = _code(spam, "rcpt") or _code(spam, "error")
        checks.append(Check("mail", "DNSBL-listed client is refused", listed_client.name, code is not None and 500 <= code < 600 and "blocked" in _describe(spam), _describe(spam)))

    walls = []
    for core in t.cores:
        walls.append(("walls", f"core {core.name} port 25 gives strangers no banner", core.address, 25))
    if t.load_balancers:
        for relay in t.relays:
            walls.append(("walls", f"relay {relay.name} port {t.backend_port} gives non-balancers no banner", relay.address, t.backend_port))
    if walls:
        answers = client.python(probe, {"probes": [{"kind": "banner", "host": h, "port": p, "timeout": 4} for _, _, h, p in walls]})
        for (group, name, address, p), answer in zip(walls, answers):
            checks.append(Check(group, name, client.name, answer["banner"] is None,
                                f"banner {answer['banner']!r}" if answer["banner"] is not None else answer.get("error", "no answer")))
    return checks


def lab_remotes(inventory: Inventory) -> tuple[dict[str, Remote], Remote, Remote]:
    from .lab import plan

    lab = plan(inventory)
    hosts = {c.host: Remote(c.host, f"docker://{c.name}") for c in lab.containers if c.role not in ("client", "dns")}
    return hosts, Remote("client", f"docker://{lab.by_host('client').name}"), Remote("spammer", f"docker://{lab.by_host('spammer').name}")


def ssh_remotes(inventory: Inventory) -> dict[str, Remote]:
    """Real hosts over SSH, with the topology's connection settings (user, port, key)."""
    t = inventory.topology
    remotes = {}
    hosts = [*t.managed_balancers, *t.relays, *t.cores]
    for h in hosts:
        settings = t.connection_settings(h)
        target = settings.get("host", h.address)
        user = f"{settings['user']}@" if settings.get("user") else ""
        port = f":{settings['port']}" if settings.get("port") else ""
        spec = f"ssh://{user}{target}{port}"
        if settings.get("private_key_file"):
            spec += f"?ssh_identity_file={settings['private_key_file']}"
        remotes[h.name] = Remote(h.name, spec)
    return remotes


def reachable(remotes: dict[str, Remote]) -> None:
    for name, remote in remotes.items():
        try:
            result = remote.run("true")
        except Exception as exc:  # testinfra raises many kinds; an SSH failure carries the command's result
            result = exc.args[0] if exc.args else None
            detail = (getattr(result, "stderr", "") or str(exc)).strip()
            raise VerifyError(f"cannot reach {name} ({remote.spec}): {detail}") from None
        if result.rc != 0:
            raise VerifyError(f"cannot reach {name} ({remote.spec}): {result.stderr.strip()}")


def verify(inventory: Inventory, render_dir: Path, manifest: dict, remotes: dict[str, Remote], client: Remote,
           listed_client: Remote | None = None, wait: int = 60) -> list[Check]:
    reachable({**remotes, client.name: client})
    return host_checks(inventory, render_dir, manifest, remotes) + mail_checks(inventory, remotes, client, listed_client, wait)

