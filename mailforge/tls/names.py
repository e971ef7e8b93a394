"""The names clients connect to for mail (the MX names): what the MX certificate must cover, what DANE's
TLSA records and the MTA-STS policy name. One definition, so the certificate, the TLSA records and the
policy can never disagree about which hosts are the MX."""

from __future__ import annotations

from ..inventory import Topology


def mx_names(topology: Topology) -> list[str]:
    """The managed or external balancers' fqdns when there is a balancer (the relays behind it take mail
    only from it), else every relay's fqdn (an MX proxy is a relay entry). In topology order, no repeats."""
    if topology.load_balancers:
        return list(dict.fromkeys(lb.fqdn for lb in topology.load_balancers if lb.fqdn))
    return list(dict.fromkeys(r.fqdn for r in topology.relays))
