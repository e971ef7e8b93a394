"""iptables-restore files: each host admits on its mail ports only who the topology says.

Whoever can speak the PROXY protocol to postscreen can claim any client
address, so a relay behind a balancer opens its backend port to the balancer
alone.  Policy is DROP; loopback, established traffic, ICMP and SSH from the
admin networks stay open.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..inventory import Topology
from .files import IP6TABLES_RESTORE, IPTABLES_RESTORE, RenderedFile, header, template

ANYWHERE = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class Opening:
    """TCP `port` open to `sources` (networks), for the reason given in `why`."""

    port: int
    sources: tuple[str, ...]
    why: str


def _for_family(sources: tuple[str, ...], version: int) -> list[str]:
    return [s for s in sources if ipaddress.ip_network(s).version == version]


def rules_files(t: Topology, openings: list[Opening]) -> dict[str, RenderedFile]:
    admin = tuple(t.firewall.admin_networks) or ANYWHERE
    openings = [Opening(t.firewall.ssh_port, admin, "ssh from the admin networks")] + openings
    files = {}
    for version, path, action in ((4, "/etc/iptables/rules.v4", IPTABLES_RESTORE), (6, "/etc/iptables/rules.v6", IP6TABLES_RESTORE)):
        rules = []
        for opening in openings:
            for source in _for_family(opening.sources, version):
                rules.append({"port": opening.port, "source": source, "why": opening.why})
        text = template("etc/iptables/rules", header=header(t.cluster), version=version, rules=rules)
        files[path] = RenderedFile(text, action, mode="0640")
    return files


def host_networks(*addresses: str) -> tuple[str, ...]:
    return tuple(str(ipaddress.ip_network(a)) for a in addresses)
