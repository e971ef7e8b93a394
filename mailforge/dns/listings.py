"""`dns check --listings`: are the cluster's own addresses or domains on the DNS lists the inventory names?

When mail stops arriving, the first thing an operator needs to know is whether a receiver refuses it
because one of the cluster's sending addresses (or a hosted domain) has landed on a blocklist. So
every managed balancer's, relay's and outbound sender's address is asked of each `listings.address_lists`
zone (RFC 5782: the address reversed, IPv6 nibble by nibble, under the zone), and every hosted domain
of each `listings.domain_lists` zone; one row per (address or domain, list).

A list's answer is only believed when the list itself is sane: its RFC 5782 test entry is listed and
its never-listed entry is not (`checks._check_list`). A dead list answers NXDOMAIN for everything,
which would read as "clean"; a wildcarded or parked zone answers for everything, which would read as
"listed"; a list refusing the resolver (Spamhaus's 127.255.255.x) answers with a refusal code. None
of those is a listing or the absence of one: such rows say "unknown" and why. A list that times out
or SERVFAILs keeps that status, never "not listed".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .checks import BLOCKED_RESOLVER_CODES, OK, Check, _check_list, _failure, _ip_query
from .queries import Answer, Querier
from .records import DOMAIN_TEST_UNLISTED, IP_TEST_LISTED, IP_TEST_UNLISTED, outbound_senders, rhsbl_test_name

if TYPE_CHECKING:
    from ..inventory import Topology

LISTED, UNKNOWN = "listed", "unknown"
IP_LIST_CHECK, DOMAIN_LIST_CHECK = "DNSBL (IP list)", "RHSBL (domain list)"

# What a return code means, for lists whose codes are documented and stable (suffix match: the
# Spamhaus DQS zones `<key>.zen.dq.spamhaus.net` answer the same codes).
RETURN_CODES = {
    "zen.spamhaus.org": {
        "127.0.0.2": "SBL: Spamhaus spam sources",
        "127.0.0.3": "SBL CSS: snowshoe spam sources",
        "127.0.0.4": "XBL: exploited or infected host",
        "127.0.0.9": "SBL DROP: hijacked network",
        "127.0.0.10": "PBL (ISP): an address that should not send mail directly",
        "127.0.0.11": "PBL (Spamhaus): an address that should not send mail directly",
    },
    "dbl.spamhaus.org": {
        "127.0.1.2": "spam domain",
        "127.0.1.4": "phishing domain",
        "127.0.1.5": "malware domain",
        "127.0.1.6": "botnet C&C domain",
        "127.0.1.102": "abused legitimate domain: spam",
        "127.0.1.103": "abused legitimate domain: spammed redirector",
        "127.0.1.104": "abused legitimate domain: phishing",
        "127.0.1.105": "abused legitimate domain: malware",
        "127.0.1.106": "abused legitimate domain: botnet C&C",
    },
    "bl.spamcop.net": {"127.0.0.2": "reported as a spam source by SpamCop users"},
}
RETURN_CODES["zen.dq.spamhaus.net"] = RETURN_CODES["zen.spamhaus.org"]
RETURN_CODES["dbl.dq.spamhaus.net"] = RETURN_CODES["dbl.spamhaus.org"]


def meaning(zone: str, code: str) -> str:
    """What `code` means on `zone`, if the list is a known one ("" otherwise)."""
    for known, codes in RETURN_CODES.items():
        if zone == known or zone.endswith("." + known):
            return codes.get(code, "")
    return ""


@dataclass(frozen=True)
class Subject:
    """What is asked about: one of the cluster's addresses (with the hosts that use it) or a hosted domain."""

    name: str  # the row's subject: a host's fqdn (or name), or the domain
    query: str  # the label(s) put in front of the list zone
    shown: str  # how the evidence names it, e.g. "10.232.0.21 (relay relay1)"


def address_query(address: str) -> str:
    """The labels an IP list is asked under (RFC 5782 section 2.1, 2.4): 10.232.0.21 -> 21.0.232.10;
    an IPv6 address nibble by nibble, reversed (32 labels)."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return _ip_query(str(ip), "").rstrip(".")
    return ".".join(reversed(ip.exploded.replace(":", "")))


def cluster_addresses(topology: Topology) -> list[Subject]:
    """Every address the cluster's mail comes from or goes to: the managed balancers', the relays', the
    outbound senders' (the cores, or the MX proxies' outbound instances); each address once, with its hosts."""
    found: dict[str, list[tuple[str, str, list[str]]]] = {}  # address -> [(subject, host name, roles)]

    def add(address: str, subject: str, host: str, role: str) -> None:
        entries = found.setdefault(address, [])
        for _, name, roles in entries:
            if name == host:
                roles.append(role)
                return
        entries.append((subject, host, [role]))

    for lb in topology.managed_balancers:
        if lb.address:
            add(str(lb.address), lb.fqdn or lb.name, lb.name, "balancer")
    for relay in topology.relays:
        add(str(relay.address), relay.fqdn, relay.name, "relay")
    for sender in outbound_senders(topology):
        add(sender.address, sender.fqdn, sender.name, sender.role)
    return [
        Subject(hosts[0][0], address_query(address), f"{address} (" + "; ".join(f"{' and '.join(roles)} {name}" for _, name, roles in hosts) + ")")
        for address, hosts in found.items()
    ]


def listing_checks(topology: Topology, querier: Querier, done: list[Check]) -> list[Check]:
    """The `--listings` rows: each list's own sanity row (unless `done` has it already: a policy list is
    checked anyway), then one row per (address, address list) and (domain, domain list), subject by subject."""
    listings = topology.listings
    if listings is None:
        return []
    asked = [(s, zone, IP_LIST_CHECK) for s in cluster_addresses(topology) for zone in listings.address_lists]
    asked += [(Subject(d, d, d), zone, DOMAIN_LIST_CHECK) for d in sorted(topology.domains) for zone in listings.domain_lists]
    lists = list(dict.fromkeys((zone, kind) for _, zone, kind in asked))
    querier.prefetch([(name, "A") for zone, kind in lists for name in _tests(zone, kind)] + [(f"{s.query}.{zone}", "A") for s, zone, _ in asked])
    have = {(c.subject, c.check): c for c in done}
    checks: list[Check] = []
    sanity: dict[tuple[str, str], Check] = {}
    for zone, kind in lists:
        sanity[(zone, kind)] = have.get((zone, kind)) or _check_list(zone, kind, *_tests(zone, kind), querier)
        if (zone, kind) not in have:
            checks.append(sanity[(zone, kind)])
    listed = [(s, zone) for s, zone, kind in asked if sanity[(zone, kind)].ok and querier.lookup(f"{s.query}.{zone}", "A").status == "ok"]
    querier.prefetch([(f"{s.query}.{zone}", "TXT") for s, zone in listed])
    checks.extend(_listing(zone, s, sanity[(zone, kind)], querier) for s, zone, kind in asked)
    return checks


def _tests(zone: str, kind: str) -> tuple[str, str]:
    if kind == IP_LIST_CHECK:
        return _ip_query(IP_TEST_LISTED, zone), _ip_query(IP_TEST_UNLISTED, zone)
    return f"{rhsbl_test_name(zone)}.{zone}", f"{DOMAIN_TEST_UNLISTED}.{zone}"


def _listing(zone: str, subject: Subject, sane: Check, q: Querier) -> Check:
    """One (address or domain, list) row: ok "not listed", "listed" with the A answer, its meaning and the TXT
    reason, a timeout or SERVFAIL as such, or "unknown" when the list's answers cannot be believed."""
    name = f"listing in {zone}"
    asked = f"{subject.query}.{zone}"
    answer = q.lookup(asked, "A")
    if answer.failed:
        return Check(subject.name, name, _failure(answer), f"{subject.shown}: {answer.describe()}")
    if not sane.ok:
        return Check(
            subject.name,
            name,
            UNKNOWN if sane.status == "fail" else sane.status,
            f"{subject.shown}: the list's answer ({_shown(answer)}) cannot be believed: {zone} {sane.evidence.split(':')[0]} (its {sane.check} row says why)",
        )
    if answer.status != "ok":
        return Check(subject.name, name, OK, f"{subject.shown}: not listed ({asked} A: {_shown(answer)})")
    blocked = [a for a in answer.values if a in BLOCKED_RESOLVER_CODES]
    if blocked:
        return Check(
            subject.name, name, UNKNOWN, f"{subject.shown}: {asked} -> {blocked[0]}: the list refuses this resolver ({BLOCKED_RESOLVER_CODES[blocked[0]]})"
        )
    codes = ", ".join(a + (f" ({meaning(zone, a)})" if meaning(zone, a) else "") for a in answer.values)
    txt = q.lookup(asked, "TXT")
    reason = "; ".join(f'"{t}"' for t in txt.values) if txt.status == "ok" else f"no reason given ({txt.describe()})"
    return Check(subject.name, name, LISTED, f"{subject.shown}: LISTED: {asked} A {codes}; TXT {reason}")


def _shown(answer: Answer) -> str:
    return ", ".join(answer.values) if answer.status == "ok" else "NXDOMAIN" if answer.status == "nxdomain" else "no A record"
