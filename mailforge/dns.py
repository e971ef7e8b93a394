"""The DNS a cluster needs: the records it should have, and a live check that it has them.

Two halves, kept apart:

- planning, pure (a topology in, records out): which names the MX records name
  (`mx_targets`), which hosts send the hosted domains' mail to the Internet and so
  belong in SPF (`outbound_senders`), every record to publish (`zone_records`) and
  their zone-file text (`zone_text`, `zone_file`);
- checking, against a nameserver: `Querier` asks one question at a time with
  dnspython and keeps a timeout, SERVFAIL or REFUSED apart from "no such record";
  `run_checks` turns the answers into rows (subject, check, status, evidence).

Who sends outbound mail: in the relay/core design the cores do (they take mail from the
user networks and deliver it to the Internet themselves; the relays only forward inbound
mail to the cores), so SPF authorises the cores. In the MX-proxy design the proxy's
`outbound` postmulti instance sends, so SPF authorises the relays that run one, and the
filter behind it is not a sender.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import dns.exception  # dnspython (this module is mailforge.dns; imports are absolute)
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from .errors import MailforgeError

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
# Spamhaus answers these instead of a listing when it refuses the resolver that asked.
BLOCKED_RESOLVER_CODES = {
    "127.255.255.252": "typing error in the zone name",
    "127.255.255.254": "query through a public or open resolver",
    "127.255.255.255": "too many queries from this resolver",
}
OUTSIDER_V4, OUTSIDER_V6 = "192.0.2.1", "2001:db8::1"  # documentation addresses (RFC 5737, RFC 3849): never a sender

OK, FAIL, TIMEOUT, SERVFAIL, ERROR = "ok", "fail", "timeout", "servfail", "error"


class DnsError(MailforgeError):
    """The DNS check could not run: no nameserver to ask, or none answered at all."""


# --- planning: what the topology needs (pure) -------------------------------------------------


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


def mx_targets(topology) -> list[str]:
    """The names the MX records point at: every balancer with an fqdn (managed or external), else the relays."""
    named = [lb.fqdn for lb in topology.load_balancers if lb.fqdn]
    return named or [r.fqdn for r in topology.relays]


def mx_target_addresses(topology) -> dict[str, list[str]]:
    """What each expected MX target must resolve to; an external balancer with no address is not known here."""
    found: dict[str, list[str]] = {}
    for lb in topology.load_balancers:
        if lb.fqdn and lb.address:
            found.setdefault(lb.fqdn, []).append(lb.address)
    if not any(lb.fqdn for lb in topology.load_balancers):
        for r in topology.relays:
            found.setdefault(r.fqdn, []).append(r.address)
    return found


def outbound_senders(topology) -> list[Sender]:
    """The hosts SPF must authorise: relays running an outbound instance (MX proxy), else the cores."""
    proxies = [r for r in topology.relays if r.instances and r.instances.outbound]
    if proxies:
        return [Sender(r.name, r.fqdn, r.address, "outbound instance") for r in proxies]
    return [Sender(c.name, c.fqdn, c.address, "core") for c in topology.cores]


def spf_record(topology) -> str:
    terms = [("ip4:" if ipaddress.ip_address(s.address).version == 4 else "ip6:") + s.address for s in outbound_senders(topology)]
    return " ".join(["v=spf1", *dict.fromkeys(terms), "-all"])


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


def zone_of(name: str, domains: list[str], others: list[str] = ()) -> str:
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


def zone_records(topology) -> list[Record]:
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
    hosts: list[tuple[str, str, str, bool]] = []  # (fqdn, address, comment, wants PTR)
    for lb in t.managed_balancers:
        if lb.fqdn and lb.address:
            hosts.append((lb.fqdn, lb.address, f"load balancer {lb.name}", False))
    for relay in t.relays:
        role = "MX proxy" if relay.instances else "relay"
        hosts.append((relay.fqdn, relay.address, f"{role} {relay.name}", True))
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


_TYPE_ORDER = {"SOA": 0, "NS": 1, "MX": 2, "TXT": 3, "A": 4, "AAAA": 5, "PTR": 6}


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
    return (0 if r.name == r.zone else 1, r.name, [], _TYPE_ORDER.get(r.rtype, 9), r.value)


def _record_lines(records: list[Record], ttl: int) -> list[str]:
    ordered = sorted(records, key=_record_key)
    width = max((len(r.name) + 1 for r in ordered), default=0)
    lines = []
    for r in ordered:
        line = f"{r.name + '.':<{width}} {ttl:>5} IN {r.rtype:<4} {r.value}"
        lines.append(line + (f"  ; {r.comment}" if r.comment else ""))
    return lines


def zone_text(topology, ttl: int = DEFAULT_TTL) -> str:
    """`mailforge dns zone`: every record the topology needs, grouped by the zone it belongs in, ready to paste."""
    records = zone_records(topology)
    domains = list(topology.domains)
    out = [
        f"; DNS records for mailforge cluster '{topology.cluster}' (generated by `mailforge dns zone`).",
        "; Names are fully qualified (trailing dot) and every record carries its TTL, so each section",
        "; can be pasted as it is into the zone it names. `mailforge dns check` checks the result.",
    ]
    for zone in _zone_order(records, domains):
        in_zone = [r for r in records if r.zone == zone]
        out.append("")
        if in_zone[0].reverse:
            network = reverse_network(zone)
            out.append(f"; ---- reverse zone {zone} ({network}) ----")
            out.append(f"; Not in your domains' zones: ask whoever owns {network} (your provider) to publish these PTRs.")
        elif zone in domains:
            out.append(f"; ---- zone {zone} (hosted domain) ----")
        else:
            out.append(f"; ---- zone {zone} (host names only: not a hosted domain) ----")
        out.extend(_record_lines(in_zone, ttl))
    return "\n".join(out) + "\n"


def reverse_network(zone: str) -> str:
    """The network a reverse zone of `reverse_zone` covers: 0.232.10.in-addr.arpa -> 10.232.0.0/24."""
    labels = zone.split(".")[:-2]
    if zone.endswith(".in-addr.arpa"):
        octets = list(reversed(labels)) + ["0"] * (4 - len(labels))
        return str(ipaddress.ip_network(f"{'.'.join(octets)}/{8 * len(labels)}"))
    nibbles = "".join(reversed(labels)).ljust(32, "0")
    address = ipaddress.ip_address(":".join(nibbles[i:i + 4] for i in range(0, 32, 4)))
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


def zone_file(zone: str, records: list[Record], primary: str, ttl: int = DEFAULT_TTL, serial: int = 1,
              pasted: list[str] = ()) -> str:
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


def served_zones(topology, extra: list[Record], primary: str, ttl: int = DEFAULT_TTL) -> dict[str, str]:
    """{zone: zone file} for an authoritative server to serve what `dns zone` says: each zone's section
    of `zone_text` as printed, then the `extra` records of that zone, under a SOA and NS naming `primary`."""
    published = zone_sections(zone_text(topology, ttl))
    zones = dict.fromkeys([*published, *(r.zone for r in extra)])
    return {zone: zone_file(zone, extra, primary, ttl, pasted=published.get(zone, [])) for zone in zones}


def dnsbl_records(topology, listed: list[str] = (), listed_names: list[str] = ()) -> list[Record]:
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


# --- asking a nameserver ----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One answer: status "ok" (values), "nxdomain", "nodata", or a failure: "timeout", "servfail", "refused", "error"."""

    name: str
    rtype: str
    status: str
    values: tuple = ()
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("timeout", "servfail", "refused", "error")

    def describe(self) -> str:
        if self.status == "ok":
            return f"{self.name} {self.rtype} " + ", ".join(_show(v) for v in self.values)
        text = {"nxdomain": "NXDOMAIN (no such name)", "nodata": f"no {self.rtype} record", "timeout": "timeout",
                "servfail": "SERVFAIL", "refused": "REFUSED"}.get(self.status, self.status)
        return f"{self.name} {self.rtype}: {text}" + (f" ({self.detail})" if self.detail else "")


def _show(value) -> str:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def parse_nameserver(text: str) -> tuple[str, int]:
    """HOST, HOST:PORT, [IPv6]:PORT or a bare IPv6 address -> (address, port)."""
    text = text.strip()
    host, port = text, 53
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if match:
        host, port = match.group(1), int(match.group(2) or 53)
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        if not number.isdigit():
            raise DnsError(f"--nameserver {text!r}: the port is not a number")
        port = int(number)
    if not 1 <= port <= 65535:
        raise DnsError(f"--nameserver {text!r}: port {port} is not a port")
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0], port
    except (OSError, UnicodeError) as exc:  # UnicodeError: a name no resolver could take (empty or over-long label)
        raise DnsError(f"--nameserver {text!r}: cannot resolve {host!r}: {exc}") from None


def system_nameservers() -> list[tuple[str, int]]:
    try:
        resolver = dns.resolver.Resolver(configure=True)
    except Exception as exc:  # noqa: BLE001 - dnspython raises several kinds for a missing or empty resolv.conf
        raise DnsError(f"no nameserver given and none configured on this machine ({exc}): use --nameserver HOST[:PORT]") from None
    servers = [(str(s), resolver.port) for s in resolver.nameservers]
    if not servers:
        raise DnsError("no nameserver given and none configured on this machine: use --nameserver HOST[:PORT]")
    return servers


class Querier:
    """Asks the nameservers one question at a time (recursion desired), remembering every answer.

    UDP first, TCP when truncated. A server that does not answer within `timeout` seconds is asked
    again (`tries` in all) before the next server; SERVFAIL and REFUSED also move on to the next.
    """

    def __init__(self, servers: list[tuple[str, int]], timeout: float = 2.0, tries: int = 2):
        self.servers = servers
        self.timeout = timeout
        self.tries = tries
        self.cache: dict[tuple[str, str], Answer] = {}
        self.responded = False  # whether any server answered anything at all

    def servers_text(self) -> str:
        return ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.servers)

    def lookup(self, name: str, rtype: str) -> Answer:
        key = (name.lower().rstrip("."), rtype)
        if key not in self.cache:
            self.cache[key] = self._resolve(key[0], rtype, depth=0)
        return self.cache[key]

    def _resolve(self, name: str, rtype: str, depth: int) -> Answer:
        response, failure = self._ask(name, rtype)
        if response is None:
            return failure
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return Answer(name, rtype, "nxdomain")
        if rcode != dns.rcode.NOERROR:
            return Answer(name, rtype, "error", detail=f"rcode {dns.rcode.to_text(rcode)}")
        current = dns.name.from_text(name)
        wanted = dns.rdatatype.from_text(rtype)
        for _ in range(8):
            rrset = _find(response, current, wanted)
            if rrset is not None:
                return Answer(name, rtype, "ok", tuple(_value(rtype, rdata) for rdata in rrset))
            alias = _find(response, current, dns.rdatatype.CNAME)
            if alias is None:
                break
            current = alias[0].target
        if current != dns.name.from_text(name):  # a CNAME the server did not follow: ask for its target
            if depth >= 8:
                return Answer(name, rtype, "error", detail="CNAME chain too long")
            followed = self._resolve(current.to_text(omit_final_dot=True), rtype, depth + 1)
            return Answer(name, rtype, followed.status, followed.values, followed.detail)
        return Answer(name, rtype, "nodata")

    def _ask(self, name: str, rtype: str):
        failure = Answer(name, rtype, "error", detail="no nameserver")
        for host, port in self.servers:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            for _ in range(self.tries):
                query = dns.message.make_query(name, rtype)
                try:
                    response = dns.query.udp(query, host, port=port, timeout=self.timeout)
                    if response.flags & dns.flags.TC:
                        response = dns.query.tcp(query, host, port=port, timeout=self.timeout)
                except dns.exception.Timeout:
                    failure = Answer(name, rtype, "timeout", detail=f"{where} did not answer within {self.timeout:g} s, {self.tries} tries")
                    continue
                except OSError as exc:
                    failure = Answer(name, rtype, "error", detail=f"{where}: {exc.strerror or exc}")
                    break
                except dns.exception.DNSException as exc:
                    failure = Answer(name, rtype, "error", detail=f"{where}: {exc}")
                    break
                self.responded = True
                rcode = response.rcode()
                if rcode == dns.rcode.SERVFAIL:
                    failure = Answer(name, rtype, "servfail", detail=f"from {where}")
                    break
                if rcode == dns.rcode.REFUSED:
                    failure = Answer(name, rtype, "refused", detail=f"{where} does not answer for this name")
                    break
                return response, None
        return None, failure

    def prefetch(self, questions: list[tuple[str, str]], workers: int = 16) -> None:
        """Ask many (name, type) questions at once; the answers land in the cache for `lookup`.

        A cluster hosting hundreds of domains needs a few questions per domain: asked in turn through
        a distant resolver, the check would wait one round trip per question (benchmarks/dns_check.py).
        """
        todo = [q for q in dict.fromkeys((name.lower().rstrip("."), rtype) for name, rtype in questions) if q not in self.cache]
        if len(todo) < 2:
            return
        with ThreadPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            list(pool.map(lambda question: self.lookup(*question), todo))

    def probe(self, name: str) -> None:
        """Raise DnsError unless at least one server answers something (even NXDOMAIN or REFUSED)."""
        answer = self.lookup(name, "SOA")
        if not self.responded:
            raise DnsError(f"no nameserver answered: {self.servers_text()}: {answer.status}" + (f" ({answer.detail})" if answer.detail else ""))


def _find(response, name, rdtype):
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN:
            return rrset
    return None


def _value(rtype: str, rdata):
    if rtype == "MX":
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True).lower())
    if rtype in ("A", "AAAA"):
        return str(ipaddress.ip_address(rdata.address))
    if rtype in ("PTR", "CNAME", "NS"):
        return rdata.target.to_text(omit_final_dot=True).lower()
    if rtype == "TXT":
        return b"".join(rdata.strings).decode("utf-8", errors="replace")
    return rdata.to_text()


# --- SPF, evaluated far enough to judge the hosted domains' records ----------------------------


class _SpfError(Exception):
    def __init__(self, result: str, reason: str, answer: Answer | None = None):
        super().__init__(reason)
        self.result, self.reason, self.answer = result, reason, answer


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


def spf_records(answer: Answer) -> list[str]:
    return [v for v in answer.values if re.match(r"(?i)v=spf1(\s|$)", v)]


class Spf:
    """check_host() of RFC 7208 for ip4, ip6, a, mx, include, exists, redirect and all (no macros, ptr never matches)."""

    def __init__(self, querier: Querier):
        self.q = querier
        self.notes: list[str] = []

    def check(self, ip: str, domain: str) -> tuple[str, str]:
        """(result, reason) for `ip` sending as `domain`: pass, fail, softfail, neutral, none, permerror or temperror."""
        self.lookups = 0
        self.failure: Answer | None = None
        try:
            return self._check(ipaddress.ip_address(ip), domain, 0)
        except _SpfError as exc:
            self.failure = exc.answer
            return exc.result, exc.reason

    def _txt(self, domain: str) -> list[str]:
        answer = self.q.lookup(domain, "TXT")
        if answer.failed:
            raise _SpfError("temperror", answer.describe(), answer)
        return spf_records(answer) if answer.status == "ok" else []

    def _count(self) -> None:
        self.lookups += 1
        if self.lookups > 10:
            raise _SpfError("permerror", "more than 10 DNS lookups")

    def _addresses(self, name: str, version: int) -> list[str]:
        answer = self.q.lookup(name, "A" if version == 4 else "AAAA")
        if answer.failed:
            raise _SpfError("temperror", answer.describe(), answer)
        return list(answer.values) if answer.status == "ok" else []

    def _check(self, ip, domain: str, depth: int) -> tuple[str, str]:
        if depth > 10:
            raise _SpfError("permerror", "include/redirect loop")
        records = self._txt(domain)
        if not records:
            return "none", f"{domain} has no SPF record"
        if len(records) > 1:
            raise _SpfError("permerror", f"{domain} has {len(records)} SPF records")
        redirect = None
        for term in records[0].split()[1:]:
            modifier = re.fullmatch(r"([A-Za-z][\w.-]*)=(.*)", term)
            if modifier:
                if modifier.group(1).lower() == "redirect":
                    redirect = modifier.group(2)
                continue
            qualifier = _QUALIFIERS.get(term[0])
            if qualifier:
                term = term[1:]
            else:
                qualifier = "pass"
            if self._matches(ip, term, domain, depth):
                return qualifier, f"{domain}: {term}"
        if redirect:
            self._count()
            result, reason = self._check(ip, redirect, depth + 1)
            if result == "none":
                raise _SpfError("permerror", f"redirect={redirect} has no SPF record")
            return result, reason
        return "neutral", f"{domain}: no mechanism matched"

    def _matches(self, ip, term: str, domain: str, depth: int) -> bool:
        name, _, rest = term.partition(":")
        name = name.lower()
        shape = re.fullmatch(r"(?i)(a|mx)(?::([^/]+))?(?:/(\d+))?(?://(\d+))?", term)
        if shape:  # a, a/24, a:host/24, mx//64 ...
            mech, target = shape.group(1).lower(), shape.group(2) or domain
            prefix = int((shape.group(3) if ip.version == 4 else shape.group(4)) or (32 if ip.version == 4 else 128))
            if "%" in target:
                self.notes.append(f"{term}: macros are not evaluated")
                return False
            self._count()
            hosts = [target]
            if mech == "mx":
                answer = self.q.lookup(target, "MX")
                if answer.failed:
                    raise _SpfError("temperror", answer.describe(), answer)
                hosts = [host for _, host in answer.values][:10] if answer.status == "ok" else []
            for host in hosts:
                for address in self._addresses(host, ip.version):
                    if ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False):
                        return True
            return False
        if name in ("ip4", "ip6"):
            try:
                network = ipaddress.ip_network(rest, strict=False)
            except ValueError:
                raise _SpfError("permerror", f"{term} is not a network") from None
            return network.version == ip.version and ip in network
        if name == "all":
            return True
        if name == "include":
            if "%" in rest:
                self.notes.append(f"{term}: macros are not evaluated")
                return False
            self._count()
            result, reason = self._check(ip, rest, depth + 1)
            if result == "none":
                raise _SpfError("permerror", f"include:{rest} has no SPF record")
            return result == "pass"
        if name == "exists":
            if "%" in rest:
                self.notes.append(f"{term}: macros are not evaluated")
                return False
            self._count()
            return bool(self._addresses(rest, 4))
        if name == "ptr":
            self._count()
            self.notes.append("ptr is deprecated (RFC 7208) and not evaluated")
            return False
        raise _SpfError("permerror", f"unknown mechanism {term!r}")


# --- the checks -------------------------------------------------------------------------------


@dataclass
class Check:
    subject: str  # a hosted domain, a host name, or a DNS list zone
    check: str
    status: str  # ok, fail, timeout, servfail, error
    evidence: str

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return self.status == OK


def _failure(answer: Answer) -> str:
    return {"timeout": TIMEOUT, "servfail": SERVFAIL}.get(answer.status, ERROR)


@dataclass
class _Context:
    q: Querier
    targets: list[str]
    target_addresses: dict[str, list[str]]
    allowed: dict[str, str]  # address -> what it is (balancer or relay)
    cores: dict[str, str]  # core fqdn -> address
    external_targets: set[str] = field(default_factory=set)


def run_checks(topology, querier: Querier) -> list[Check]:
    """Every check of `mailforge dns check`, in a stable order. Raises DnsError if no nameserver answers at all."""
    t = topology
    querier.probe(sorted(t.domains)[0])
    allowed = {}
    for lb in t.load_balancers:
        if lb.address:
            allowed[lb.address] = f"balancer {lb.name}"
    for r in t.relays:
        allowed[r.address] = f"relay {r.name}"
    ctx = _Context(querier, list(dict.fromkeys(mx_targets(t))), mx_target_addresses(t), allowed, {c.fqdn: c.address for c in t.cores},
                   {lb.fqdn for lb in t.load_balancers if lb.fqdn and lb.external and not lb.address})
    checks: list[Check] = []
    seen_targets: list[str] = []
    querier.prefetch([(domain, rtype) for domain in sorted(t.domains) for rtype in ("MX", "TXT")])
    for domain in sorted(t.domains):
        answer = querier.lookup(domain, "MX")
        checks.append(_check_mx(domain, answer, ctx))
        found = [host for _, host in answer.values] if answer.status == "ok" else []
        seen_targets.extend(host for host in found if host not in seen_targets)
        checks.append(_check_no_core(domain, found, ctx))
        checks.append(_check_spf(domain, t, querier))
    for target in [*ctx.targets, *(h for h in seen_targets if h not in ctx.targets)]:
        checks.append(_check_target(target, ctx))
    for relay in t.relays:
        checks.append(_check_fcrdns(relay.fqdn, relay.address, "relay", querier))
    relay_names = {r.fqdn for r in t.relays}
    for sender in outbound_senders(t):
        if sender.fqdn not in relay_names:
            checks.append(_check_fcrdns(sender.fqdn, sender.address, "outbound sender", querier))
    for zone in t.policy.rbl_clients:
        checks.append(_check_list(zone, "DNSBL (IP list)", _ip_query(IP_TEST_LISTED, zone), _ip_query(IP_TEST_UNLISTED, zone), querier))
    for zone in t.policy.rhsbl_senders:
        checks.append(_check_list(zone, "RHSBL (domain list)", f"{rhsbl_test_name(zone)}.{zone}", f"{DOMAIN_TEST_UNLISTED}.{zone}", querier))
    return checks


def _ip_query(address: str, zone: str) -> str:
    return ".".join(reversed(address.split("."))) + "." + zone


def _check_mx(domain: str, answer: Answer, ctx: _Context) -> Check:
    name = "MX"
    if answer.failed:
        return Check(domain, name, _failure(answer), answer.describe())
    if answer.status != "ok":
        return Check(domain, name, FAIL, f"no MX records: {answer.describe()}; expected " + ", ".join(f"MX {MX_PREFERENCE} {x}" for x in ctx.targets))
    found = sorted(answer.values)
    shown = ", ".join(f"{p} {h}" for p, h in found)
    problems = []
    outside = [(p, h) for p, h in found if h not in ctx.targets]
    for p, h in outside:
        what = f"core {h}" if h in ctx.cores else h
        problems.append(f"MX {p} {what} is outside the topology (expected only {', '.join(ctx.targets)})")
    ours = [(p, h) for p, h in found if h in ctx.targets]
    preferences = sorted({p for p, _ in found})
    if len(preferences) > 1:
        main = min(p for p, _ in (ours or found))
        backups = [(p, h) for p, h in found if p != main]
        problems.append("backup MX " + ", ".join(f"{h} at preference {p}" for p, h in backups)
                        + f", not {main} like the others: give every MX the same preference (spammers aim at backup MXs)")
    missing = [x for x in ctx.targets if x not in {h for _, h in found}]
    if missing:
        problems.append("not an MX: " + ", ".join(missing))
    if problems:
        return Check(domain, name, FAIL, "; ".join(problems) + f" [MX {shown}]")
    return Check(domain, name, OK, f"MX {shown}: only {', '.join(ctx.targets)}, equal preference")


def _check_no_core(domain: str, hosts: list[str], ctx: _Context) -> Check:
    name = "no core in MX"
    found = []
    for host in hosts:
        if host in ctx.cores:
            found.append(f"core {host} is an MX")
        for rtype in ("A", "AAAA"):
            answer = ctx.q.lookup(host, rtype)
            for address in answer.values if answer.status == "ok" else ():
                for fqdn, core_address in ctx.cores.items():
                    if address == core_address:
                        found.append(f"MX {host} resolves to core {fqdn}'s address {address}")
    if found:
        return Check(domain, name, FAIL, "; ".join(dict.fromkeys(found)) + ": cores must never receive mail from the Internet")
    if not ctx.cores:
        return Check(domain, name, OK, "no cores in the topology")
    return Check(domain, name, OK, "no MX is or resolves to " + ", ".join(f"core {f} ({a})" for f, a in ctx.cores.items()))


def _check_target(target: str, ctx: _Context) -> Check:
    name = "MX host addresses"
    answers = [ctx.q.lookup(target, rtype) for rtype in ("A", "AAAA")]
    failed = [a for a in answers if a.failed]
    if failed:
        return Check(target, name, _failure(failed[0]), "; ".join(a.describe() for a in failed))
    addresses = [address for a in answers if a.status == "ok" for address in a.values]
    if not addresses:
        return Check(target, name, FAIL, f"does not resolve: {answers[0].describe()}; {answers[1].describe()}")
    if target in ctx.external_targets:
        return Check(target, name, OK, f"resolves to {', '.join(addresses)} (an external balancer: its addresses are the provider's, not compared)")
    problems = []
    foreign = [a for a in addresses if a not in ctx.allowed]
    if foreign:
        problems.append(f"resolves to {', '.join(foreign)}, not a balancer or relay of the topology")
    expected = ctx.target_addresses.get(target, [])
    missing = [a for a in expected if a not in addresses]
    if missing:
        problems.append(f"does not resolve to its address {', '.join(missing)}")
    if problems:
        return Check(target, name, FAIL, "; ".join(problems) + f" [{target} -> {', '.join(addresses)}]")
    return Check(target, name, OK, f"{target} -> " + ", ".join(f"{a} ({ctx.allowed[a]})" for a in addresses))


def _check_fcrdns(fqdn: str, address: str, role: str, q: Querier) -> Check:
    name = f"FCrDNS ({role})"
    ptr = q.lookup(reverse_name(address), "PTR")
    if ptr.failed:
        return Check(fqdn, name, _failure(ptr), f"PTR of {address}: " + ptr.describe())
    if ptr.status != "ok":
        return Check(fqdn, name, FAIL, f"no PTR for {address}: {ptr.describe()}")
    names = list(ptr.values)
    if fqdn not in names:
        return Check(fqdn, name, FAIL, f"PTR of {address} is {', '.join(names)}, not {fqdn}")
    forward = q.lookup(fqdn, "A" if ipaddress.ip_address(address).version == 4 else "AAAA")
    if forward.failed:
        return Check(fqdn, name, _failure(forward), f"{address} -> PTR {fqdn}, but " + forward.describe())
    if forward.status != "ok" or address not in forward.values:
        got = ", ".join(forward.values) if forward.status == "ok" else forward.describe()
        return Check(fqdn, name, FAIL, f"{address} -> PTR {fqdn}, but {fqdn} does not resolve back to {address} ({got})")
    extra = f" (the PTR also names {', '.join(n for n in names if n != fqdn)})" if len(names) > 1 else ""
    return Check(fqdn, name, OK, f"{address} -> PTR {fqdn} -> {address}{extra}")


def _check_spf(domain: str, topology, q: Querier) -> Check:
    name = "SPF"
    answer = q.lookup(domain, "TXT")
    if answer.failed:
        return Check(domain, name, _failure(answer), answer.describe())
    records = spf_records(answer) if answer.status == "ok" else []
    if not records:
        return Check(domain, name, FAIL, f"no SPF record (TXT \"v=spf1 ...\"); expected e.g. \"{spf_record(topology)}\"")
    if len(records) > 1:
        return Check(domain, name, FAIL, f"{len(records)} SPF records, which is a permerror for every receiver: " + " | ".join(records))
    spf = Spf(q)
    problems, passed = [], []
    senders = outbound_senders(topology)
    for sender in senders:
        result, reason = spf.check(sender.address, domain)
        if result == "temperror" and spf.failure is not None:
            return Check(domain, name, _failure(spf.failure), f"evaluating for {sender.address}: {reason}")
        if result == "pass":
            passed.append(f"{sender.role} {sender.name} ({sender.address})")
        else:
            problems.append(f"does not authorise {sender.role} {sender.name} ({sender.address}): {result} ({reason})")
    outsider = OUTSIDER_V4 if all(ipaddress.ip_address(s.address).version == 4 for s in senders) or not senders else OUTSIDER_V6
    result, reason = spf.check(outsider, domain)
    if result == "temperror" and spf.failure is not None:
        return Check(domain, name, _failure(spf.failure), f"evaluating for {outsider}: {reason}")
    if result == "pass":
        problems.append(f"authorises any host: {outsider} gets pass ({reason})")
    elif result not in ("fail", "softfail"):
        problems.append(f"does not refuse other hosts: {outsider} gets {result} (end the record with -all or ~all)")
    notes = f"; note: {'; '.join(dict.fromkeys(spf.notes))}" if spf.notes else ""
    if problems:
        return Check(domain, name, FAIL, "; ".join(problems) + f" [\"{records[0]}\"]{notes}")
    return Check(domain, name, OK, f"\"{records[0]}\": authorises {', '.join(passed) or 'no host'}; others get {result}{notes}")


def _check_list(zone: str, name: str, listed: str, unlisted: str, q: Querier) -> Check:
    yes, no = q.lookup(listed, "A"), q.lookup(unlisted, "A")
    for answer in (yes, no):
        if answer.failed:
            return Check(zone, name, _failure(answer), answer.describe())
    blocked = [a for a in (*yes.values, *no.values) if a in BLOCKED_RESOLVER_CODES]
    if blocked:
        return Check(zone, name, FAIL, f"blocking your resolver: {listed} -> {', '.join(blocked)} ({BLOCKED_RESOLVER_CODES[blocked[0]]}); "
                                       "the relays' RBL checks through this resolver get no real answers")

    def shown(answer: Answer) -> str:
        return ", ".join(answer.values) if answer.status == "ok" else "NXDOMAIN" if answer.status == "nxdomain" else "no A record"

    not_loopback = [a for a in (*yes.values, *no.values) if not ipaddress.ip_address(a) in ipaddress.ip_network("127.0.0.0/8")]
    if not_loopback:
        return Check(zone, name, FAIL, f"lists everything: answers {', '.join(not_loopback)}, outside 127.0.0.0/8, "
                                       f"so the zone is probably parked or wildcarded ({listed} -> {shown(yes)}; {unlisted} -> {shown(no)})")
    if no.status == "ok":
        return Check(zone, name, FAIL, f"lists everything: {unlisted} must not be listed but is ({shown(no)}); "
                                       "the relays would refuse every client or sender")
    if yes.status != "ok":
        return Check(zone, name, FAIL, f"lists nothing: dead or blocking your resolver: the test entry {listed} is not listed ({shown(yes)})")
    return Check(zone, name, OK, f"{listed} -> {shown(yes)}; {unlisted} -> {shown(no)}")


# --- serving the records: NSD, an authoritative server that loads zone files ---------------------


def zone_file_name(zone: str) -> str:
    return f"{zone}.zone"


def nsd_conf(zones: list[str], directory: str, listen: list[str], zone_subdir: str = "") -> str:
    """nsd.conf for an NSD serving `zones` from `directory`/`zone_subdir` (files named by `zone_file_name`),
    listening on `listen` (ADDRESS or ADDRESS@PORT), running as the user that starts it, state in `directory`."""
    lines = [
        "# Generated by mailforge: an authoritative-only NSD for the zones below; it never recurses or forwards.",
        "server:",
        *(f'    ip-address: {address}' for address in listen),
        "    do-ip6: no",
        '    username: ""',
        '    chroot: ""',
        f'    zonesdir: "{directory}"',
        f'    pidfile: "{directory}/nsd.pid"',
        f'    xfrdfile: "{directory}/xfrd.state"',
        f'    zonelistfile: "{directory}/zone.list"',
        f'    xfrdir: "{directory}"',
        f'    logfile: "{directory}/nsd.log"',
        '    database: ""',
        "    server-count: 1",
        "    hide-version: yes",
        "    verbosity: 1",
        "remote-control:",
        "    control-enable: no",
    ]
    for zone in zones:
        lines += ["zone:", f'    name: "{zone}"', f'    zonefile: "{zone_subdir}{zone_file_name(zone)}"']
    return "\n".join(lines) + "\n"
