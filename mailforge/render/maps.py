"""Postfix lookup tables as source text, in a stable order (sorted keys build faster).

Each function returns the whole table: maps are always rendered complete from
the inventory, so a recipient removed from the sources disappears everywhere.
"""

from __future__ import annotations

import ipaddress

from ..inventory import Core, RecipientSet, Topology
from .files import Pieces, header


def relay_domains(t: Topology) -> str:
    return header(t.cluster) + "".join(f"{domain} OK\n" for domain in sorted(t.domains))


def relay_recipients(t: Topology, recipients: RecipientSet) -> Pieces:
    """`local@domain OK` for every recipient, one piece per domain: a million lines cost one join per domain."""
    domains = sorted(t.domains)

    def produce():
        yield header(t.cluster)
        for domain in domains:
            separator = f"@{domain} OK\n"
            local_parts = recipients.local_parts_at(domain)
            if local_parts:
                yield separator.join(local_parts) + separator

    return Pieces(produce)


def nexthop(address: str, port: int = 25) -> str:
    """A Postfix nexthop that skips MX lookups: [192.0.2.1]:25 or [ipv6:2001:db8::1]:25."""
    if ipaddress.ip_address(address).version == 6:
        return f"[ipv6:{address}]:{port}"
    return f"[{address}]:{port}"


def transport(t: Topology, cores: list[Core]) -> str:
    """Every hosted domain to the cores, as an ordered failover list of next hops."""
    hops = ", ".join(nexthop(core.address) for core in cores)
    return header(t.cluster) + "".join(f"{domain} relay:{hops}\n" for domain in sorted(t.domains))


def helo_access(t: Topology, relay_names: list[str], relay_addresses: list[str]) -> str:
    """Refuse a client that greets with one of our own names or addresses: it is lying."""
    reason = "REJECT 5.7.1 forged HELO: you are not this host"
    keys: list[str] = []
    for domain in sorted(t.domains):
        keys += [domain, "." + domain]
    keys += sorted(set(relay_names))
    for address in relay_addresses:
        keys += [address, f"[{address}]"]
    return header(t.cluster) + "".join(f"{key} {reason}\n" for key in dict.fromkeys(keys))


def sender_access(t: Topology) -> str:
    """Refuse mail from outside whose envelope sender claims a hosted domain."""
    reason = "REJECT 5.7.1 forged sender: mail from this domain does not come from outside"
    return header(t.cluster) + "".join(f"{domain} {reason}\n" for domain in sorted(t.domains))


def header_checks(t: Topology) -> str:
    return header(t.cluster) + "".join(f"{check.match} {check.action}\n" for check in t.policy.header_checks)


def postscreen_access(t: Topology) -> str:
    """The managed balancers skip postscreen's tests: their health checks must not be penalised."""
    lines = [f"{ipaddress.ip_network(lb.address)} permit\n" for lb in t.managed_balancers if lb.address]
    return header(t.cluster) + "".join(lines)


def relay_clients(t: Topology) -> str:
    """On a core: the relays may hand over mail, but only over TLS (a plaintext session gets a 450, so
    the relay keeps the mail queued); every other non-user client is refused."""
    return header(t.cluster) + "".join(f"{ipaddress.ip_network(r.address)} reject_plaintext_session, permit\n" for r in t.relays)


def tls_policy(t: Topology, cores: list[Core]) -> str:
    """On a relay: each core's next hop, keyed exactly as `transport` names it, gets TLS that verifies
    against the private CA (smtp_tls_CAfile) and matches the core's fqdn: never delivered in clear."""
    level = t.tls.internal_level
    return header(t.cluster) + "".join(f"{nexthop(core.address)} {level} match={core.fqdn}\n" for core in cores)


def virtual_mailboxes(t: Topology, recipients: RecipientSet | None) -> str | Pieces:
    """On a core: one Maildir per recipient, or a catch-all per domain when there is no list."""
    if recipients is None:
        return header(t.cluster) + "".join(f"@{domain} {domain}/catchall/\n" for domain in sorted(t.domains))
    domains = sorted(t.domains)

    def produce():
        yield header(t.cluster)
        for domain in domains:
            middle = f"@{domain} {domain}/"
            yield "".join([f"{local}{middle}{local.replace('/', '_') if '/' in local else local}/\n" for local in recipients.local_parts_at(domain)])

    return Pieces(produce)
