"""The names the cluster's public certificates must cover: the MX names, and the MTA-STS policy hosts."""

from __future__ import annotations

from ..inventory import Topology


def mx_names(topology: Topology) -> list[str]:
    """The balancers' fqdns when there is any balancer (managed or external: clients reach the relays
    only through it), else every relay's fqdn (an MX proxy is a relay with instances). In topology order, each once."""
    if topology.load_balancers:
        names = [lb.fqdn for lb in topology.load_balancers if lb.fqdn]
    else:
        names = [relay.fqdn for relay in topology.relays]
    return list(dict.fromkeys(n.lower() for n in names))


def policy_hosts(topology: Topology) -> list[str]:
    """The names the MTA-STS policy is served under, one per hosted domain: what the mta-sts certificate must cover."""
    return [f"mta-sts.{domain}" for domain in topology.domains]
