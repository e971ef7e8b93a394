"""Prove a deployed cluster works: host state as drift compares it, then real mail through the front door.

Every check is a row: what was checked, on which host, whether it held, and the evidence.
The host rows are drift's comparison rolled up (`host_rows`): drift's audit reads every host
read-only and compares it with the rendered tree (packages from the roles, services, postmulti
instances, effective main.cf and master.cf, every file and map with its database, the loaded
firewall as the kernel prints it), and each row says whether all of its items are in sync. Only
"ports listening" is verify's own (`ss -ltnH`). Mail probes run from a probing host (the lab's
client container, or one named with --probe-from) with the stdlib-only script in probes/.
Every host is reached through `remote.HostShell`: `docker exec` in the lab, SSH otherwise.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import shlex
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from . import drift
from .drift import IN_SYNC, Item
from .errors import MailforgeError
from .inventory import Inventory
from .probes import run_probe
from .remote import HostShell
from .render.metrics import SERVICE as EXPORTER_SERVICE
from .results import Result, Run
from .tls import inbound, store_of
from .tls.names import mx_names

SENDER = "probe@lab-sender.test"
OUTSIDE = "someone@elsewhere.test"  # at a domain nobody hosts: the front door must refuse to relay there
OUTSIDE_MAILBOX = "friend@lab-sender.test"  # outside, at a domain with a mail server (in the lab, the client)
EVIDENCE_ITEMS = 4  # a failing row names this many of its items, then says how many more

# The host rows, and which of drift's items each one rolls up.
PACKAGES = "packages installed"
HAPROXY_RUNNING = "haproxy running"
EXPORTERS_RUNNING = "postfix exporters running"
INSTANCES = "postfix instances as rendered"
MAPS = "maps compiled and current"
FILES = "files as rendered"
TLS_SHIPPED = "TLS keys and certificates as shipped"
PORTS = "ports listening"
FIREWALL = "firewall rules loaded"


def postfix_running(directory: str) -> str:
    """Row names that carry the instance: the lab test breaks things and asserts these names."""
    return f"postfix running ({directory})"


def postconf_matches(directory: str) -> str:
    return f"effective postconf matches ({directory})"


def master_cf_matches(directory: str) -> str:
    return f"effective master.cf matches ({directory})"


class VerifyError(MailforgeError):
    """verify could not run at all (e.g. a host cannot be reached)."""


@dataclass
class Check:
    group: str
    name: str
    host: str
    ok: bool
    detail: str
    warning: bool = False  # holds, but someone should act (a certificate close to its end)


# --- host state: drift's items, rolled up ---------------------------------------------------------


def row_of(item: Item) -> tuple[int, str]:
    """The host row an item of drift's counts towards, with the row's place among the host's rows
    (verify's own "ports listening" goes between the files and the firewall, see host_checks)."""
    if item.kind == "package":
        return 0, PACKAGES
    if item.kind == "service" and item.name.startswith("postfix "):
        return 1, postfix_running(item.name.split(" ", 1)[1])
    if item.kind == "service" and item.name == "haproxy":
        return 2, HAPROXY_RUNNING
    if item.kind == "service" and item.name.startswith(EXPORTER_SERVICE):
        return 2, EXPORTERS_RUNNING
    if item.kind == "instance":
        return 3, INSTANCES
    if item.kind == "main.cf":
        return 4, postconf_matches(item.instance or "?")
    if item.kind == "master.cf":
        return 5, master_cf_matches(item.instance or "?")
    if item.kind == "map":
        return 6, MAPS
    if item.kind == "file":
        return 7, FILES
    if item.kind == "tls file":
        return 8, TLS_SHIPPED
    if item.kind == "firewall" or item.kind == "service":
        return 9, FIREWALL  # the loaded rules, and the unit that loads them at boot (netfilter-persistent)
    return 10, f"{item.kind} as rendered"


def _evidence(item: Item) -> str:
    """One item that is not in sync, in a few words."""
    if item.kind in ("main.cf", "master.cf"):
        return f"{item.name}: {item.detail}" if item.detail else f"{item.name}: live {item.live!r}, rendered {item.desired!r}"
    if item.kind in ("map", "file", "tls file"):  # a TLS file by its sha256 alone: it may hold a key
        return f"{item.name}: {item.live or 'missing'}" if item.status == drift.MISSING else f"{item.name}: {item.detail}"
    return f"{item.name}: {item.status}, {item.live}" + (f" ({item.detail})" if item.detail else "")


def _ok_evidence(name: str, items: list[Item]) -> str:
    """What a row that holds says: the packages, a count, or the state of its one item."""
    if name == PACKAGES:
        return ", ".join(i.name for i in items)
    if len(items) == 1 and items[0].kind == "service":
        return items[0].live or "as rendered"
    if name == INSTANCES:
        return ", ".join(f"{i.name} enabled" for i in items)
    n = len(items)
    if name.startswith("effective postconf"):
        return f"{n} parameter{'s' if n != 1 else ''} match"
    if name.startswith("effective master.cf"):
        return f"{n} service{'s' if n != 1 else ''} match"
    if name == MAPS:
        return f"{n} map{'s' if n != 1 else ''} as rendered, databases current"
    if name == FILES:
        return f"{n} file{'s' if n != 1 else ''} as rendered"
    if name == TLS_SHIPPED:
        return f"{n} file{'s' if n != 1 else ''} as shipped (sha256)"
    return "; ".join(f"{i.name}: {i.live}" for i in items)


def host_rows(items: list[Item]) -> list[Check]:
    """drift's items rolled up into verify's host rows: a row per host and concern, which holds
    when every item it rolls up is in sync, its evidence naming those that are not."""
    rows: dict[tuple[str, str], tuple[int, list[Item]]] = {}
    hosts: list[str] = []
    for item in items:
        if item.host not in hosts:
            hosts.append(item.host)
        place, name = row_of(item)
        rows.setdefault((item.host, name), (place, []))[1].append(item)
    checks = []
    for (host, name), (_, row) in sorted(rows.items(), key=lambda r: (hosts.index(r[0][0]), r[1][0], r[0][1])):
        bad = [i for i in row if i.status != IN_SYNC]
        detail = "; ".join(_evidence(i) for i in bad[:EVIDENCE_ITEMS]) + (f"; and {len(bad) - EVIDENCE_ITEMS} more" if len(bad) > EVIDENCE_ITEMS else "")
        checks.append(Check("host", name, host, not bad, detail if bad else _ok_evidence(name, row)))
    return checks


def wanted_ports(inventory: Inventory, host: str) -> set[int]:
    """The TCP ports `host` must listen on, as the host model says: the ports it takes mail on (a
    balancer's frontend port, a relay's postscreen or port 25, an MX proxy's instances, a core's 25)
    and, with `monitoring`, its exporters'. From the inventory, so a host whose live master.cf cannot
    be read still has ports to be checked for."""
    h = inventory.host(host)
    return set(h.ports) | set(h.exporters.values())


def listening(ss_output: str) -> set[int]:
    """`ss -ltnH` -> the ports something listens on."""
    ports = set()
    for line in ss_output.splitlines():
        words = line.split()
        if len(words) > 3 and ":" in words[3]:
            port = words[3].rsplit(":", 1)[1]
            if port.isdigit():
                ports.add(int(port))
    return ports


def ports_check(host: str, want: set[int], ports: set[int]) -> Check:
    """The row that holds when every wanted port is listened on (ports above 20000 are not shown)."""
    return Check("host", PORTS, host, want <= ports, f"want {sorted(want)}, listening {sorted(p for p in ports if p < 20000)}")


def host_checks(
    inventory: Inventory, render_dir: Path, manifest: dict, shells: dict[str, HostShell], shipped: dict[str, dict[str, str]] | None = None
) -> list[Check]:
    """Every host's state as drift compares it (with the TLS files `shipped`: host -> path -> sha256),
    rolled up, and the ports each one listens on."""
    report = drift.audit(inventory, render_dir, manifest, shells, tls=shipped)

    def ss(host: str) -> set[int]:
        return listening(shells[host].run("ss -ltnH").stdout.decode(errors="replace"))

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(report.hosts)))) as pool:
        ports = dict(zip(report.hosts, pool.map(ss, report.hosts), strict=True))
    checks = []
    for host in report.hosts:
        items = [i for i in report.items if i.host == host]
        rows = host_rows(items)
        at = next((n for n, c in enumerate(rows) if c.name == FIREWALL), len(rows))
        rows.insert(at, ports_check(host, wanted_ports(inventory, host), ports[host]))
        checks += rows
    return checks


# --- mail through the front door ------------------------------------------------------------------


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


def hop_row(relay: str, core: str) -> str:
    """The row of one relay's verified delivery to a core (the lab test asserts these names)."""
    return f"relay-to-core TLS {relay} -> {core}"


def _hop_doors(inventory: Inventory, door: tuple[str, int]) -> list[tuple[str, int]]:
    """Where the copies of the test mail go so that every relay delivers one to a core: through a
    balancer (round robin), twice as many as there are relays, back to back; without one, one
    straight to each relay's inbound port (each is an MX)."""
    t = inventory.topology
    if t.load_balancers:
        return [door] * (2 * len(t.relays))
    return [(r.address, r.instances.inbound.port if r.instances and r.instances.inbound else 25) for r in t.relays]


_CLEANUP = re.compile(r"/cleanup\[\d+\]: ([0-9A-Za-z]+): message-id=<")
_TLS = re.compile(r"/smtp\[(\d+)\]: ((\w+) TLS connection established to (\S+?)\[([^\]]*)\]:\d+.*)")
_SENT = re.compile(r"/smtp\[(\d+)\]: ([0-9A-Za-z]+): to=<[^>]*>, relay=(\S+?)\[([^\]]*)\]:\d+.*? status=(\w+)(.*)")


def hop_of(log: str, token: str) -> tuple[bool, str, str] | None:
    """From a relay's mail log: its delivery of a copy of the test mail (Message-ID <token...>) to a
    core, and the TLS line its smtp process logged for that connection just before. Returns (the hop
    was verified TLS and the mail sent, the next hop's name or address, evidence), None when no
    delivery of a copy is logged yet. Postfix does not reuse TLS connections by default, so each
    delivery logs its own "Verified TLS connection established to <core>[address]:25"."""
    queue_ids = {m.group(1) for line in log.splitlines() if token in line and (m := _CLEANUP.search(line))}
    tls_of: dict[str, re.Match] = {}
    for line in log.splitlines():
        if m := _TLS.search(line):
            tls_of[m.group(1)] = m
        elif (m := _SENT.search(line)) and m.group(2) in queue_ids:
            pid, status = m.group(1), m.group(5)
            tls = tls_of.get(pid)
            hop = tls.group(2) if tls else "no TLS connection logged for this delivery"
            if tls and tls.group(3) == "Verified" and status == "sent":
                return True, m.group(3), hop[: hop.index(" with cipher")] if " with cipher" in hop else hop
            return False, m.group(3), f"status={status}{m.group(6)[:120]}; {hop}"
    return None


def hop_checks(inventory: Inventory, shells: dict[str, HostShell], token: str, wait: float) -> list[Check]:
    """One row per relay: its delivery of a copy of the test mail to a core went over TLS that
    verified the core's certificate against the private CA and its name (the relay's log says
    "Verified TLS connection established to <core>"). Waits up to `wait` seconds for the logs."""
    t = inventory.topology
    relays = [r.name for r in t.relays if r.name in shells]
    cores = {n: c.name for c in t.cores for n in (c.fqdn.lower(), str(c.address))}
    found: dict[str, tuple[bool, str, str]] = {}
    deadline = time.monotonic() + wait
    while True:
        for relay in relays:
            if relay not in found:
                log = shells[relay].run(
                    f"grep -a -F -e {shlex.quote(token)} -e ' TLS connection established to ' -e ': to=<' /var/log/mail.log | tail -n 20000"
                )
                hop = hop_of(log.stdout.decode(errors="replace"), token)
                if hop is not None:
                    found[relay] = hop
        if len(found) == len(relays) or time.monotonic() >= deadline:
            break
        time.sleep(2)
    checks = []
    for relay in relays:
        if relay in found:
            ok, next_hop, evidence = found[relay]
            checks.append(Check("tls", hop_row(relay, cores.get(next_hop.lower(), next_hop)), relay, ok, evidence))
        else:
            checks.append(
                Check(
                    "tls",
                    hop_row(relay, " or ".join(c.name for c in t.cores)),
                    relay,
                    False,
                    f"no delivery of a copy of the test mail logged within {wait:.0f} s",
                )
            )
    return checks


def inbound_tls_checks(
    inventory: Inventory, client: HostShell, door: tuple[str, int], roots: list, where: str, now: datetime.datetime | None = None
) -> list[Check]:
    """STARTTLS through the front door from the probing host, judged on this machine (`tls.inbound`):
    the chain against the trust, the MX names, the protocol (and TLSv1.1 refused), the dates."""
    t = inventory.topology
    names = mx_names(t)
    probe = {"kind": "starttls", "host": door[0], "port": door[1], "helo": "client.lab-sender.test", "server_name": names[0] if names else None, "timeout": 30}
    answer = run_probe(client, {"probes": [probe]})[0]
    judged = inbound.judge(answer, names, roots, where, now or datetime.datetime.now(datetime.UTC), t.tls.expiry_warning_days)
    return [Check("tls", row, client.name, j.ok, j.detail, warning=j.status == inbound.WARNING) for row, j in judged.items()]


def _front_door(inventory: Inventory, stand_in: tuple[str, int] | None = None) -> tuple[str, int]:
    """Where the probes send mail, as the world does: a managed balancer's address; an external
    balancer's fqdn (the name the MX records use), or in the lab `stand_in`, the address of the
    container standing in for it (`lab.front_door`); without a balancer, the first relay."""
    t = inventory.topology
    if t.managed_balancers:
        lb = t.managed_balancers[0]
        return str(lb.address), lb.frontend_port  # a managed balancer has an address (the topology checks)
    if t.load_balancers:
        lb = t.load_balancers[0]
        if stand_in is not None:
            return stand_in
        if lb.fqdn:
            return lb.fqdn, lb.frontend_port
        raise VerifyError(
            f"external balancer {lb.name} has no fqdn, so verify has no front door to send its mail to (the relays take mail only "
            f"from the balancer): give it the name the MX records use, `fqdn:` under load_balancers (`mailforge dns zone` suggests one)"
        )
    relay = t.relays[0]
    port = relay.instances.inbound.port if relay.instances and relay.instances.inbound else 25
    return relay.address, port


def _code(result: dict, stage: str) -> int | None:
    value = result["stages"].get(stage)
    return value[0] if value else None


def _describe(result: dict) -> str:
    return ", ".join(f"{stage} {code} {text[:70]}" for stage, (code, text) in result["stages"].items() if stage != "ehlo")


def mail_checks(
    inventory: Inventory,
    shells: dict[str, HostShell],
    client: HostShell,
    listed_client: HostShell | None,
    wait: int = 60,
    door: tuple[str, int] | None = None,
    submitter: HostShell | None = None,
) -> list[Check]:
    """Real mail through the front door (`door`, else `_front_door`), the PROXY protocol's truth, an MX
    proxy's outbound instance, and the walls."""
    t = inventory.topology
    host, port = door or _front_door(inventory)
    token = uuid.uuid4().hex[:12]
    local, domain = _listed_recipient(inventory)
    recipient = f"{local}@{domain}"
    message = (
        f"From: <{SENDER}>\r\nTo: <{recipient}>\r\nSubject: mailforge verify {token}\r\n"
        f"Message-ID: <{token}@lab-sender.test>\r\n\r\nmailforge verify probe {token}\r\n"
    )
    base = {"kind": "smtp", "host": host, "port": port, "sender": SENDER, "helo": "client.lab-sender.test", "timeout": 30}
    # Copies of the test mail (Message-ID <token-N@...>), back to back, so that every relay delivers one to a core over TLS (hop_checks).
    copies = [
        {**base, "host": h, "port": p, "recipient": recipient, "data": message.replace(f"Message-ID: <{token}@", f"Message-ID: <{token}-{n}@")}
        for n, (h, p) in enumerate(_hop_doors(inventory, (host, port)) if t.cores and any(r.name in shells for r in t.relays) else [])
    ]
    probes = [
        {**base, "recipient": recipient, "data": message},
        *copies,
        {**base, "recipient": f"nobody-{token}@{domain}"},
        {**base, "recipient": OUTSIDE},
    ]
    example = next((c.example for c in t.policy.header_checks if c.example), None)
    if example:
        probes.append({**base, "recipient": recipient, "data": f"From: <{SENDER}>\r\nTo: <{recipient}>\r\n{example}\r\n\r\nbody\r\n"})
    answers = run_probe(client, {"probes": probes})
    results = [answers[0], *answers[1 + len(copies) :]]
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
    cores = [c.name for c in t.cores if c.name in shells]
    delivered_on = None
    deadline = time.monotonic() + wait
    while accepted and cores and time.monotonic() < deadline and delivered_on is None:
        for core in cores:
            if shells[core].run(f"grep -rl {token} /var/mail/vhosts/{domain}/ 2>/dev/null").returncode == 0:
                delivered_on = core
                break
        else:
            time.sleep(2)
    if cores:  # with a --limit that leaves out every core, no mailbox to look into
        checks.append(
            Check(
                "mail",
                f"message arrives in the core's mailbox of {recipient}",
                delivered_on or client.name,  # a row is under one host: the core it reached, else the prober
                delivered_on is not None,
                f"found on {delivered_on}" if delivered_on else f"not delivered within {wait} s" if accepted else "not accepted, so not delivered",
            )
        )
    if copies:
        checks += hop_checks(inventory, shells, token, max(5.0, deadline - time.monotonic()))

    addresses = client.run("hostname -I")
    words = addresses.stdout.decode(errors="replace").split()
    client_address = words[0] if addresses.returncode == 0 and words else None
    if t.load_balancers and t.proxy_protocol != "none" and any(r.name in shells for r in t.relays):
        seen = [
            r.name
            for r in t.relays
            if r.name in shells and client_address and shells[r.name].run(f"grep -F 'CONNECT from [{client_address}]' /var/log/mail.log").returncode == 0
        ]
        checks.append(
            Check(
                "proxy",
                "relay logs show the client's own address",
                seen[0] if len(seen) == 1 else client.name,  # one host per row: the relay that logged it, else the prober
                bool(seen),
                f"postscreen logged CONNECT from [{client_address}] on {', '.join(seen)}" if seen else f"no relay logged CONNECT from [{client_address}]",
            )
        )

    if listed_client is not None and t.policy.rbl_clients:
        spam = run_probe(listed_client, {"probes": [{**base, "helo": "spammer.lab-sender.test", "recipient": recipient}]})[0]
        code = _code(spam, "rcpt") or _code(spam, "error")
        checks.append(
            Check(
                "mail",
                "DNSBL-listed client is refused",
                listed_client.name,
                code is not None and 500 <= code < 600 and "blocked" in _describe(spam),
                _describe(spam),
            )
        )

    checks += outbound_checks(inventory, shells, client, client_address, submitter, wait)

    walls = []
    for c in t.cores:
        if c.name not in shells:  # only the hosts this run covers (--limit)
            continue
        walls.append(("walls", f"core {c.name} port 25 gives strangers no banner", c.address, 25))
    if t.load_balancers:
        for relay in t.relays:
            if relay.name not in shells:
                continue
            walls.append(("walls", f"relay {relay.name} port {t.backend_port} gives non-balancers no banner", relay.address, t.backend_port))
    if walls:
        answers = run_probe(client, {"concurrent": True, "probes": [{"kind": "banner", "host": h, "port": p, "timeout": 4} for _, _, h, p in walls]})
        for (group, name, _, _), answer in zip(walls, answers, strict=True):
            checks.append(
                Check(
                    group,
                    name,
                    client.name,
                    answer["banner"] is None,
                    f"banner {answer['banner']!r}" if answer["banner"] is not None else answer.get("error", "no answer"),
                )
            )
    return checks


def _queue_id(result: dict) -> str | None:
    """The queue ID in a 250 reply to DATA ("250 2.0.0 Ok: queued as 4cX1...")."""
    data = result["stages"].get("data")
    match = re.search(r"queued as ([0-9A-Za-z]+)", data[1]) if data and data[0] == 250 else None
    return match.group(1) if match else None


def _delivery(shell: HostShell, syslog_name: str, queue_id: str, recipient: str, wait: int) -> str | None:
    """The outcome the instance logs for its first delivery attempt of `queue_id` to `recipient`
    ("relay=..., ..., status=sent (...)"), waiting up to `wait` seconds for it; None if none is logged."""
    pattern = re.escape(f"{syslog_name}/smtp[") + r"[0-9]+\]: " + re.escape(f"{queue_id}: to=<{recipient}>,") + ".* status="
    deadline = time.monotonic() + wait
    while True:
        found = shell.run(f"grep -m1 -E {shlex.quote(pattern)} /var/log/mail.log")
        line = found.stdout.decode(errors="replace").strip()
        if found.returncode == 0 and line:
            return line[line.index("relay=") :] if "relay=" in line else line
        if time.monotonic() >= deadline:
            return None
        time.sleep(2)


def outbound_checks(
    inventory: Inventory,
    shells: dict[str, HostShell],
    client: HostShell,
    client_address: str | None,
    submitter: HostShell | None,
    wait: int,
) -> list[Check]:
    """An MX proxy's outbound instance: a host in `trusted_networks` submits on its port and the mail is
    delivered to an outside domain's mail server; a host outside them is refused, by the firewall (no
    banner) or by Postfix (5xx before DATA). The submission runs from the `submitter` (the lab's), the
    refusal from the probing client when its address lies outside every trusted network."""
    checks: list[Check] = []
    t = inventory.topology
    domain = sorted(t.domains)[0]
    outside_domain = OUTSIDE_MAILBOX.split("@", 1)[1]
    for relay in t.relays:
        outbound = relay.instances.outbound if relay.instances else None
        if outbound is None or relay.name not in shells:  # only the hosts this run covers (--limit)
            continue
        where = f"{relay.name} port {outbound.port}"
        base = {"kind": "smtp", "host": relay.address, "port": outbound.port, "recipient": OUTSIDE_MAILBOX, "timeout": 30}
        if submitter is not None:
            token = uuid.uuid4().hex[:12]
            sender = f"postmaster@{domain}"
            message = (
                f"From: <{sender}>\r\nTo: <{OUTSIDE_MAILBOX}>\r\nSubject: mailforge verify outbound {token}\r\n"
                f"Message-ID: <{token}@{domain}>\r\n\r\nmailforge verify outbound probe {token}\r\n"
            )
            sent = run_probe(submitter, {"probes": [{**base, "sender": sender, "helo": "submitter.lab-sender.test", "data": message}]})[0]
            queue_id = _queue_id(sent)
            checks.append(
                Check("outbound", f"mail from trusted_networks to {outside_domain} accepted on {where}", submitter.name, queue_id is not None, _describe(sent))
            )
            outcome = _delivery(shells[relay.name], "postfix-outbound", queue_id, OUTSIDE_MAILBOX, wait) if queue_id else None
            checks.append(
                Check(
                    "outbound",
                    f"{relay.name} delivers it to {outside_domain}'s mail server",
                    relay.name,
                    outcome is not None and "status=sent" in outcome,
                    outcome or (f"no delivery attempt logged within {wait} s" if queue_id else "not accepted, so not delivered"),
                )
            )
        trusted = [ipaddress.ip_network(n) for n in outbound.trusted_networks]
        if client_address and not any(ipaddress.ip_address(client_address) in n for n in trusted):
            probe = {**base, "sender": SENDER, "helo": "client.lab-sender.test", "timeout": 4}
            answer = run_probe(client, {"probes": [probe]})[0]
            stages, rcpt = answer["stages"], _code(answer, "rcpt")
            dropped = "banner" not in stages  # the connection got no banner: the firewall dropped it (or refused it)
            rejected = not (rcpt and rcpt < 400) and any(500 <= code < 600 for code, _ in stages.values())  # Postfix said 5xx, RCPT not taken
            evidence = f"no banner: {stages['error'][1]}" if dropped and "error" in stages else _describe(answer)
            checks.append(Check("outbound", f"mail from outside trusted_networks refused on {where}", client.name, dropped or rejected, evidence))
    return checks


# --- DKIM and DMARC: what a receiver on the Internet sees -------------------------------------------


def _mailbox_message(mbox: str, token: str) -> bytes | None:
    """The message whose Message-ID holds `token` in an mbox (Postfix's local delivery), as the receiver
    got it, with CRLF line ends (what DKIM's canonicalization is defined on); None if absent."""
    for chunk in re.split(r"(?m)^From \S+ .*\n", mbox):
        if f"Message-ID: <{token}@" in chunk:
            lines = [line[1:] if re.match(r">+From ", line) else line for line in chunk.rstrip("\n").split("\n")]
            return ("\r\n".join(lines) + "\r\n").encode()
    return None


def dkim_dnsfunc(nameservers: list[tuple[str, int]]):
    """dkimpy's DNS lookup, through `nameservers` (verify's: the lab DNS with --lab), never the system's."""
    from .dns import Querier

    querier = Querier(nameservers)

    def txt(name, timeout=5):
        answer = querier.lookup(name.decode() if isinstance(name, bytes) else name, "TXT")
        return answer.values[0].encode() if answer.status == "ok" and answer.values else None

    return txt, querier


@dataclass(frozen=True)
class Signature:
    """One DKIM-Signature of a received message, as dkimpy judged it against DNS."""

    domain: str
    selector: str
    algorithm: str
    ok: bool
    reason: str


def dkim_signatures(message: bytes, dnsfunc) -> list[Signature]:
    """Every DKIM-Signature of `message`, each verified by dkimpy (the reason it gives when one fails)."""
    import logging

    import dkim

    class Reasons(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    found = []
    count = sum(1 for line in message.split(b"\r\n") if line.lower().startswith(b"dkim-signature:"))
    for index in range(count):
        handler = Reasons()
        logger = logging.getLogger(f"mailforge.verify.dkim.{index}")
        logger.propagate, logger.level = False, logging.DEBUG
        logger.handlers = [handler]
        checker = dkim.DKIM(message, logger=logger)
        try:
            ok = bool(checker.verify(idx=index, dnsfunc=dnsfunc))
            reason = "" if ok else "; ".join(line for line in handler.lines if line) or "signature does not verify"
        except dkim.DKIMException as exc:
            ok, reason = False, str(exc)
        fields = checker.signature_fields or {}
        found.append(
            Signature(
                fields.get(b"d", b"?").decode(errors="replace").lower(),
                fields.get(b"s", b"?").decode(errors="replace"),
                fields.get(b"a", b"?").decode(errors="replace"),
                ok,
                reason,
            )
        )
    return found


ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}


def _aligned(signer: str, domain: str, strict: bool) -> bool:
    """DMARC identifier alignment (RFC 7489 3.1.1) of a signature's d= with the From domain; relaxed
    here compares the domains as organizational domains do when one lies under the other."""
    return signer == domain or (not strict and (signer.endswith("." + domain) or domain.endswith("." + signer)))


def dkim_checks(
    inventory: Inventory,
    shells: dict[str, HostShell],
    client: HostShell,
    user: HostShell | None,
    nameservers: list[tuple[str, int]] | None,
    wait: int,
) -> list[Check]:
    """DKIM as a receiver on the Internet judges it: from the `user` host (in a core's user network: the
    lab's), one message per signed domain goes to each core, which signs and delivers it to the outside
    domain's mail server (in the lab, the client, whose mailbox is read through its shell); each received
    message must carry, for every algorithm of dkim.algorithms, a signature by d= its From domain that
    dkimpy verifies against the DNS (`nameservers`), and pass DMARC: a _dmarc record and an aligned
    signature. Nothing without dkim or without a host to send from."""
    t = inventory.topology
    if t.dkim is None or user is None:
        return []
    from .dns import system_nameservers
    from .render.dkim import signed_domains

    dnsfunc, querier = dkim_dnsfunc(nameservers or system_nameservers())
    outside_domain = OUTSIDE_MAILBOX.split("@", 1)[1]
    mailbox_of = "/var/mail/$(id -un)"  # the outside mail server delivers any address there to its admin's mailbox
    checks: list[Check] = []
    for core in t.cores:
        if core.name not in shells or not core.user_networks:
            continue
        sent: dict[str, str] = {}  # domain -> the token of its message
        probes = []
        for domain in signed_domains(t):
            token = uuid.uuid4().hex[:12]
            sender = f"postmaster@{domain}"
            date = datetime.datetime.now(datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
            data = (
                f"From: <{sender}>\r\nTo: <{OUTSIDE_MAILBOX}>\r\nDate: {date}\r\nSubject: mailforge verify dkim {token}\r\n"
                f"Message-ID: <{token}@{domain}>\r\n\r\nmailforge verify DKIM probe {token}: signed by {core.name}\r\n"
            )
            probes.append(
                {
                    "kind": "smtp",
                    "host": core.address,
                    "port": 25,
                    "sender": sender,
                    "recipient": OUTSIDE_MAILBOX,
                    "helo": "user.lab-sender.test",
                    "data": data,
                    "timeout": 30,
                }
            )
            sent[domain] = token
        answers = run_probe(user, {"probes": probes})
        queued = {}
        for domain, answer in zip(sent, answers, strict=True):
            queue_id = _queue_id(answer)
            queued[domain] = queue_id
            checks.append(
                Check(
                    "dkim",
                    f"mail from {domain} in the user network to {outside_domain} accepted by {core.name}",
                    user.name,
                    queue_id is not None,
                    _describe(answer),
                )
            )
        deadline = time.monotonic() + wait
        received: dict[str, bytes] = {}
        while time.monotonic() < deadline and len(received) < sum(1 for q in queued.values() if q):
            mbox = client.run(f"cat {mailbox_of} 2>/dev/null").stdout.decode(errors="replace")
            for domain, token in sent.items():
                message = _mailbox_message(mbox, token)
                if message is not None:
                    received[domain] = message
            if len(received) < sum(1 for q in queued.values() if q):
                time.sleep(1)
        for domain in sent:
            what = f"{domain} signed by {core.name}"
            message, queue_id = received.get(domain), queued[domain]
            if message is None:
                outcome = _delivery(shells[core.name], "postfix", queue_id, OUTSIDE_MAILBOX, 1) if queue_id else None
                detail = (
                    (f"not in {outside_domain}'s mailbox within {wait} s" + (f"; {core.name} logged {outcome}" if outcome else ""))
                    if queue_id
                    else "not accepted, so not delivered"
                )
                checks.append(Check("dkim", f"DKIM: {what} verifies", core.name, False, detail))
                continue
            signatures = dkim_signatures(message, dnsfunc)
            problems: list[str] = []
            good: list[str] = []
            for algorithm in t.dkim.algorithms:
                mine = [s for s in signatures if s.algorithm == ALGORITHMS[algorithm] and s.domain == domain]
                if not mine:
                    problems.append(
                        f"no {ALGORITHMS[algorithm]} signature by d={domain} (signatures: {', '.join(f'{s.domain}/{s.selector} {s.algorithm}' for s in signatures) or 'none'})"
                    )
                for s in mine:
                    (good if s.ok else problems).append(f"d={s.domain} s={s.selector} a={s.algorithm}" + ("" if s.ok else f": {s.reason}"))
            checks.append(
                Check("dkim", f"DKIM: {what} verifies", core.name, not problems, "; ".join(problems) or "verified with dkimpy against DNS: " + ", ".join(good))
            )
            record = querier.lookup(f"_dmarc.{domain}", "TXT")
            dmarc = next((v for v in record.values if v.replace(" ", "").lower().startswith("v=dmarc1")), None) if record.status == "ok" else None
            strict = t.dmarc is not None and t.dmarc.dkim_alignment == "strict"
            aligned = [s for s in signatures if s.ok and _aligned(s.domain, domain, strict)]
            if dmarc is None:
                detail = f"no DMARC record at _dmarc.{domain} ({record.status})"
            elif not aligned:
                detail = f"no verifying DKIM signature aligned ({'strict' if strict else 'relaxed'}) with {domain}"
            else:
                detail = f"dkim=pass d={aligned[0].domain} aligned ({'strict' if strict else 'relaxed'}); {dmarc}"
            checks.append(Check("dkim", f"DMARC: {what} passes", core.name, dmarc is not None and bool(aligned), detail))
    return checks


def reachable(shells: dict[str, HostShell]) -> None:
    """Every host answers a shell, or verify stops (exit 2) naming the first that does not."""
    for name, shell in shells.items():
        result = shell.run("true", timeout=60)  # HostUnreachable when the host cannot be reached at all
        if result.returncode != 0:
            raise VerifyError(f"cannot reach {name} ({' '.join(shell.argv)}): {result.stderr.decode(errors='replace').strip()}")


def verify(
    inventory: Inventory,
    render_dir: Path,
    manifest: dict,
    shells: dict[str, HostShell],
    client: HostShell,
    listed_client: HostShell | None = None,
    wait: int = 60,
    door: tuple[str, int] | None = None,
    submitter: HostShell | None = None,
    trust: tuple[list, str] | None = None,
    shipped: dict[str, dict[str, str]] | None = None,
    user: HostShell | None = None,
    nameservers: list[tuple[str, int]] | None = None,
) -> list[Check]:
    """Every check, host rows first, against hosts already reached the way the caller chose; the mail
    goes through `door` (the caller asks `_front_door` before reaching any host), else `_front_door`.
    The inbound certificate is judged against `trust` (certificates, where from), else
    `tls.inbound.trust` of the cluster's store; the TLS files against `shipped` (host -> path -> sha256).
    With dkim, mail from `user` (a host in a core's user network) is signed and judged against the DNS
    at `nameservers` (else the system's)."""
    door = door or _front_door(inventory)
    roots, where = trust or inbound.trust(inventory, store_of(inventory.topology.cluster))  # bad tls.trust_file: exit 2 before any host is asked
    reachable({**shells, client.name: client})
    return (
        host_checks(inventory, render_dir, manifest, shells, shipped)
        + mail_checks(inventory, shells, client, listed_client, wait, door, submitter)
        + inbound_tls_checks(inventory, client, door, roots, where)
        + dkim_checks(inventory, shells, client, user, nameservers, wait)
    )


def results_of(checks: list[Check], cluster: str, warnings: list | None = None, hosts: list[str] | None = None) -> Run:
    """The checks in the result shape every command shares: one result per check, under its host
    (the probing client's name for the mail checks)."""
    return Run(
        "verify",
        cluster,
        [Result(c.host, c.name, ("warning" if c.warning else "ok") if c.ok else "failed", c.ok, detail=c.detail, data=asdict(c)) for c in checks],
        warnings=list(warnings or []),
        hosts=hosts,
    )
