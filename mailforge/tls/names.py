"""The MX names: the names SMTP clients connect to, which the MX certificate must cover.

One definition for every TLS feature (ACME, `deploy`'s certificate check, DANE, MTA-STS), so they
can never disagree about which names a certificate is for."""

from __future__ import annotations

from ..inventory.model import Topology


def mx_names(topology: Topology) -> list[str]:
    """The first balancer's fqdn when the relays sit behind a balancer (managed or external): clients
    reach the relays only through it. Else every relay's fqdn (MX proxies are relays with instances)."""
    balancer_names = [lb.fqdn for lb in topology.load_balancers if lb.fqdn]
    if balancer_names:
        return balancer_names[:1]
    return [r.fqdn for r in topology.relays]
