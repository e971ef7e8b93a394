"""iptables-restore files: each host admits on its mail ports only who the topology says.

Whoever can speak the PROXY protocol to postscreen can claim any client
address, so a relay behind a balancer opens its backend port to the balancer
alone.  Policy is DROP; loopback, established traffic, ICMP and SSH from the
admin networks stay open.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..inventory import Core, Host, LoadBalancer, Relay, Role, Topology
from ..inventory.roles import HAPROXY_EXPORTER
from .balancer import MTA_STS_PORT
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


def ssh_opening(t: Topology) -> Opening:
    """SSH, on every host: from the admin networks, or from anywhere when none are named."""
    return Opening(t.firewall.ssh_port, tuple(t.firewall.admin_networks) or ANYWHERE, "ssh from the admin networks")


def ssh_admits(t: Topology, address: str, port: int) -> bool:
    """Whether the rendered firewall lets an SSH connection from `address` to `port` through: the check
    that keeps a deploy from locking out the controller that runs it."""
    opening = ssh_opening(t)
    client = ipaddress.ip_address(address)
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:  # sshd on a dual-stack socket
        client = client.ipv4_mapped
    return port == opening.port and any(client in ipaddress.ip_network(s) for s in opening.sources if ipaddress.ip_network(s).version == client.version)


def rules_files(t: Topology, openings: list[Opening]) -> dict[str, RenderedFile]:
    openings = [ssh_opening(t)] + openings
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


def host_openings(host: Host) -> list[Opening]:
    """Who the host's firewall admits on its mail ports and its metrics ports, and why (SSH is added by
    `rules_files`): what render writes into the rules and `mailforge graph` draws."""
    return mail_openings(host) + metrics_openings(host)


def metrics_openings(host: Host) -> list[Opening]:
    """Each exporter's port, to the monitoring networks only (none without `monitoring`)."""
    monitoring = host.topology.monitoring
    if monitoring is None:
        return []
    return [
        Opening(port, tuple(monitoring.networks), "prometheus metrics of " + ("haproxy" if what == HAPROXY_EXPORTER else what) + " for the monitoring networks")
        for what, port in host.exporters.items()
    ]


def mail_openings(host: Host) -> list[Opening]:
    """Who the host's firewall admits on its mail ports, and why."""
    t = host.topology
    entry = host.entry
    if host.role is Role.BALANCER:
        assert isinstance(entry, LoadBalancer)
        openings = [Opening(entry.frontend_port, ANYWHERE, "public smtp")]
        if t.tls.mta_sts is not None:
            openings.append(Opening(MTA_STS_PORT, ANYWHERE, "the MTA-STS policy over https"))
        return openings
    if host.role is Role.MX_PROXY:
        assert isinstance(entry, Relay) and entry.instances is not None
        openings = []
        if entry.instances.inbound:
            openings.append(Opening(entry.instances.inbound.port, ANYWHERE, "public smtp to postfix-inbound"))
        if entry.instances.outbound:
            openings.append(
                Opening(
                    entry.instances.outbound.port, tuple(entry.instances.outbound.trusted_networks), "submission from the trusted networks to postfix-outbound"
                )
            )
        return openings
    if host.role is Role.RELAY:
        if t.load_balancers:
            return [Opening(t.backend_port, tuple(t.balancer_sources), "only the balancer may speak to postscreen")]
        return [Opening(25, ANYWHERE, "public smtp")]
    assert isinstance(entry, Core)
    openings = [Opening(25, host_networks(*(r.address for r in t.relays)), "the relays hand over inbound mail")]
    if entry.user_networks:
        openings.append(Opening(25, tuple(entry.user_networks), "users send outbound mail"))
    return openings
