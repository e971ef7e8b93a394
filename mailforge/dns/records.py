"""Planning, kept pure (a topology in, records out): `dns zone`, the lab's NSD and `dns check` all
work from this one plan, and none of it needs a nameserver.

Who sends outbound mail: in the relay/core design the cores do (they take mail from the
user networks and deliver it to the Internet themselves; the relays only forward inbound
mail to the cores), so SPF authorises the cores. In the MX-proxy design the proxy's
`outbound` postmulti instance sends, so SPF authorises the relays that run one, and the
filter behind it is not a sender.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..inventory import Relay, Role, Topology, hosts_of, suggested_mx_name
from ..inventory.model import Dmarc
from ..render.mta_sts import WELL_KNOWN, policy_text, served_by_balancer
from .mta_sts import policy_records

DEFAULT_TTL = 3600
MX_PREFERENCE = 10

# RFC 5782 section 5: an IP list MUST list 127.0.0.2 and MUST NOT list 127.0.0.1; a domain list
# MUST list "test" and MUST NOT list "invalid". Some domain lists document another test name.
IP_TEST_LISTED = "127.0.0.2"
IP_TEST_UNLISTED = "127.0.0.1"
DOMAIN_TEST_UNLISTED = "invalid"
DOMAIN_TEST_DEFAULT = "test"
DOMAIN_TEST_NAMES = {
    "dbl.spamhaus.org": "dbltest.com",
    "dbl.dq.spamhaus.net": "dbltest.com",
    "multi.surbl.org": "test.surbl.org",
    "multi.uribl.com": "test.uribl.com",
}


@dataclass(frozen=True)
class Sender:
    """A host that sends the hosted domains' mail to the Internet."""

    name: str
    fqdn: str
    address: str
    role: str  # "core" or "outbound instance"


@dataclass(frozen=True)
class Record:
    zone: str  # the zone it belongs in, without trailing dot
    name: str  # owner name, fully qualified, without trailing dot
    rtype: str  # MX, TXT, A, AAAA, PTR
    value: str  # presentation format, names with trailing dots
    comment: str = ""

    @property
    def reverse(self) -> bool:
        return self.zone.endswith((".in-addr.arpa", ".ip6.arpa"))


def mx_targets(topology: Topology) -> list[str]:
    """The names the MX records point at: hosts that take mail on port 25 from anyone. Behind a balancer
    (managed or external) that is every balancer with an fqdn, and never a relay: a relay's firewall admits
    only the balancer, and its postscreen waits for the balancer's PROXY header. Without a balancer, the relays.
    Empty when no balancer has an fqdn: see `missing_mx`."""
    if topology.load_balancers:
        return [lb.fqdn for lb in topology.load_balancers if lb.fqdn]
    return [r.fqdn for r in topology.relays]


def mx_target_addresses(topology: Topology) -> dict[str, list[str]]:
    """What each expected MX target must resolve to; an external balancer with no address is not known here."""
    found: dict[str, list[str]] = {}
    for lb in topology.load_balancers:
        if lb.fqdn and lb.address:
            found.setdefault(lb.fqdn, []).append(lb.address)
    if not topology.load_balancers:
        for r in topology.relays:
            found.setdefault(r.fqdn, []).append(r.address)
    return found


def missing_mx(topology: Topology) -> list[str]:
    """Why no MX record can be printed, as comment lines (none when it can): the relays sit behind balancers
    of which none has an fqdn. Says what to add and what `dns zone` will then print."""
    t = topology
    if mx_targets(t):
        return []
    lb = t.load_balancers[0]
    name = suggested_mx_name(t)
    port = lb.backend_port or 25
    where = f"{lb.address}" if lb.address else "its provider's addresses"
    how = f"port {port}" + ("" if lb.proxy_protocol == "none" else f", PROXY {lb.proxy_protocol}")
    lines = [
        f"NO MX RECORDS: balancer {lb.name} ({'external, ' if lb.external else ''}{where}) has no fqdn, so no MX can name it;",
        f"and the relays cannot be MX: they take mail only from the balancer ({how}), so mail sent to them would fail.",
        f"Give the balancer the name the MX records should use: `fqdn: {name}` under load_balancers",
        f"(balancer {lb.name}) in topology.yml, and run `mailforge dns zone` again. It will then print, for each hosted domain:",
        f"  {t.domains[0]}.  {DEFAULT_TTL} IN MX  {MX_PREFERENCE} {name}.",
    ]
    if lb.address:
        lines.append(f"  {name}.  {DEFAULT_TTL} IN {'A' if ipaddress.ip_address(lb.address).version == 4 else 'AAAA'}  {lb.address}")
    else:
        lines.append(f"  and {name} must resolve to the balancer's addresses, as your provider says.")
    lines.append("`mailforge dns check` accepts any MX name that resolves to a balancer's address.")
    return lines


def outbound_senders(topology: Topology) -> list[Sender]:
    """The hosts SPF must authorise: relays running an outbound instance (MX proxy), else the cores."""
    hosts = hosts_of(topology)
    proxies = [h for h in hosts if h.role is Role.MX_PROXY and isinstance(h.entry, Relay) and h.entry.instances and h.entry.instances.outbound]
    if proxies:
        return [Sender(h.name, str(h.fqdn), str(h.address), "outbound instance") for h in proxies]
    return [Sender(h.name, str(h.fqdn), str(h.address), "core") for h in hosts if h.role is Role.CORE]


def spf_record(topology: Topology) -> str:
    terms = [("ip4:" if ipaddress.ip_address(s.address).version == 4 else "ip6:") + s.address for s in outbound_senders(topology)]
    return " ".join(["v=spf1", *dict.fromkeys(terms), "-all"])


def txt_value(text: str, size: int = 255) -> str:
    """A TXT value in zone-file syntax: quoted character-strings of at most `size` bytes each (RFC 1035 3.3.14),
    since one string cannot hold a 2048-bit DKIM key. Receivers join them back without a separator."""
    data = text.encode("utf-8")
    chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    return " ".join('"' + chunk.decode("utf-8").replace("\\", "\\\\").replace('"', '\\"') + '"' for chunk in chunks)


DMARC_DEFAULTS = {"pct": "100", "adkim": "r", "aspf": "r"}


def dmarc_tags(dmarc: Dmarc) -> dict[str, str]:
    """The tags of the _dmarc record (RFC 7489 6.3) the inventory asks for, in the order they are printed:
    v and p always, rua when given, and the others only where they differ from the defaults."""
    tags = {"v": "DMARC1", "p": dmarc.policy}
    if dmarc.subdomain_policy and dmarc.subdomain_policy != dmarc.policy:
        tags["sp"] = dmarc.subdomain_policy
    if dmarc.percentage != 100:
        tags["pct"] = str(dmarc.percentage)
    if dmarc.aggregate_reports:
        tags["rua"] = ",".join(dmarc.aggregate_reports)
    if dmarc.failure_reports:
        tags["ruf"] = ",".join(dmarc.failure_reports)
    if dmarc.dkim_alignment == "strict":
        tags["adkim"] = "s"
    if dmarc.spf_alignment == "strict":
        tags["aspf"] = "s"
    return tags


def dmarc_record(dmarc: Dmarc) -> str:
    return "; ".join(f"{k}={v}" for k, v in dmarc_tags(dmarc).items())


def dmarc_name(domain: str) -> str:
    return f"_dmarc.{domain}"


def rhsbl_test_name(zone: str) -> str:
    """The name a domain list documents as always listed ("test" by RFC 5782 unless the list says otherwise)."""
    for known, name in DOMAIN_TEST_NAMES.items():
        if zone == known or zone.endswith("." + known):
            return name
    return DOMAIN_TEST_DEFAULT


def reverse_name(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


def reverse_zone(address: str) -> tuple[str, str]:
    """(zone, network) of the reverse zone an address's PTR lives in: its /24, or its /64 for IPv6."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        network = ipaddress.ip_network(f"{ip}/24", strict=False)
        return ".".join(reversed(str(ip).split(".")[:3])) + ".in-addr.arpa", str(network)
    network = ipaddress.ip_network(f"{ip}/64", strict=False)
    return ".".join(reversed(ip.exploded.replace(":", "")[:16])) + ".ip6.arpa", str(network)


def zone_of(name: str, domains: list[str], others: Sequence[str] = ()) -> str:
    """The zone a forward name belongs in: the longest hosted domain it falls under; else its parent domain,
    or a shorter parent that another name outside the hosted domains has (so store1.internal.example.io
    goes with ingest1.example.io into example.io)."""
    inside = [d for d in domains if name == d or name.endswith("." + d)]
    if inside:
        return max(inside, key=len)
    parent = name.split(".", 1)[1] if "." in name else name
    candidates = [o.split(".", 1)[1] for o in others if "." in o and o.split(".", 1)[1].count(".") >= 1]
    shorter = [c for c in candidates if parent.endswith("." + c)]
    return min(shorter, key=len) if shorter else parent


def _address_record(zone: str, name: str, address: str, comment: str) -> Record:
    rtype = "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
    return Record(zone, name, rtype, address, comment)


def zone_records(topology: Topology) -> list[Record]:
    """Every record the topology needs, in a stable order (see `zone_text`)."""
    t = topology
    domains = list(t.domains)
    records: list[Record] = []
    spf = spf_record(t)
    senders = outbound_senders(t)
    for domain in sorted(domains):
        for target in sorted(dict.fromkeys(mx_targets(t))):
            records.append(Record(domain, domain, "MX", f"{MX_PREFERENCE} {target}.", "same preference for every MX: no backup MX"))
        who = ", ".join(f"{s.role} {s.name}" for s in senders) or "no host"
        records.append(Record(domain, domain, "TXT", f'"{spf}"', f"SPF: the hosts that send this domain's mail: {who}"))
        if t.dmarc is not None:
            records.append(Record(domain, dmarc_name(domain), "TXT", txt_value(dmarc_record(t.dmarc)), f"DMARC: policy {t.dmarc.policy}"))
    records.extend(Record(*fields) for fields in policy_records(t))
    hosts: list[tuple[str, str, str, bool]] = []  # (fqdn, address, comment, wants PTR)
    labels = {Role.RELAY: "relay", Role.MX_PROXY: "MX proxy"}
    for host in hosts_of(t):
        if host.role is Role.BALANCER and host.fqdn and host.address:
            hosts.append((host.fqdn, host.address, f"load balancer {host.name}", False))
        elif host.role in labels:
            hosts.append((str(host.fqdn), str(host.address), f"{labels[host.role]} {host.name}", True))
    relay_names = {r.fqdn for r in t.relays}
    for sender in senders:
        if sender.fqdn not in relay_names:
            hosts.append((sender.fqdn, sender.address, f"{sender.role} {sender.name}: sends outbound mail; never an MX", True))
    seen = set()
    outside = [fqdn for fqdn, *_ in hosts if zone_of(fqdn, domains) not in domains]
    for fqdn, address, comment, ptr in hosts:
        if (fqdn, address) in seen:
            continue
        seen.add((fqdn, address))
        records.append(_address_record(zone_of(fqdn, domains, outside), fqdn, address, comment))
        if ptr:
            zone, network = reverse_zone(address)
            records.append(Record(zone, reverse_name(address), "PTR", f"{fqdn}.", comment))
    return records


_TYPE_ORDER = {"SOA": 0, "NS": 1, "MX": 2, "TXT": 3, "A": 4, "AAAA": 5, "TLSA": 6, "PTR": 7}


def _zone_order(records: list[Record], domains: list[str]) -> list[str]:
    zones = list(dict.fromkeys(r.zone for r in records))

    def key(zone: str):
        if zone.endswith(".in-addr.arpa") or zone.endswith(".ip6.arpa"):
            base = 10 if zone.endswith(".in-addr.arpa") else 16
            return (2, zone.endswith(".ip6.arpa"), [int(p, base) for p in reversed(zone.split(".")[:-2])])
        return (0 if zone in domains else 1, zone, [])

    return sorted(zones, key=key)


def _record_key(r: Record):
    if r.reverse:
        base = 10 if r.zone.endswith(".in-addr.arpa") else 16
        return (1, "", [int(p, base) for p in reversed(r.name.split(".")[:-2])], _TYPE_ORDER.get(r.rtype, 9), r.value)
    # TLSA records keep their given order (the live key's, then the next one's); the others sort by value.
    return (0 if r.name == r.zone else 1, r.name, [], _TYPE_ORDER.get(r.rtype, 9), "" if r.rtype == "TLSA" else r.value)


def _record_lines(records: list[Record], ttl: int) -> list[str]:
    ordered = sorted(records, key=_record_key)
    width = max((len(r.name) + 1 for r in ordered), default=0)
    lines = []
    for r in ordered:
        line = f"{r.name + '.':<{width}} {ttl:>5} IN {r.rtype:<4} {r.value}"
        lines.append(line + (f"  ; {r.comment}" if r.comment else ""))
    return lines


def zone_text(topology: Topology, ttl: int = DEFAULT_TTL, extra: Sequence[Record] = (), notes: Sequence[str] = ()) -> str:
    """`mailforge dns zone`: every record the topology needs, grouped by the zone it belongs in, ready to paste.

    `extra` are records made from what the controller's store holds (the TLSA records of `tlsa`), `notes`
    comment lines about them; both come from the CLI, which reads the store, so this stays pure."""
    records = zone_records(topology) + list(extra)
    domains = list(topology.domains)
    out = [
        f"; DNS records for mailforge cluster '{topology.cluster}' (generated by `mailforge dns zone`).",
        "; Names are fully qualified (trailing dot) and every record carries its TTL, so each section",
        "; can be pasted as it is into the zone it names. `mailforge dns check` checks the result.",
    ]
    missing = missing_mx(topology)
    if missing:
        out += [";", *(f"; {line}" for line in missing)]
    if notes:
        out += [";", *(f"; {line}" for line in notes)]
    out += _policy_note(topology)
    for zone in _zone_order(records, domains):
        in_zone = [r for r in records if r.zone == zone]
        out.append("")
        if in_zone[0].reverse:
            network = reverse_network(zone)
            out.append(f"; ---- reverse zone {zone} ({network}) ----")
            out.append(f"; Not in your domains' zones: ask whoever owns {network} (your provider) to publish these PTRs.")
        elif zone in domains:
            out.append(f"; ---- zone {zone} (hosted domain) ----")
            if missing:
                out.append("; No MX record here: the balancer has no fqdn (see the note at the top).")
        else:
            out.append(f"; ---- zone {zone} (host names only: not a hosted domain) ----")
        out.extend(_record_lines(in_zone, ttl))
    return "\n".join(out) + "\n"


def _policy_note(topology: Topology) -> list[str]:
    """Without a managed balancer to serve it, the MTA-STS policy for the user to host, as comment lines."""
    if topology.tls.mta_sts is None or served_by_balancer(topology):
        return []
    return [
        ";",
        "; MTA-STS: no managed balancer serves the policy. Host the text between the dashed lines (without the leading '; ')",
        "; at each of these URLs, with a certificate valid for its name, and point each mta-sts.<domain> at that server:",
        *(f";   https://mta-sts.{d}{WELL_KNOWN}" for d in sorted(topology.domains)),
        "; The _mta-sts TXT id below is the hash of exactly this text: change one and the other changes too.",
        "; ------",
        *(f"; {line}" for line in policy_text(topology).splitlines()),
        "; ------",
    ]


def reverse_network(zone: str) -> str:
    """The network a reverse zone of `reverse_zone` covers: 0.232.10.in-addr.arpa -> 10.232.0.0/24."""
    labels = zone.split(".")[:-2]
    if zone.endswith(".in-addr.arpa"):
        octets = list(reversed(labels)) + ["0"] * (4 - len(labels))
        return str(ipaddress.ip_network(f"{'.'.join(octets)}/{8 * len(labels)}"))
    nibbles = "".join(reversed(labels)).ljust(32, "0")
    address = ipaddress.ip_address(":".join(nibbles[i : i + 4] for i in range(0, 32, 4)))
    return str(ipaddress.ip_network(f"{address}/{4 * len(labels)}"))


def zone_sections(text: str) -> dict[str, list[str]]:
    """The record lines of `zone_text` output by the zone its section header names: what a user pastes where."""
    zones: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        header = re.match(r"; ---- (?:reverse )?zone (\S+)", line)
        if header:
            current = zones.setdefault(header.group(1), [])
        elif line and not line.startswith(";"):
            if current is None:
                raise ValueError(f"a record before any zone header: {line!r}")
            current.append(line)
    return zones


def zone_file(zone: str, records: list[Record], primary: str, ttl: int = DEFAULT_TTL, serial: int = 1, pasted: Sequence[str] = ()) -> str:
    """A complete zone file (SOA, NS, the records) for a server that loads zone files, such as NSD.

    `pasted` are record lines exactly as `zone_text` prints them for this zone (what a user would paste);
    they come before `records`."""
    hostmaster = "hostmaster." + primary.split(".", 1)[1] if "." in primary else "hostmaster." + zone
    head = [
        f"; zone {zone}: generated by mailforge",
        f"$ORIGIN {zone}.",
        f"$TTL {ttl}",
        f"@ IN SOA {primary}. {hostmaster}. {serial} 3600 600 86400 60",
        f"@ IN NS {primary}.",
    ]
    return "\n".join(head + list(pasted) + _record_lines([r for r in records if r.zone == zone], ttl)) + "\n"


def served_zones(topology: Topology, extra: list[Record], primary: str, ttl: int = DEFAULT_TTL, tlsa: Sequence[Record] = (), serial: int = 1) -> dict[str, str]:
    """{zone: zone file} for an authoritative server to serve what `dns zone` says: each zone's section
    of `zone_text` as printed (with `tlsa`, the store's records `dns zone` prints too), then the `extra`
    records of that zone, under a SOA (`serial`: a server reloading the files must see it grow) and NS naming `primary`."""
    published = zone_sections(zone_text(topology, ttl, extra=tlsa))
    zones = dict.fromkeys([*published, *(r.zone for r in extra)])
    return {zone: zone_file(zone, extra, primary, ttl, serial=serial, pasted=published.get(zone, [])) for zone in zones}


def dnsbl_records(topology: Topology, listed: Sequence[str] = (), listed_names: Sequence[str] = ()) -> list[Record]:
    """Test zones standing in for the policy's DNS lists: each IP list lists 127.0.0.2 (and `listed`),
    each domain list its test name (and `listed_names`); neither lists anything else."""
    records = []
    for zone in topology.policy.rbl_clients:
        for address in dict.fromkeys([IP_TEST_LISTED, *listed]):
            owner = ".".join(reversed(address.split("."))) + "." + zone
            records.append(Record(zone, owner, "A", "127.0.0.2", "listed"))
    for zone in topology.policy.rhsbl_senders:
        for name in dict.fromkeys([rhsbl_test_name(zone), *listed_names]):
            records.append(Record(zone, f"{name}.{zone}", "A", "127.0.1.2", "listed"))
    return records
