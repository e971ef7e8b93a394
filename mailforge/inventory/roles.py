"""What each host of a topology is, asked in one place: its role, addresses, Postfix instances, ports
and place in a rollout. Every command that needs "which hosts exist and what is each" asks here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .model import Core, LoadBalancer, Relay, Topology
from .releases import RELEASES, DebianRelease


class Role(StrEnum):
    """A host's job in the cluster, named as the Ansible group its hosts are in."""

    BALANCER = "balancer"
    RELAY = "relay"
    MX_PROXY = "mxproxy"  # a relay running several Postfix instances with postmulti
    CORE = "core"

    @property
    def group(self) -> str:
        return {"balancer": "balancers", "relay": "relays", "mxproxy": "mxproxies", "core": "cores"}[self.value]

    @property
    def runs_postfix(self) -> bool:
        return self is not Role.BALANCER


# Rollout stages: cores first (they must know a new mailbox before a relay accepts mail for it), then
# the relays and MX proxies a batch at a time, then the balancers once the relays behind them answer.
STAGES = {Role.CORE: 0, Role.MX_PROXY: 1, Role.RELAY: 1, Role.BALANCER: 2}
GROUPS = tuple(role.group for role in Role)

# Where each Postfix instance's configuration lives: the default one, and an MX proxy's postmulti
# instances. Render writes them here; `Host.instances` lists them.
DEFAULT_INSTANCE = "/etc/postfix"
INBOUND_INSTANCE = "/etc/postfix-inbound"
OUTBOUND_INSTANCE = "/etc/postfix-outbound"


@dataclass(frozen=True)
class Host:
    """One host mailforge deploys to, and the questions every command asks of it."""

    name: str
    role: Role
    entry: LoadBalancer | Relay | Core  # the host's own entry in topology.yml
    topology: Topology

    @property
    def address(self) -> str | None:
        return self.entry.address

    @property
    def fqdn(self) -> str | None:
        return self.entry.fqdn

    @property
    def group(self) -> str:
        return self.role.group

    @property
    def debian_release(self) -> DebianRelease:
        """The Debian release the host runs: its own debian_release, else the topology's."""
        return RELEASES[self.entry.debian_release or self.topology.debian_release]

    @property
    def stage(self) -> int:
        return STAGES[self.role]

    @property
    def instances(self) -> list[str]:
        """The config directories of the Postfix instances the host runs (none on a balancer)."""
        if self.role is Role.MX_PROXY:
            relay = self.entry
            assert isinstance(relay, Relay) and relay.instances is not None
            return [DEFAULT_INSTANCE] + ([INBOUND_INSTANCE] if relay.instances.inbound else []) + ([OUTBOUND_INSTANCE] if relay.instances.outbound else [])
        return [DEFAULT_INSTANCE] if self.role.runs_postfix else []

    @property
    def ports(self) -> list[int]:
        """The TCP ports the host takes mail on."""
        t = self.topology
        if isinstance(self.entry, LoadBalancer):
            return [self.entry.frontend_port]
        if self.role is Role.MX_PROXY:
            instances = self.entry.instances if isinstance(self.entry, Relay) else None
            assert instances is not None
            return [i.port for i in (instances.inbound, instances.outbound) if i is not None]
        if self.role is Role.RELAY:
            return [t.backend_port if t.load_balancers else 25]
        return [25]

    @property
    def exporters(self) -> dict[str, int]:
        """The host's Prometheus exporters and their ports, with `monitoring` on: HAProxy's own on a
        balancer (key "haproxy"), else one prometheus-postfix-exporter per Postfix instance (keyed by
        its config directory), on consecutive ports from postfix_exporter_port in `instances` order.
        Empty without `monitoring`."""
        monitoring = self.topology.monitoring
        if monitoring is None:
            return {}
        if self.role is Role.BALANCER:
            return {HAPROXY_EXPORTER: monitoring.haproxy_exporter_port}
        return {directory: monitoring.postfix_exporter_port + n for n, directory in enumerate(self.instances)}


HAPROXY_EXPORTER = "haproxy"  # the key of a balancer's exporter in `Host.exporters`


def hosts_of(topology: Topology) -> list[Host]:
    """The hosts mailforge deploys to, in the inventory's order: managed balancers, relays, cores.
    An external balancer (a cloud's) is not a host: nothing is deployed to it."""
    hosts = [Host(lb.name, Role.BALANCER, lb, topology) for lb in topology.managed_balancers]
    hosts += [Host(r.name, Role.MX_PROXY if r.instances else Role.RELAY, r, topology) for r in topology.relays]
    hosts += [Host(c.name, Role.CORE, c, topology) for c in topology.cores]
    return hosts


def rollout_order(hosts: list[Host], batch: int = 1) -> list[list[str]]:
    """Host names in the batches a Postfix change goes live in: all cores, then the relays and MX
    proxies `batch` at a time, as playbooks/site.yml orders a deploy (whose last play, the balancers,
    holds no Postfix and so no batch here)."""
    order: list[list[str]] = []
    cores = [h.name for h in hosts if h.role is Role.CORE]
    if cores:
        order.append(cores)
    relays = [h.name for h in hosts if h.stage == 1]
    order += [relays[i : i + batch] for i in range(0, len(relays), batch)]
    return order


def suggested_mx_name(topology: Topology) -> str:
    """A name to give a balancer that has none, for the MX records: mx.<first hosted domain>, unless a host has it."""
    taken = {h.fqdn for h in hosts_of(topology)} | {lb.fqdn for lb in topology.load_balancers}
    domain = topology.domains[0]
    return next(name for name in (f"mx.{domain}", f"mail.{domain}", *(f"mx{i}.{domain}" for i in range(100))) if name not in taken)
