"""Rendering: the validated inventory in, every file of every host out, with no I/O.

`render(inventory)` returns `{host: {absolute path: RenderedFile}}`; `write.py`
puts that on disk.  Same inventory in, byte-identical files out.
"""

from __future__ import annotations

from ..inventory import Inventory
from . import balancer, firewall, postfix
from .files import RenderedFile, Tree

__all__ = ["render", "RenderedFile", "Tree", "texts"]


def render(inventory: Inventory) -> Tree:
    t = inventory.topology
    recipients = inventory.recipients
    tree: Tree = {}

    for lb in t.managed_balancers:
        files: dict[str, RenderedFile] = {"/etc/haproxy/haproxy.cfg": balancer.haproxy_cfg(t, lb)}
        files.update(firewall.rules_files(t, [firewall.Opening(lb.frontend_port, firewall.ANYWHERE, "public smtp")]))
        tree[lb.name] = files

    for relay in t.relays:
        files = {}
        if relay.instances:
            instances = postfix.mx_proxy_instances(t, relay, t.cores, recipients)
            openings = []
            if relay.instances.inbound:
                openings.append(firewall.Opening(relay.instances.inbound.port, firewall.ANYWHERE, "public smtp to postfix-inbound"))
            if relay.instances.outbound:
                openings.append(
                    firewall.Opening(
                        relay.instances.outbound.port,
                        tuple(relay.instances.outbound.trusted_networks),
                        "submission from the trusted networks to postfix-outbound",
                    )
                )
        else:
            instances = [postfix.relay_instance(t, relay, t.cores, recipients=recipients)]
            if t.load_balancers:
                openings = [firewall.Opening(t.backend_port, tuple(t.balancer_sources), "only the balancer may speak to postscreen")]
            else:
                openings = [firewall.Opening(25, firewall.ANYWHERE, "public smtp")]
        for instance in instances:
            files.update(instance.files(t.cluster))
        files.update(firewall.rules_files(t, openings))
        tree[relay.name] = files

    relay_sources = firewall.host_networks(*(r.address for r in t.relays))
    for core in t.cores:
        files = postfix.core_instance(t, core, recipients).files(t.cluster)
        openings = [firewall.Opening(25, relay_sources, "the relays hand over inbound mail")]
        if core.user_networks:
            openings.append(firewall.Opening(25, tuple(core.user_networks), "users send outbound mail"))
        files.update(firewall.rules_files(t, openings))
        tree[core.name] = files

    return {host: dict(sorted(files.items())) for host, files in tree.items()}


def texts(tree: Tree) -> dict[str, dict[str, str]]:
    """The plain `{host: {path: text}}` view of a rendered tree."""
    return {host: {path: f.text for path, f in files.items()} for host, files in tree.items()}
