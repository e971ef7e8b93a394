"""Rendering: the validated inventory in, every file of every host out, with no I/O.

`render(inventory)` returns `{host: {absolute path: RenderedFile}}`; `write.py`
puts that on disk.  Same inventory in, byte-identical files out.
"""

from __future__ import annotations

from ..inventory import Core, Inventory, LoadBalancer, Relay, Role
from ..inventory.roles import HAPROXY_EXPORTER
from . import balancer, dkim, firewall, maps, metrics, outbound, postfix
from .files import RenderedFile, Tree

__all__ = ["render", "RenderedFile", "Tree"]


def render(inventory: Inventory) -> Tree:
    t = inventory.topology
    recipients = inventory.recipients
    # One recipients map for every relay: the same object, so it is made, written and hashed once.
    recipients_map = maps.relay_recipients(t, recipients) if recipients is not None else None
    tree: Tree = {}

    for host in inventory.hosts:
        files: dict[str, RenderedFile] = {}
        if host.role is Role.BALANCER:
            lb = host.entry
            assert isinstance(lb, LoadBalancer)
            files["/etc/haproxy/haproxy.cfg"] = balancer.haproxy_cfg(t, lb, host.exporters.get(HAPROXY_EXPORTER))
            files.update(balancer.mta_sts_files(t))
            files.update(firewall.rules_files(t, firewall.host_openings(host)))
        elif host.role is Role.MX_PROXY:
            relay = host.entry
            assert isinstance(relay, Relay) and relay.instances is not None
            for instance in postfix.mx_proxy_instances(t, relay, t.cores, recipients, recipients_map):
                files.update(instance.files(t.cluster))
            if relay.instances.outbound:  # postfix-outbound sends to the Internet
                files.update(outbound.files(t))
                files.update(dkim.files(t, relay.instances.outbound.trusted_networks))
            files.update(firewall.rules_files(t, firewall.host_openings(host)))
        elif host.role is Role.RELAY:
            relay = host.entry
            assert isinstance(relay, Relay)
            files.update(postfix.relay_instance(t, relay, t.cores, recipients=recipients, recipients_map=recipients_map).files(t.cluster))
            files.update(firewall.rules_files(t, firewall.host_openings(host)))
        else:
            core = host.entry
            assert isinstance(core, Core)
            files.update(postfix.core_instance(t, core, recipients).files(t.cluster))
            files.update(outbound.files(t))  # the cores send to the Internet
            files.update(dkim.files(t, core.user_networks))  # and sign what their users send
            files.update(firewall.rules_files(t, firewall.host_openings(host)))
        if host.role.runs_postfix:
            files.update(metrics.postfix_exporters(host, t.cluster))
        tree[host.name] = dict(sorted(files.items()))
    return tree
