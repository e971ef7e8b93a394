"""The checks of `mailforge dns check`: the plan of `records` against what a nameserver answers,
one row (subject, check, status, evidence) each, so that a person sees why a check passed or failed
and a timeout or SERVFAIL is not reported as a missing record.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .mail_auth import DkimInputs, dkim_checks, dmarc_check
from .queries import Answer, Querier
from .records import (
    DOMAIN_TEST_UNLISTED,
    IP_TEST_LISTED,
    IP_TEST_UNLISTED,
    MX_PREFERENCE,
    dmarc_name,
    mx_target_addresses,
    mx_targets,
    outbound_senders,
    reverse_name,
    rhsbl_test_name,
    spf_record,
)
from .spf import LOOKUP_LIMIT, VOID_LIMIT, Spf, spf_records
from .tls_checks import TlsInputs, tls_checks

if TYPE_CHECKING:
    from ..inventory import Topology

# Spamhaus answers these instead of a listing when it refuses the resolver that asked.
BLOCKED_RESOLVER_CODES = {
    "127.255.255.252": "typing error in the zone name",
    "127.255.255.254": "query through a public or open resolver",
    "127.255.255.255": "too many queries from this resolver",
}
OUTSIDER_V4, OUTSIDER_V6 = "192.0.2.1", "2001:db8::1"  # documentation addresses (RFC 5737, RFC 3849): never a sender

OK, FAIL, TIMEOUT, SERVFAIL, ERROR = "ok", "fail", "timeout", "servfail", "error"


@dataclass
class Check:
    subject: str  # a hosted domain, a host name, or a DNS list zone
    check: str
    status: str  # ok, fail, timeout, servfail, error
    evidence: str

    @property
    def ok(self) -> bool:
        return self.status == OK


def _failure(answer: Answer) -> str:
    return {"timeout": TIMEOUT, "servfail": SERVFAIL}.get(answer.status, ERROR)


@dataclass
class _Context:
    q: Querier
    targets: list[str]  # the names `dns zone` prints as MX (none for balancers without an fqdn)
    target_addresses: dict[str, list[str]]
    allowed: dict[str, str]  # address -> what it is: the balancers' when there are balancers, else the relays'
    cores: dict[str, str]  # core fqdn -> address
    external_targets: set[str] = field(default_factory=set)
    relays: dict[str, str] = field(default_factory=dict)  # relay fqdn -> address
    behind: str = ""  # "": relays are the MX; else why a relay cannot be one, e.g. "port 10024, PROXY v1"
    opaque: bool = False  # an external balancer without address: its (the provider's) addresses are unknown

    def addresses(self, host: str) -> list[str]:
        return [a for rtype in ("A", "AAAA") for answer in [self.q.lookup(host, rtype)] if answer.status == "ok" for a in answer.values]

    def relay_of(self, host: str, addresses: list[str]) -> str | None:
        """The relay an MX name is, or resolves to (None if neither)."""
        for fqdn, address in self.relays.items():
            if host == fqdn or address in addresses:
                return fqdn
        return None


def run_checks(topology: Topology, querier: Querier, tls: TlsInputs | None = None, dkim: DkimInputs | None = None) -> list[Check]:
    """Every check of `mailforge dns check`, in a stable order. Raises DnsError if no nameserver answers at all.
    With `tls` (the controller's store and trust), the TLSA, MTA-STS and TLS-RPT rows the tls section asks for;
    with `dkim` (the published selectors' keys), a DKIM row per selector, the ones seen recorded in `dkim.seen`;
    with a dmarc section, a DMARC row per hosted domain."""
    t = topology
    querier.probe(sorted(t.domains)[0])
    allowed = {}
    for lb in t.load_balancers:
        if lb.address:
            allowed[lb.address] = f"balancer {lb.name}"
    if not t.load_balancers:
        for r in t.relays:
            allowed[r.address] = f"relay {r.name}"
    behind = ""
    if t.load_balancers:
        lb = t.load_balancers[0]
        behind = f"port {lb.backend_port or 25}" + ("" if lb.proxy_protocol == "none" else f", PROXY {lb.proxy_protocol}")
    ctx = _Context(
        querier,
        list(dict.fromkeys(mx_targets(t))),
        mx_target_addresses(t),
        allowed,
        {c.fqdn: c.address for c in t.cores},
        {lb.fqdn for lb in t.load_balancers if lb.fqdn and lb.external and not lb.address},
        {r.fqdn: r.address for r in t.relays},
        behind,
        any(lb.external and not lb.address for lb in t.load_balancers),
    )
    checks: list[Check] = []
    seen_targets: list[str] = []
    querier.prefetch([(domain, rtype) for domain in sorted(t.domains) for rtype in ("MX", "TXT")] + [(dmarc_name(d), "TXT") for d in t.domains if t.dmarc])
    for domain in sorted(t.domains):
        answer = querier.lookup(domain, "MX")
        checks.append(_check_mx(domain, answer, ctx))
        found = [host for _, host in answer.values] if answer.status == "ok" else []
        seen_targets.extend(host for host in found if host not in seen_targets)
        checks.append(_check_no_core(domain, found, ctx))
        checks.append(_check_spf(domain, t, querier))
        if t.dmarc is not None:
            checks.append(Check(*dmarc_check(domain, t, querier)))
    if dkim is not None:
        checks.extend(Check(*row) for row in dkim_checks(querier, dkim))
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
    if tls is not None:
        checks.extend(Check(c.subject, c.check, c.status, c.evidence) for c in tls_checks(t, querier, tls))
    return checks


def _ip_query(address: str, zone: str) -> str:
    return ".".join(reversed(address.split("."))) + "." + zone


def _expected(ctx: _Context) -> str:
    if ctx.targets:
        return ", ".join(ctx.targets)
    balancers = sorted(set(ctx.allowed.values()))
    return "a name of " + (" or ".join(balancers) if balancers else "the external balancer") + " (it has no fqdn in the topology)"


def _check_mx(domain: str, answer: Answer, ctx: _Context) -> Check:
    """The MX names only hosts that take mail on port 25: the expected targets, or any other name that resolves
    to a balancer's address only (the balancer's name is the admin's to choose); never a relay behind a balancer."""
    name = "MX"
    if answer.failed:
        return Check(domain, name, _failure(answer), answer.describe())
    if answer.status != "ok":
        expected = ", ".join(f"MX {MX_PREFERENCE} {x}" for x in ctx.targets) or f"an MX naming {_expected(ctx)}"
        return Check(domain, name, FAIL, f"no MX records: {answer.describe()}; expected {expected}")
    found = sorted(answer.values)
    shown = ", ".join(f"{p} {h}" for p, h in found)
    problems = []
    aliases: dict[str, str] = {}  # MX name outside the topology -> what it names
    for p, h in found:
        if h in ctx.targets:
            continue
        if h in ctx.cores:
            problems.append(f"MX {p} core {h} is outside the topology (expected only {_expected(ctx)})")
            continue
        addresses = ctx.addresses(h)
        relay = ctx.relay_of(h, addresses) if ctx.behind else None
        if addresses and all(a in ctx.allowed for a in addresses):
            aliases[h] = ", ".join(dict.fromkeys(ctx.allowed[a] for a in addresses))
        elif relay:
            problems.append(f"MX {p} {h}: relay {relay} takes mail only from the balancer ({ctx.behind}), so mail sent to it fails")
        elif ctx.opaque and addresses and not any(a in ctx.cores.values() for a in addresses):
            aliases[h] = "the external balancer (its addresses are the provider's, not compared)"
        else:
            problems.append(f"MX {p} {h} is outside the topology (expected only {_expected(ctx)})")
    ours = [(p, h) for p, h in found if h in ctx.targets or h in aliases]
    preferences = sorted({p for p, _ in found})
    if len(preferences) > 1:
        main = min(p for p, _ in (ours or found))
        backups = [(p, h) for p, h in found if p != main]
        problems.append(
            "backup MX "
            + ", ".join(f"{h} at preference {p}" for p, h in backups)
            + f", not {main} like the others: give every MX the same preference (spammers aim at backup MXs)"
        )
    # Every balancer gets mail: an expected target missing by name is there if another MX name resolves to its address.
    alias_addresses = {a for h in aliases for a in ctx.addresses(h)}
    missing = [x for x in ctx.targets if x not in {h for _, h in found} and not (set(ctx.target_addresses.get(x, [])) & alias_addresses)]
    if not ctx.targets:
        missing += [what for address, what in ctx.allowed.items() if address not in alias_addresses]
        if not aliases and ctx.opaque:
            missing.append("the external balancer")
    if missing:
        problems.append("not an MX: " + ", ".join(missing))
    if problems:
        return Check(domain, name, FAIL, "; ".join(problems) + f" [MX {shown}]")
    named = [h for _, h in found if h in ctx.targets] + [f"{h} ({what})" for h, what in aliases.items()]
    return Check(domain, name, OK, f"MX {shown}: only {', '.join(dict.fromkeys(named))}, equal preference")


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
    relay = ctx.relay_of(target, addresses) if ctx.behind else None
    if relay:
        return Check(target, name, FAIL, f"relay {relay} takes mail only from the balancer ({ctx.behind}): not an MX host [{target} -> {', '.join(addresses)}]")
    if target in ctx.external_targets or (ctx.opaque and not any(a in ctx.cores.values() for a in addresses) and target not in ctx.target_addresses):
        return Check(target, name, OK, f"resolves to {', '.join(addresses)} (an external balancer: its addresses are the provider's, not compared)")
    problems = []
    foreign = [a for a in addresses if a not in ctx.allowed]
    if foreign:
        problems.append(f"resolves to {', '.join(foreign)}, not a {'balancer' if ctx.behind else 'relay'} of the topology")
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


def _check_spf(domain: str, topology: Topology, q: Querier) -> Check:
    name = "SPF"
    answer = q.lookup(domain, "TXT")
    if answer.failed:
        return Check(domain, name, _failure(answer), answer.describe())
    records = spf_records(answer) if answer.status == "ok" else []
    if not records:
        return Check(domain, name, FAIL, f'no SPF record (TXT "v=spf1 ..."); expected e.g. "{spf_record(topology)}"')
    if len(records) > 1:
        return Check(domain, name, FAIL, f"{len(records)} SPF records, which is a permerror for every receiver: " + " | ".join(records))
    spf = Spf(q)
    terms, voids, failure = spf.count_lookups(domain)
    if failure is not None:
        return Check(domain, name, _failure(failure), f"counting the DNS lookups: {failure.describe()}")
    if len(terms) > LOOKUP_LIMIT or len(voids) > VOID_LIMIT:
        over = []
        if len(terms) > LOOKUP_LIMIT:
            over.append(f"{len(terms)} DNS lookups (limit {LOOKUP_LIMIT}): {', '.join(terms)}")
        if len(voids) > VOID_LIMIT:
            over.append(f"{len(voids)} void lookups (limit {VOID_LIMIT}): {', '.join(voids)}")
        return Check(
            domain,
            name,
            FAIL,
            "; ".join(over) + f': receivers stop with permerror (RFC 7208 4.6.4), so no sender passes; flatten the includes ["{records[0]}"]',
        )
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
        return Check(domain, name, FAIL, "; ".join(problems) + f' ["{records[0]}"]{notes}')
    return Check(
        domain,
        name,
        OK,
        f'"{records[0]}": authorises {", ".join(passed) or "no host"}; others get {result}; {len(terms)} DNS lookups (limit {LOOKUP_LIMIT}){notes}',
    )


def _check_list(zone: str, name: str, listed: str, unlisted: str, q: Querier) -> Check:
    yes, no = q.lookup(listed, "A"), q.lookup(unlisted, "A")
    for answer in (yes, no):
        if answer.failed:
            return Check(zone, name, _failure(answer), answer.describe())
    blocked = [a for a in (*yes.values, *no.values) if a in BLOCKED_RESOLVER_CODES]
    if blocked:
        return Check(
            zone,
            name,
            FAIL,
            f"blocking your resolver: {listed} -> {', '.join(blocked)} ({BLOCKED_RESOLVER_CODES[blocked[0]]}); "
            "the relays' RBL checks through this resolver get no real answers",
        )

    def shown(answer: Answer) -> str:
        return ", ".join(answer.values) if answer.status == "ok" else "NXDOMAIN" if answer.status == "nxdomain" else "no A record"

    not_loopback = [a for a in (*yes.values, *no.values) if ipaddress.ip_address(a) not in ipaddress.ip_network("127.0.0.0/8")]
    if not_loopback:
        return Check(
            zone,
            name,
            FAIL,
            f"lists everything: answers {', '.join(not_loopback)}, outside 127.0.0.0/8, "
            f"so the zone is probably parked or wildcarded ({listed} -> {shown(yes)}; {unlisted} -> {shown(no)})",
        )
    if no.status == "ok":
        return Check(zone, name, FAIL, f"lists everything: {unlisted} must not be listed but is ({shown(no)}); the relays would refuse every client or sender")
    if yes.status != "ok":
        return Check(zone, name, FAIL, f"lists nothing: dead or blocking your resolver: the test entry {listed} is not listed ({shown(yes)})")
    return Check(zone, name, OK, f"{listed} -> {shown(yes)}; {unlisted} -> {shown(no)}")
