"""haproxy.cfg for a managed balancer: TCP on the frontend port, every relay behind it.

Health checks go through the same PROXY header as real clients
(`check-send-proxy`): a relay whose postscreen expects the header would
otherwise see a bare SMTP conversation and fail every check.
"""

from __future__ import annotations

from ..inventory import LoadBalancer, Topology
from .files import HAPROXY_RELOAD, RenderedFile, header, template

SEND_PROXY = {"v1": "send-proxy", "v2": "send-proxy-v2", "none": ""}


def haproxy_cfg(t: Topology, balancer: LoadBalancer) -> RenderedFile:
    proxy = SEND_PROXY[balancer.proxy_protocol]
    server_options = "check inter 10s fall 3 rise 2" + (f" {proxy} check-send-proxy" if proxy else "")
    assert balancer.address is not None  # checks.py: a managed balancer has an address
    bind = f"[{balancer.address}]" if ":" in balancer.address else balancer.address
    text = template(
        "etc/haproxy/haproxy.cfg",
        header=header(t.cluster),
        bind=f"{bind}:{balancer.frontend_port}",
        servers=[{"name": r.name, "address": f"[{r.address}]" if ":" in r.address else r.address} for r in t.relays],
        backend_port=t.backend_port,
        server_options=server_options,
    )
    return RenderedFile(text, HAPROXY_RELOAD)
