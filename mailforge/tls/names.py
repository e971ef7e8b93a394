"""The MX names: the names mail from the Internet connects to, which the MX certificate must cover."""

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
