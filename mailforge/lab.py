"""The container lab: one container per inventory host at the inventory's own addresses.

`lab up` starts them on a dedicated network with a client, a listed "spammer"
client and a DNS server (Knot from Debian's packages) serving `mailforge dns zone`
output for the hosted domains plus the test sender domain and test DNS lists, taking TSIG-signed
dynamic updates, with an ACME server beside it (Debian's pebble) for `mailforge certs --lab`, and, for an external
balancer (a cloud's, which no inventory host stands for), a stand-in that behaves as one; for an MX
proxy's outbound instance it adds a "submitter", an internal host inside `trusted_networks` (the
client and the spammer stay outside them), and makes the client the outside domain's mail server, so
mail the outbound instance sends out is really delivered. Then it deploys through exactly the path
`mailforge deploy` uses.  Containers talk to the Docker API through the
docker CLI, so a Docker engine or Podman's Docker-compatible service both work.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from . import dns
from .errors import MailforgeError
from .hosts import Reach
from .inventory import Inventory, LoadBalancer
from .inventory.releases import DEFAULT_RELEASE
from .remote import close_master
from .resources import script


def image_of(codename: str) -> str:
    """The lab image of a Debian release, built by lab-image --suite CODENAME."""
    return f"mailforge-lab/{codename}:latest"


IMAGE = image_of(DEFAULT_RELEASE)  # the lab's own containers (dns, client, spammer) and the role scenarios
# Every container and network `lab up` makes carries these labels. OWNER_LABEL holds the resolved
# inventory directory: two inventories may share a `cluster` name (and so container names), and
# only the owner's `lab up` adopts a container and only the owner's `lab down` removes it.
CLUSTER_LABEL = "mailforge.cluster"
HOST_LABEL = "mailforge.host"
OWNER_LABEL = "mailforge.inventory"
STAND_IN = "stand-in"  # the role of an external balancer's container (see `stand_in_cfg`)
SENDER_DOMAIN = "lab-sender.test"  # an outside domain the probes send from; it resolves in the lab only
OUTSIDE_DOMAIN = "elsewhere.test"  # a domain nobody hosts: relaying to it must be refused


class LabError(MailforgeError):
    """The lab could not be brought up, inspected or taken down."""


@dataclass(frozen=True)
class LabContainer:
    name: str  # container name
    host: str  # inventory host name, or client / spammer / dns
    address: str
    hostname: str
    role: str  # balancer, relay, mxproxy, core, client, dns, stand-in
    image: str = IMAGE  # the image of the host's Debian release (debian_release); the default release for the lab's own


@dataclass
class LabPlan:
    cluster: str
    network: str
    subnet: str
    containers: list[LabContainer] = field(default_factory=list)
    owner: str = ""  # the resolved inventory directory: the value of OWNER_LABEL on everything this lab makes

    def by_host(self, host: str) -> LabContainer:
        return next(c for c in self.containers if c.host == host)

    def get(self, host: str) -> LabContainer | None:
        return next((c for c in self.containers if c.host == host), None)

    def labels(self, host: str | None = None) -> list[str]:
        """`--label` arguments for the network (host None) or one container."""
        labels = {CLUSTER_LABEL: self.cluster, OWNER_LABEL: self.owner} | ({HOST_LABEL: host} if host else {})
        return [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]


def _subnets(addresses: list[str]) -> list[ipaddress.IPv4Network]:
    """Every network of at least /24 that holds every address, smallest first."""
    first = ipaddress.ip_address(addresses[0])
    nets = [cast(ipaddress.IPv4Network, ipaddress.ip_network(f"{first}/{prefix}", strict=False)) for prefix in range(24, 7, -1)]
    return [n for n in nets if all(ipaddress.ip_address(a) in n for a in addresses)]  # plan() lets only IPv4 addresses through


Networks = list[ipaddress.IPv4Network]


def _outside(subnet: ipaddress.IPv4Network, excluded: Networks) -> Networks:
    """The parts of `subnet` that lie outside every network of `excluded`."""
    parts = [subnet]
    for ex in excluded:
        kept: Networks = []
        for part in parts:
            if not part.overlaps(ex):
                kept.append(part)
            elif part.subnet_of(ex):
                continue
            else:  # ex lies inside part (two CIDR networks that overlap: one holds the other)
                kept.extend(part.address_exclude(ex))
        parts = kept
    return parts


def _within(subnet: ipaddress.IPv4Network, networks: Networks) -> Networks:
    """The parts of `subnet` that lie inside one of `networks`."""
    return [subnet if subnet.subnet_of(n) else n for n in networks if n.overlaps(subnet)]


def _pick(subnet: ipaddress.IPv4Network, allowed: Networks, taken: set[str], preferred: int) -> str | None:
    """An address for one of the lab's own containers: subnet + `preferred` if it is allowed and free,
    else the highest free address of the allowed parts; None if there is none."""
    candidate = subnet.network_address + preferred
    if str(candidate) not in taken and any(candidate in part for part in allowed):
        return str(candidate)
    for part in sorted(allowed, key=lambda n: int(n.broadcast_address), reverse=True):
        # bounded: each step passes one taken address (the hosts, the gateway, the network's ends)
        for number in range(int(part.broadcast_address), int(part.network_address) - 1, -1):
            address = str(ipaddress.IPv4Address(number))
            if address not in taken:
                return address
    return None


def trusted_networks(inventory: Inventory) -> Networks:
    """The IPv4 networks an MX proxy's outbound instance takes submissions from."""
    networks = [n for r in inventory.topology.relays if r.instances and r.instances.outbound for n in r.instances.outbound.trusted_networks]
    return [cast(ipaddress.IPv4Network, ipaddress.ip_network(n)) for n in networks if ipaddress.ip_network(n).version == 4]


def plan(inventory: Inventory) -> LabPlan:
    """Which containers the lab runs, where: a pure function of the topology.

    The network is the smallest of at least /24 that holds every host and has room for the lab's own
    containers: the DNS server (.53 where free), the client (.200) and the spammer (.201) outside every
    user network (strangers to the cores) and every outbound `trusted_networks` (strangers to the MX
    proxy's outbound instance), when an outbound instance exists, the submitter (.100) inside a
    trusted network, and, with dkim and a core's user network, the user (that network's last address)
    (.130 where it lies there) inside it. An address taken or not allowed gives way to the highest allowed free one."""
    t = inventory.topology
    prefix = f"mf-{t.cluster}"
    externals = [lb for lb in t.load_balancers if lb.external]
    addresses = [h.address for h in inventory.hosts if h.address] + [lb.address for lb in externals if lb.address]
    if any(ipaddress.ip_address(a).version != 4 for a in addresses):
        raise LabError("the lab supports IPv4 addresses only")
    user_networks = [cast(ipaddress.IPv4Network, ipaddress.ip_network(n)) for c in t.cores for n in c.user_networks if ipaddress.ip_network(n).version == 4]
    trusted = trusted_networks(inventory)
    hosts = [
        LabContainer(f"{prefix}-{h.name}", h.name, str(h.address), h.fqdn or f"{h.name}.lab", h.role.value, image_of(h.debian_release.codename))
        for h in inventory.hosts
    ]
    # (host, hostname, role, where it may stand, preferred offset)
    own = [
        ("dns", f"dns.{SENDER_DOMAIN}", "dns", "anywhere", 53),
        ("client", f"client.{SENDER_DOMAIN}", "client", "outside", 200),
        ("spammer", f"spammer.{SENDER_DOMAIN}", "client", "outside", 201),
    ]
    if trusted:
        own.append(("submitter", f"submitter.{SENDER_DOMAIN}", "client", "trusted", 100))
    if user_networks and t.dkim is not None:  # a user of a core, whose outbound mail the core signs (verify's DKIM rows)
        own.append(("user", f"user.{SENDER_DOMAIN}", "client", "users", 130))
    subnets = _subnets(addresses)
    if not subnets:
        raise LabError("the inventory's addresses are too far apart for one lab network")
    short = ""
    for subnet in subnets:
        allowed = {
            "anywhere": _outside(subnet, user_networks),
            "outside": _outside(subnet, user_networks + trusted),
            "trusted": _within(subnet, trusted),
            "users": _within(subnet, user_networks[:1]),
        }
        taken = set(addresses) | {str(subnet.network_address), str(subnet.network_address + 1), str(subnet.broadcast_address)}  # .1: the engine's gateway
        containers = list(hosts)
        for lb in externals:  # a cloud balancer's stand-in: at its address, else inside its source_networks (.10 preferred)
            if lb.address:  # among `addresses`, so inside every candidate subnet
                address: str | None = lb.address
            else:
                sources = [cast(ipaddress.IPv4Network, ipaddress.ip_network(n)) for n in lb.source_networks if ipaddress.ip_network(n).version == 4]
                address = _pick(subnet, _within(subnet, sources), taken, 10)
            if address is None:
                raise LabError(
                    f"no free address in {subnet} for the stand-in of external balancer {lb.name} "
                    f"(its address, or one in its source_networks {', '.join(lb.source_networks)})"
                )
            assert address is not None
            taken.add(address)
            containers.append(LabContainer(f"{prefix}-{lb.name}", lb.name, address, lb.fqdn or f"{lb.name}.lab", STAND_IN))
        for host, hostname, role, where, preferred in own:
            address = _pick(subnet, allowed[where], taken, preferred)
            if address is None:
                short = f"{host} ({'outside every user network and trusted_networks' if where == 'outside' else where})"
                break
            taken.add(address)
            containers.append(LabContainer(f"{prefix}-{host}", host, address, hostname, role))
        else:
            return LabPlan(t.cluster, f"{prefix}-net", str(subnet), containers, owner=str(inventory.directory.resolve()))
    raise LabError(f"no lab network up to {subnets[-1]} has a free address for the lab's {short}")


def front_door(inventory: Inventory) -> tuple[str, int] | None:
    """Where mail enters the lab when the front door is an external balancer: its stand-in's address
    and the balancer's frontend_port (what `verify --lab` sends to). None when the front door is one
    of the inventory's own hosts (a managed balancer, or the relays), which `verify` finds itself."""
    t = inventory.topology
    if t.managed_balancers or not t.load_balancers:
        return None
    lb = t.load_balancers[0]
    return plan(inventory).by_host(lb.name).address, lb.frontend_port


# --- labs that cannot hurt each other ------------------------------------------


@dataclass(frozen=True)
class Found:
    """A container or network the engine already has, as the clash checks see it."""

    kind: str  # "container" or "network"
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    subnets: tuple[str, ...] = ()  # a network's

    @property
    def owner(self) -> str | None:
        return self.labels.get(OWNER_LABEL)

    def whose(self) -> str:
        if self.owner:
            return f"the lab of {self.owner}"
        if CLUSTER_LABEL in self.labels:
            return f"a lab of cluster {self.labels[CLUSTER_LABEL]!r} made without the {OWNER_LABEL} label (Molecule, or an older mailforge)"
        return "something other than mailforge"


def clashes(lab: LabPlan, found: list[Found]) -> list[str]:
    """Why `lab up` of `lab` would take or break what another lab (or anything else) holds: a container or
    the network of a planned name that `lab` does not own, or a network whose subnet overlaps the lab's.
    Empty when the lab may go ahead. Pure: `survey` gathers `found`."""
    problems = []
    planned = {c.name for c in lab.containers}
    subnet = ipaddress.ip_network(lab.subnet)
    for f in found:
        if f.owner == lab.owner and f.owner:
            if f.kind == "network" and f.name == lab.network and lab.subnet not in f.subnets:
                problems.append(
                    f"network {f.name} is this lab's but has subnet {', '.join(f.subnets) or 'none'}, and the inventory now needs {lab.subnet}: "
                    "run `mailforge lab down` first"
                )
            continue
        if f.kind == "container" and f.name in planned:
            problems.append(f"container {f.name} belongs to {f.whose()}")
        elif f.kind == "network" and f.name == lab.network:
            problems.append(f"network {f.name} belongs to {f.whose()}")
        elif f.kind == "network":
            overlapping = [s for s in f.subnets if ipaddress.ip_network(s).version == subnet.version and ipaddress.ip_network(s).overlaps(subnet)]
            if overlapping:
                problems.append(f"network {f.name} of {f.whose()} has subnet {', '.join(overlapping)}, which overlaps this lab's {lab.subnet}")
    return problems


def clash_message(lab: LabPlan, problems: list[str]) -> str:
    return (
        f"the lab of {lab.owner} (cluster {lab.cluster!r}) would clash with another lab; nothing was changed:\n  "
        + "\n  ".join(problems)
        + "\nBring the other lab down (`mailforge lab down` with its inventory), or give this inventory another `cluster` name "
        "(the lab's names are mf-<cluster>-...) and addresses in another subnet."
    )


def leftovers(lab: LabPlan, found: list[Found]) -> tuple[list[Found], list[Found]]:
    """(what `lab down` removes, what it leaves): it removes only what this lab's `lab up` made (its
    OWNER_LABEL), and names the containers of its planned names that belong to someone else."""
    planned = {c.name for c in lab.containers} | {lab.network}
    mine = [f for f in found if f.owner and f.owner == lab.owner]
    others = [f for f in found if f.name in planned and f not in mine]
    # containers before the network they are attached to
    return sorted(mine, key=lambda f: f.kind == "network"), others


def survey(env: dict[str, str], lab: LabPlan) -> list[Found]:
    """The containers of the lab's planned names or with its owner label, and every network."""
    names = [c.name for c in lab.containers]
    labelled = docker(env, "ps", "-a", "--filter", f"label={OWNER_LABEL}={lab.owner}", "--format", "{{.Names}}").stdout.split()
    found = []
    for name in dict.fromkeys([*names, *labelled]):
        result = docker(env, "container", "inspect", "--format", "{{json .Config.Labels}}", name, check=False)
        if result.returncode == 0:
            found.append(Found("container", name, json.loads(result.stdout or "null") or {}))
    networks = docker(env, "network", "ls", "--format", "{{.Name}}").stdout.split()
    if networks:
        for net in json.loads(docker(env, "network", "inspect", *networks).stdout or "[]"):
            subnets = tuple(c["Subnet"] for c in (net.get("IPAM") or {}).get("Config") or [] if c.get("Subnet"))
            found.append(Found("network", net["Name"], net.get("Labels") or {}, subnets))
    return found


# --- the DNS the lab's hosts resolve through ----------------------------------


DNS_DIRECTORY = "/etc/mailforge-dns"  # in the DNS container: knot.conf, the zone files, Knot's state and log
DNS_KEY_FILE = f"{DNS_DIRECTORY}/tsig.conf"  # the TSIG key's `key:` section (0600), included by knot.conf
ACME_DIRECTORY = "/etc/mailforge-acme"  # in the DNS container: pebble's configuration, listener certificate and log
ACME_PORT = 14000  # pebble's ACME directory: https://<dns container>:14000/dir
ACME_MANAGEMENT_PORT = 15000  # pebble's management API: /roots/0 is the root its certificates chain to


def lab_records(inventory: Inventory, lab: LabPlan) -> list[dns.Record]:
    """What the lab adds to the published records, and only what `dns zone` has no business printing:
    the probes' own sender domain, names and PTRs for containers the topology does not name, MX records
    naming a balancer that has no fqdn by its lab name (where `dns zone` prints none), and the test DNS
    lists (listing their RFC 5782 test entry and the lab's "spammer" client)."""
    t = inventory.topology
    published = dns.zone_records(t)
    covered = {(r.name, r.rtype) for r in published}
    zones = [*t.domains, SENDER_DOMAIN, *dict.fromkeys(r.zone for r in published)]
    client = lab.by_host("client")
    records = [
        dns.Record(SENDER_DOMAIN, SENDER_DOMAIN, "MX", f"{dns.MX_PREFERENCE} mail.{SENDER_DOMAIN}.", "the lab's outside sender domain"),
        dns.Record(SENDER_DOMAIN, f"mail.{SENDER_DOMAIN}", "A", client.address, "the lab's client"),
    ]
    if dns.missing_mx(t):  # balancers without an fqdn: the lab names them itself, as `dns zone` tells the admin to
        for c in lab.containers:
            if c.role in ("balancer", STAND_IN):
                records += [
                    dns.Record(d, d, "MX", f"{dns.MX_PREFERENCE} {c.hostname}.", "the lab's name for a balancer without fqdn") for d in sorted(t.domains)
                ]
    for c in lab.containers:
        if (c.hostname, "A") not in covered:
            records.append(dns.Record(dns.zone_of(c.hostname, zones), c.hostname, "A", c.address, f"lab {c.role} {c.host}"))
        if (dns.reverse_name(c.address), "PTR") not in covered:
            records.append(dns.Record(dns.reverse_zone(c.address)[0], dns.reverse_name(c.address), "PTR", f"{c.hostname}.", f"lab {c.role} {c.host}"))
    return records + dns.dnsbl_records(t, listed=[lab.by_host("spammer").address])


def dns_files(inventory: Inventory, lab: LabPlan, tlsa: Sequence[dns.Record] = (), serial: int = 1) -> dict[str, str]:
    """{path in the DNS container: text}: Knot's configuration and one zone file per zone (the TSIG key is
    not here: it goes in DNS_KEY_FILE, which knot.conf includes, so these files can be shown and compared).

    Each zone file is the SOA and NS, then that zone's section of `mailforge dns zone` output pasted
    as it is, then the lab's own records (`lab_records`): the lab's DNS is what the tool says the
    world's should be, so `verify` and `dns check` against the lab test the published records.
    Pure: `tlsa` are the TLSA records `dns zone` prints from the TLS store (`published_tlsa` reads them),
    `serial` the zones' SOA serial.
    """
    server = lab.by_host("dns")
    zones = dns.served_zones(inventory.topology, lab_records(inventory, lab), server.hostname, tlsa=tlsa, serial=serial)
    from .dns.knot import knot_conf
    from .tls.acmelab import TSIG_NAME

    conf = knot_conf(list(zones), DNS_DIRECTORY, [server.address], key_file=(TSIG_NAME, DNS_KEY_FILE), log=f"{DNS_DIRECTORY}/knot.log")
    files = {f"{DNS_DIRECTORY}/knot.conf": conf}
    files.update({f"{DNS_DIRECTORY}/{dns.zone_file_name(zone)}": text for zone, text in zones.items()})
    return files


def start_dns(env: dict[str, str], lab: LabPlan, files: dict[str, str], key_section: str) -> None:
    """Install Knot (and pebble) in the DNS container if needed, stage `files` and the TSIG key section
    (0600), check them with Knot's own tools (`knotc conf-check`, `kzonecheck` where the package has it),
    then replace the running Knot's files and restart it: a set Knot refuses never replaces the one it
    serves. An NSD left by an older lab is stopped: Knot takes port 53 over."""
    name = lab.by_host("dns").name
    # policy-rc.d keeps the packages from starting Knot on their own default configuration.
    _exec(
        env,
        name,
        "{ command -v knotd && command -v pebble; } >/dev/null || { printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d"
        " && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends knot pebble >/dev/null; }",
    )
    staged = _stage_dns(env, name, files, key_section)
    conf = f"{DNS_DIRECTORY}/knot.conf"
    zones = [Path(path).name.removesuffix(".zone") for path in files if path.endswith(".zone")]
    loaded = " && ".join(f"knotc -c {conf} zone-read {shlex.quote(zone)} @ SOA >/dev/null 2>&1" for zone in zones) or "true"
    _exec(
        env,
        name,
        f"pkill -f '^nsd -c'; pkill -f '^knotd -d -c {conf}'; "
        f"for i in $(seq 100); do pgrep -f '^(nsd -c|knotd -d -c {conf})' >/dev/null || break; sleep 0.1; done; "
        f"rm -rf {DNS_DIRECTORY} && mv {staged} {DNS_DIRECTORY} && knotd -d -c {conf} && "
        f"for i in $(seq 150); do {loaded} && exit 0; sleep 0.1; done; "
        f"echo 'Knot did not start:' >&2; cat {DNS_DIRECTORY}/knot.log >&2; exit 1",
    )


def _stage_dns(env: dict[str, str], name: str, files: dict[str, str], key_section: str) -> str:
    """Write `files` and the TSIG key section (0600) to a staging directory beside DNS_DIRECTORY in the DNS
    container and check them with Knot's own tools; returns the staging directory. A set Knot refuses
    raises LabError and never reaches the directory Knot serves from."""
    staged = f"{DNS_DIRECTORY}.new"
    staged_paths = {path: staged + path[len(DNS_DIRECTORY) :] for path in files}
    _exec(env, name, f"rm -rf {staged} && mkdir -p -m 700 {staged}")
    for path, text in files.items():
        docker(env, "exec", "-i", name, "sh", "-c", f"cat > {shlex.quote(staged_paths[path])}", stdin=text)
    docker(env, "exec", "-i", name, "sh", "-c", f"umask 077 && cat > {staged}{DNS_KEY_FILE[len(DNS_DIRECTORY) :]}", stdin=key_section)
    checks = [f"sed 's#{DNS_DIRECTORY}/#{staged}/#g' {staged}/knot.conf > {staged}/check.conf", f"knotc -c {staged}/check.conf conf-check >/dev/null"] + [
        f"if command -v kzonecheck >/dev/null; then kzonecheck -o {shlex.quote(Path(path).name.removesuffix('.zone'))} {shlex.quote(staged_paths[path])}; fi"
        for path in files
        if path.endswith(".zone")
    ]
    result = docker(env, "exec", name, "sh", "-c", " && ".join(checks) + f" && rm {staged}/check.conf", check=False)
    if result.returncode != 0:
        raise LabError(f"Knot refuses the lab's configuration or zones: {(result.stderr or result.stdout).strip()}")
    return staged


def published_tlsa(inventory: Inventory) -> list[dns.Record]:
    """The TLSA records `mailforge dns zone` prints for this inventory now: read from its TLS store (public
    halves only; the next MX key is made there if absent, as `dns zone` does). Empty without tls.dane."""
    from .dns.tlsa import store_tlsa
    from .tls import store_of

    return store_tlsa(inventory.topology, store_of(inventory.topology.cluster))[0]


def published_dkim(inventory: Inventory) -> list[dns.Record]:
    """The DKIM TXT records `mailforge dns zone` prints now, from the DKIM store (a domain's first key is
    made there if it has none, as `dns zone` does). Empty without dkim."""
    if inventory.topology.dkim is None:
        return []
    from . import dkim
    from .tls import store_of

    store = store_of(inventory.topology.cluster)
    dkim.ensure_keys(inventory.topology, store)
    return dkim.dkim_records(inventory.topology, store)


def published(inventory: Inventory) -> list[dns.Record]:
    """The records from the controller's stores that `dns zone` prints beside the topology's: TLSA, DKIM."""
    return published_tlsa(inventory) + published_dkim(inventory)


def _txt_strings(text: str) -> str:
    """The joined character-strings of a TXT rdata as Knot prints it ("a" "b" -> ab)."""
    return "".join(part.replace('\\"', '"') for part in re.findall(r'"((?:[^"\\]|\\.)*)"', text))


def mark_dkim_seen(inventory: Inventory, env: dict[str, str], lab: LabPlan) -> list[str]:
    """Ask the lab's own Knot for every published DKIM selector's TXT and record those that carry exactly
    their key as seen (`dkim.record_seen`), as `dns check` does against real DNS: in the lab, signing
    starts with the first deploy. Returns the record names seen."""
    if inventory.topology.dkim is None:
        return []
    from . import dkim
    from .tls import store_of

    store = store_of(inventory.topology.cluster)
    name = lab.by_host("dns").name
    conf = f"{DNS_DIRECTORY}/knot.conf"
    seen: dict[tuple[str, str], str] = {}
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    for key in dkim.published_keys(inventory.topology, store):
        owner = f"{key.selector}._domainkey.{key.domain}."  # absolute: knotc reads a name without the dot as relative
        answer = docker(env, "exec", name, "knotc", "-c", conf, "zone-read", key.domain, owner, "TXT", check=False).stdout
        values = [_txt_strings(line.split(" TXT ", 1)[1]) for line in answer.splitlines() if " TXT " in line]
        if key.public_txt() in values:
            seen[(key.domain, key.selector)] = now
    dkim.record_seen(inventory.topology, store, seen)
    return sorted(f"{selector}._domainkey.{domain}" for domain, selector in seen)


def publish_dns(inventory: Inventory, env: dict[str, str]) -> None:
    """Rewrite the running lab DNS's zone files to what `dns zone` prints now, and have Knot reload them.

    Needed after `certs` on a fresh machine: the lab DNS starts before there is an MX key (the store is
    empty), so its TLSA records name only the next key until the zones are published again. The files are
    checked first (a set Knot refuses never replaces the served one), the SOA serial is the time so Knot
    sees the zones grew, and Knot reloads (`knotc reload`), keeping its process and the TSIG key."""
    lab = plan(inventory)
    name = lab.by_host("dns").name
    serial = int(time.time())
    files = dns_files(inventory, lab, tlsa=published(inventory), serial=serial)
    key = docker(env, "exec", name, "cat", DNS_KEY_FILE).stdout
    staged = _stage_dns(env, name, files, key)
    conf = f"{DNS_DIRECTORY}/knot.conf"
    zones = [Path(path).name.removesuffix(".zone") for path in files if path.endswith(".zone")]
    copies = " && ".join(f"mv {shlex.quote(staged + path[len(DNS_DIRECTORY) :])} {shlex.quote(path)}" for path in files)
    serials = " && ".join(f"knotc -c {conf} zone-read {shlex.quote(zone)} @ SOA 2>/dev/null | grep -q ' {serial} '" for zone in zones) or "true"
    _exec(
        env,
        name,
        f"{copies} && rm -rf {staged} && knotc -c {conf} reload >/dev/null && "
        f"for i in $(seq 150); do {serials} && exit 0; sleep 0.1; done; "
        f"echo 'Knot did not load the published zones:' >&2; tail -20 {DNS_DIRECTORY}/knot.log >&2; exit 1",
    )


@dataclass(frozen=True)
class AcmeFiles:
    """The lab's ACME material on the controller, in its state directory: the TSIG key Knot takes updates
    with, and the small CA whose only certificate is pebble's HTTPS listener (tls.acme.ca_file in the lab)."""

    directory: Path

    @property
    def tsig(self) -> Path:
        return self.directory / "acme-tsig.key"

    @property
    def listener_ca(self) -> Path:
        return self.directory / "acme-listener-ca.pem"

    @property
    def listener_cert(self) -> Path:
        return self.directory / "acme-listener.pem"

    @property
    def listener_key(self) -> Path:
        return self.directory / "acme-listener-key.pem"


def acme_files(inventory: Inventory) -> AcmeFiles:
    return AcmeFiles(keys(inventory).directory)


def make_acme_files(inventory: Inventory, lab: LabPlan):
    """The TSIG key and the listener CA, made once (0600 in the 0700 state directory); returns the key."""
    from .tls import acmelab
    from .tls.acme import parse_tsig

    files = acme_files(inventory)
    files.directory.mkdir(parents=True, exist_ok=True)
    files.directory.chmod(0o700)
    address = lab.by_host("dns").address
    if not files.tsig.is_file():
        _private(files.tsig, acmelab.tsig_text(acmelab.new_tsig()).encode())
    stamp = files.directory / "acme-listener.address"  # the address the listener certificate names
    current = stamp.read_text().split() if stamp.is_file() else []
    if not (files.listener_cert.is_file() and files.listener_key.is_file() and files.listener_ca.is_file() and current == [address]):
        ca, cert, key = acmelab.listener_ca([lab.by_host("dns").hostname], [address])
        _private(files.listener_key, key)
        files.listener_cert.write_bytes(cert)
        files.listener_ca.write_bytes(ca)
        stamp.write_text(address + "\n")
    return parse_tsig(files.tsig.read_text())


def _private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(0o600)


def start_acme(env: dict[str, str], inventory: Inventory, lab: LabPlan) -> None:
    """pebble in the DNS container (installed by `start_dns`), validating DNS-01 against the Knot beside it;
    started once and left running, since each start makes a new root (the store's trust.pem)."""
    from .tls import acmelab

    name, address = lab.by_host("dns").name, lab.by_host("dns").address
    files = acme_files(inventory)
    config = acmelab.pebble_config(
        f"{address}:{ACME_PORT}", f"{address}:{ACME_MANAGEMENT_PORT}", f"{ACME_DIRECTORY}/listener.pem", f"{ACME_DIRECTORY}/listener-key.pem"
    )
    environment = " ".join(f"{k}={v}" for k, v in acmelab.PEBBLE_ENV.items())
    running = f"pebble -config {ACME_DIRECTORY}/pebble.json"
    _exec(env, name, f"mkdir -p -m 700 {ACME_DIRECTORY}")
    staged = {"pebble.json": config, "listener.pem": files.listener_cert.read_text(), "listener-key.pem": files.listener_key.read_text()}
    for file, text in staged.items():
        docker(env, "exec", "-i", name, "sh", "-c", f"umask 077 && cat > {ACME_DIRECTORY}/{file}.new", stdin=text)
    # A running pebble keeps its root (the store's trust.pem) and is left alone unless its files changed.
    swap = " ".join(f"cmp -s {ACME_DIRECTORY}/{f}.new {ACME_DIRECTORY}/{f} || changed=1; mv {ACME_DIRECTORY}/{f}.new {ACME_DIRECTORY}/{f};" for f in staged)
    _exec(
        env,
        name,
        f"changed=; {swap} "
        f"if [ -n \"$changed\" ]; then pkill -f '^{running}'; for i in $(seq 50); do pgrep -f '^{running}' >/dev/null || break; sleep 0.1; done; fi; "
        f"pgrep -f '^{running}' >/dev/null && exit 0; "
        f"{environment} setsid nohup {running} -dnsserver {address}:53 >{ACME_DIRECTORY}/pebble.log 2>&1 </dev/null & "
        f"for i in $(seq 150); do grep -q 'ACME directory available' {ACME_DIRECTORY}/pebble.log && exit 0; sleep 0.1; done; "
        f"echo 'pebble did not start:' >&2; cat {ACME_DIRECTORY}/pebble.log >&2; exit 1",
    )


def acme_overrides(inventory: Inventory) -> dict:
    """What the lab puts in place of tls.acme's directory, ca_file, DNS server and TSIG key: its pebble and Knot."""
    from .tls.acme import parse_tsig

    files = acme_files(inventory)
    if not files.tsig.is_file() or not files.listener_ca.is_file():
        raise LabError(f"the lab of cluster {inventory.topology.cluster} has no ACME server yet: run `mailforge lab up` first")
    address = plan(inventory).by_host("dns").address
    return {
        "directory": f"https://{address}:{ACME_PORT}/dir",
        "ca_file": files.listener_ca,
        "server": address,
        "port": 53,
        "key": parse_tsig(files.tsig.read_text()),
    }


def acme_root(inventory: Inventory) -> bytes:
    """The root pebble's certificates chain to, from its management API (PEM)."""
    import requests

    address = plan(inventory).by_host("dns").address
    try:
        response = requests.get(f"https://{address}:{ACME_MANAGEMENT_PORT}/roots/0", verify=str(acme_files(inventory).listener_ca), timeout=10)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise LabError(f"the lab's pebble did not give its root: {exc}") from None
    return response.content


# --- an external balancer's stand-in -------------------------------------------

STAND_IN_CFG = "/etc/haproxy/haproxy.cfg"  # in the stand-in container
STAND_IN_PID = "/run/haproxy.pid"
STAND_IN_COMMAND = "/usr/local/sbin/mailforge-standin"  # its rotation command (mailforge/data/lab/mailforge-standin)
STAND_IN_SOCKET = "/run/haproxy/admin.sock"  # where rotation.ADMIN_SOCKET has a managed balancer's: the same runtime API
STAND_IN_BACKEND = "relays"  # as in a managed balancer's haproxy.cfg (rotation.BACKEND)
_SEND_PROXY = {"v1": " send-proxy", "v2": " send-proxy-v2", "none": ""}


def stand_in_cfg(inventory: Inventory, lab: LabPlan, balancer: LoadBalancer) -> str:
    """haproxy.cfg of the stand-in for an external `balancer`: lab only, never rendered for a cluster
    (nothing is deployed to an external balancer). It behaves as a cloud TCP balancer does: it takes
    connections on the balancer's frontend_port, sends each to one relay at backend_port with the
    PROXY header the inventory says, from its own address (inside source_networks), never tries
    another relay when one refuses, and checks health with a plain TCP connect (no PROXY header, no
    SMTP). Its admin socket gives the lab what a cloud's API gives: relays out of rotation and back."""
    t = inventory.topology
    me = lab.by_host(balancer.name)
    servers = "\n".join(
        f"    server {r.name} {r.address}:{t.backend_port} check inter 5s fall 2 rise 2{_SEND_PROXY[balancer.proxy_protocol]}" for r in t.relays
    )
    return f"""# mailforge lab: the stand-in for external balancer {balancer.name} of cluster '{t.cluster}'.
# Written by `mailforge lab up`; the lab's own, never part of the rendered cluster.
global
    log /dev/log local0
    stats socket {STAND_IN_SOCKET} mode 660 level admin
    maxconn 4096

defaults
    log global
    mode tcp
    option tcplog
    timeout connect 5s
    timeout client 6m
    timeout server 6m
    # a cloud balancer sends a connection to one target and does not try another
    retries 0

frontend smtp
    bind {me.address}:{balancer.frontend_port}
    default_backend {STAND_IN_BACKEND}

backend {STAND_IN_BACKEND}
    balance roundrobin
    # health: a plain TCP connect, as a cloud balancer's TCP health check
{servers}
"""


def start_stand_in(env: dict[str, str], container: LabContainer, cfg: str) -> None:
    """Install HAProxy in the stand-in if needed, check `cfg` with `haproxy -c`, then start HAProxy on
    it, or reload it when the configuration changed (a refused configuration never replaces the
    running one); and install the stand-in's rotation command."""
    name = container.name
    _exec(
        env,
        name,
        "command -v haproxy >/dev/null || { printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d"
        " && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; }",
    )
    docker(env, "exec", "-i", name, "sh", "-c", f"cat > {STAND_IN_CFG}.new", stdin=cfg)
    checked = docker(env, "exec", name, "haproxy", "-c", "-q", "-f", f"{STAND_IN_CFG}.new", check=False)
    if checked.returncode != 0:
        raise LabError(f"HAProxy refuses the stand-in's configuration: {(checked.stderr or checked.stdout).strip()}")
    command = script("mailforge-standin").read_text()
    docker(env, "exec", "-i", name, "sh", "-c", f"cat > {STAND_IN_COMMAND} && chmod 755 {STAND_IN_COMMAND}", stdin=command)
    running = f"[ -s {STAND_IN_PID} ] && kill -0 $(cat {STAND_IN_PID}) 2>/dev/null"
    _exec(
        env,
        name,
        f"mkdir -p /run/haproxy; if {running} && cmp -s {STAND_IN_CFG}.new {STAND_IN_CFG}; then rm {STAND_IN_CFG}.new; exit 0; fi; "
        f"mv {STAND_IN_CFG}.new {STAND_IN_CFG}; "
        f"if {running}; then haproxy -D -f {STAND_IN_CFG} -p {STAND_IN_PID} -sf $(cat {STAND_IN_PID}); else haproxy -D -f {STAND_IN_CFG} -p {STAND_IN_PID}; fi",
    )


# --- the outside world's mail server --------------------------------------------


OUTSIDE_MAIL_CF = f"""# mailforge lab: the mail server of the outside domain {SENDER_DOMAIN} (its MX names this client).
# Mail for any address there goes to the mailbox of {{admin}} (/var/mail/{{admin}}).
compatibility_level = 3.6
myhostname = mail.{SENDER_DOMAIN}
mydestination = {SENDER_DOMAIN}, $myhostname, localhost
local_recipient_maps =
luser_relay = {{admin}}
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
inet_interfaces = all
inet_protocols = ipv4
biff = no
"""


def start_outside_mail(env: dict[str, str], lab: LabPlan) -> None:
    """Make the lab's client the outside domain's mail server (the lab DNS gives `SENDER_DOMAIN` an MX
    naming it): Postfix from Debian's packages, taking mail for any address there into the admin user's
    mailbox. What an MX proxy's outbound instance sends out is then really delivered, as on the Internet."""
    name = lab.by_host("client").name
    # policy-rc.d keeps the package from starting Postfix on its own; "No configuration": the lab writes main.cf.
    _exec(
        env,
        name,
        "command -v postfix >/dev/null || { printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d"
        " && echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections"
        " && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null; }",
    )
    docker(env, "exec", "-i", name, "sh", "-c", "cat > /etc/postfix/main.cf", stdin=OUTSIDE_MAIL_CF.format(admin=ADMIN_USER))
    # No chroot: Postfix is started directly (no init system), so nothing copies /etc into its queue directory.
    _exec(
        env,
        name,
        "postconf -F '*/*/chroot = n' && postfix check && if postfix status >/dev/null 2>&1; then postfix reload; else postfix start; fi",
    )


# --- the engine -----------------------------------------------------------------


def engine_environment() -> dict[str, str]:
    """The environment in which the docker CLI reaches an engine: scripts/container-engine finds or starts one."""
    result = subprocess.run([str(script("container-engine"))], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise LabError(f"no container engine: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'scripts/container-engine failed'}")
    env = dict(os.environ)
    for line in result.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def docker(env: dict[str, str], *args: str, check: bool = True, timeout: int = 600, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout, input=stdin)
    if check and result.returncode != 0:
        raise LabError(f"docker {' '.join(args[:3])}...: {result.stderr.strip() or result.stdout.strip()}")
    return result


def build_image(env: dict[str, str], image: str = IMAGE) -> None:
    """Build the lab image `image_of(codename)` unless it exists."""
    codename = image.split("/", 1)[1].split(":", 1)[0]
    result = subprocess.run([str(script("lab-image")), "--suite", codename], env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise LabError(f"the lab image {image} could not be built: {result.stderr.strip()[-500:]}")


# --- SSH: the lab's hosts are reached as real hosts are ------------------------------------------------

ADMIN_USER = "mailforge"  # the lab's non-root admin user, allowed sudo without a password, as on a real host


@dataclass(frozen=True)
class LabKeys:
    """The lab's own SSH client key pair and known_hosts file, in its state directory (mode 0700)."""

    directory: Path

    @property
    def private_key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def public_key(self) -> Path:
        return self.directory / "id_ed25519.pub"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"


def keys(inventory: Inventory) -> LabKeys:
    """Where the lab of this inventory's cluster keeps its keys, under $XDG_STATE_HOME or ~/.local/state:
    one directory per cluster name, as the lab's containers are named after it, so every copy of an
    inventory reaches the one lab of its cluster."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return LabKeys(base / "mailforge" / "labs" / inventory.topology.cluster)


def make_key(lab_keys: LabKeys) -> str:
    """The lab's client key pair, made once (ed25519, no passphrase: it opens only throwaway containers);
    returns the public key."""
    lab_keys.directory.mkdir(parents=True, exist_ok=True)
    lab_keys.directory.chmod(0o700)
    if not lab_keys.private_key.is_file():
        result = subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"mailforge lab {lab_keys.directory.name}", "-f", str(lab_keys.private_key)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise LabError(f"ssh-keygen could not make the lab's key in {lab_keys.directory}: {result.stderr.strip()}")
    lab_keys.private_key.chmod(0o600)
    return lab_keys.public_key.read_text().strip()


def ssh_port(inventory: Inventory) -> int:
    """The port sshd listens on in the lab: the one the rendered firewall opens to the admin networks."""
    return inventory.topology.firewall.ssh_port


def start_sshd(env: dict[str, str], container: LabContainer, public_key: str, port: int) -> str:
    """Give the container the lab's admin user (its key authorised, sudo without a password), start sshd
    on `port`, and return the known_hosts line of its host key, read through `docker exec`: the trusted
    channel a real site has in its provisioning system."""
    script = (
        "set -e; "
        f"id -u {ADMIN_USER} >/dev/null 2>&1 || useradd -m -s /bin/sh {ADMIN_USER}; "
        f"install -d -m 700 -o {ADMIN_USER} -g {ADMIN_USER} /home/{ADMIN_USER}/.ssh; "
        f"printf '%s\\n' {shlex.quote(public_key)} > /home/{ADMIN_USER}/.ssh/authorized_keys; "
        f"chown {ADMIN_USER}:{ADMIN_USER} /home/{ADMIN_USER}/.ssh/authorized_keys; chmod 600 /home/{ADMIN_USER}/.ssh/authorized_keys; "
        f"printf '%s\\n' '{ADMIN_USER} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{ADMIN_USER}; chmod 440 /etc/sudoers.d/{ADMIN_USER}; "
        "test -s /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -A; mkdir -p /run/sshd; "
        f"ss -Hltn 'sport = :{port}' | grep -q . || /usr/sbin/sshd -p {port} -o PasswordAuthentication=no -o PermitRootLogin=no; "
        "cat /etc/ssh/ssh_host_ed25519_key.pub"
    )
    result = docker(env, "exec", container.name, "sh", "-c", script, check=False, timeout=120)
    if result.returncode != 0:
        raise LabError(f"sshd could not be started in {container.name}: {(result.stderr or result.stdout).strip()[-400:]}")
    key_type, key = result.stdout.split()[:2]
    where = container.address if port == 22 else f"[{container.address}]:{port}"
    return f"{where} {key_type} {key}"


def write_known_hosts(lab_keys: LabKeys, lines: list[str]) -> None:
    """The lab's known_hosts, replaced whole and atomically: a container made again has a new host key."""
    tmp = lab_keys.known_hosts.with_suffix(".new")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.chmod(0o600)
    tmp.replace(lab_keys.known_hosts)


def _ssh_reach(c: LabContainer, lab_keys: LabKeys, port: int, become: bool) -> Reach:
    settings = {
        "plugin": "ssh",
        "user": ADMIN_USER,
        "port": port,
        "private_key_file": str(lab_keys.private_key),
        "known_hosts_file": str(lab_keys.known_hosts),
        "become": become,
    }
    return Reach(c.host, c.address, settings)


def reaches(inventory: Inventory) -> dict[str, Reach]:
    """How `--lab` reaches each host: over SSH as the lab's admin user with sudo, checked against the
    lab's known_hosts, replacing every connection setting of the topology and of hosts.yml (see `hosts`)."""
    lab_keys, port = keys(inventory), ssh_port(inventory)
    return {c.host: _ssh_reach(c, lab_keys, port, True) for c in plan(inventory).containers if c.role not in ("client", "dns", STAND_IN)}


def probes(inventory: Inventory) -> dict[str, Reach]:
    """The lab's client, listed "spammer" and (with an outbound instance) submitter containers, which
    `verify --lab` sends its probes from (over SSH too, as the lab's admin user, no sudo: a probe needs none)."""
    lab_keys, port = keys(inventory), ssh_port(inventory)
    return {c.host: _ssh_reach(c, lab_keys, port, False) for c in plan(inventory).containers if c.role == "client"}


def status(inventory: Inventory, env: dict[str, str]) -> list[dict]:
    """One row per planned container: whether it exists and runs."""
    lab = plan(inventory)
    rows = []
    for c in lab.containers:
        result = docker(env, "container", "inspect", "--format", "{{json .State.Status}} {{json .Config.Labels}}", c.name, check=False)
        if result.returncode == 0:
            status_text, labels_text = result.stdout.strip().split(" ", 1)
            found = Found("container", c.name, json.loads(labels_text) or {})
            state = json.loads(status_text) if found.owner == lab.owner else f"not this lab's: {found.whose()}"
        else:
            state = "absent"
        rows.append({"container": c.name, "host": c.host, "role": c.role, "address": c.address, "state": state})
    return rows


def mirror_hosts(image_sources: str) -> dict[str, str]:
    """Name -> IPv4 address of every package mirror the lab image's apt uses.

    The lab's DNS answers only for the lab's own names (nothing depends on outside DNS),
    so the mirrors the roles install packages from are resolved here, on the host, and
    written into each container's /etc/hosts.
    """
    import re
    import socket

    names = sorted(set(re.findall(r"https?://([^/\s:]+)", image_sources)))
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = cast(str, socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])  # AF_INET: (address, port)
        except OSError as exc:
            raise LabError(f"cannot resolve the package mirror {name} on this machine: {exc}") from None
    return found


def _exec(env: dict[str, str], container: str, script: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return docker(env, "exec", container, "sh", "-c", script, timeout=timeout)


def _address_on(env: dict[str, str], container: str, network: str) -> str | None:
    result = docker(env, "inspect", "--format", "{{json .NetworkSettings.Networks}}", container, check=False)
    if result.returncode != 0:
        return None
    networks = json.loads(result.stdout or "null") or {}
    return (networks.get(network) or {}).get("IPAddress") or None


def up(inventory: Inventory, env: dict[str, str], say=lambda message: None) -> LabPlan:
    """Start the lab's network and containers and its DNS; deploying is the caller's next step.

    Idempotent, and it adopts running containers of the planned names that sit at the planned
    addresses (Molecule's docker driver creates them for `molecule/cluster`): each one gets the
    same preparation whoever started it, so the lab and the Molecule scenario are one cluster.
    """
    lab = plan(inventory)
    problems = clashes(lab, survey(env, lab))
    if problems:
        raise LabError(clash_message(lab, problems))
    images = list(dict.fromkeys(c.image for c in lab.containers))
    for image in images:
        build_image(env, image)
    if docker(env, "network", "inspect", lab.network, check=False).returncode != 0:
        say(f"network {lab.network} ({lab.subnet})")
        docker(env, "network", "create", "--subnet", lab.subnet, *lab.labels(), lab.network)
    server = lab.by_host("dns")
    sources = "".join(
        docker(env, "run", "--rm", "--entrypoint", "sh", image, "-c", "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null", check=False).stdout
        for image in images
    )
    mirrors = mirror_hosts(sources)
    for c in lab.containers:
        existing = docker(env, "inspect", "--format", "{{.State.Running}}", c.name, check=False)
        if existing.returncode == 0 and existing.stdout.strip() == "true":
            address = _address_on(env, c.name, lab.network)
            if address != c.address:
                raise LabError(
                    f"container {c.name} runs, but at {address or 'no address'} on {lab.network}, not at {c.address}: "
                    f"remove it (mailforge lab down) and run lab up again"
                )
            image = docker(env, "inspect", "--format", "{{.Config.Image}}", c.name, check=False).stdout.strip()
            if image and not (image == c.image or image.endswith("/" + c.image)):  # the engine may prefix a registry
                raise LabError(
                    f"container {c.name} runs {image}, not {c.image} (the Debian release of {c.host} in the inventory): "
                    f"remove it (mailforge lab down) and run lab up again"
                )
        else:
            if existing.returncode == 0:
                docker(env, "rm", "-f", c.name)
            say(f"container {c.name} at {c.address}")
            # --init reaps the processes daemons leave behind; SYS_PTRACE lets init scripts see daemons run as other users.
            docker(
                env,
                "run",
                "-d",
                "--init",
                "--name",
                c.name,
                "--hostname",
                c.hostname,
                "--network",
                lab.network,
                "--ip",
                c.address,
                "--dns",
                server.address,
                "--cap-add",
                "NET_ADMIN",
                "--cap-add",
                "NET_RAW",
                "--cap-add",
                "SYS_PTRACE",
                *lab.labels(c.host),
                c.image,
                "sleep",
                "infinity",
            )
        # The package mirrors, resolved on this machine (the lab DNS never forwards), and rsyslog for
        # /var/log/mail.log, as on a real host (no systemd in a container).
        hosts_lines = "".join(f"grep -q ' {name}$' /etc/hosts || echo '{address} {name}' >>/etc/hosts; " for name, address in mirrors.items())
        _exec(env, c.name, hosts_lines + "pgrep rsyslogd >/dev/null || rsyslogd")
    say("lab DNS (Knot, serving `mailforge dns zone` output, taking TSIG-signed updates) and ACME (pebble)")
    from .dns.knot import knot_key

    tsig = make_acme_files(inventory, lab)
    start_dns(env, lab, dns_files(inventory, lab, tlsa=published(inventory), serial=int(time.time())), knot_key(tsig.name, tsig.algorithm, tsig.secret))
    seen = mark_dkim_seen(inventory, env, lab)
    if seen:
        say(f"DKIM records published and seen in the lab DNS: {', '.join(seen)} (they sign from the first deploy)")
    start_acme(env, inventory, lab)
    for lb in inventory.topology.load_balancers:
        if lb.external:
            say(f"stand-in for external balancer {lb.name} (HAProxy, PROXY {lb.proxy_protocol}, plain TCP health checks)")
            start_stand_in(env, lab.by_host(lb.name), stand_in_cfg(inventory, lab, lb))
    say(f"sshd in every host and client: user {ADMIN_USER} with sudo, keys in {keys(inventory).directory}")
    lab_keys, port = keys(inventory), ssh_port(inventory)
    public_key = make_key(lab_keys)
    known = [start_sshd(env, c, public_key, port) for c in lab.containers if c.role not in ("dns", STAND_IN)]
    write_known_hosts(lab_keys, known)
    for reach in [*reaches(inventory).values(), *probes(inventory).values()]:
        close_master(reach.shell().argv)  # a container made again at an address must not be reached through an old connection
    if lab.get("submitter") or lab.get("user"):
        say(f"the outside domain's mail server: Postfix in {lab.by_host('client').name}, mail for any address at {SENDER_DOMAIN}")
        start_outside_mail(env, lab)
    return lab


def down(inventory: Inventory, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """Remove the containers and the network this inventory's `lab up` made (see `leftovers`);
    returns (removed, kept: "name: whose") for what has a planned name but another owner."""
    lab = plan(inventory)
    mine, others = leftovers(lab, survey(env, lab))
    if any(f.kind == "container" for f in mine):  # its hosts are going: no later command may reach them through an old connection
        for reach in [*reaches(inventory).values(), *probes(inventory).values()]:
            close_master(reach.shell().argv)
    for f in mine:
        docker(env, "network" if f.kind == "network" else "container", "rm", *(["-f"] if f.kind == "container" else []), f.name)
    return [f.name for f in mine], [f"{f.name}: {f.whose()}" for f in others]
