"""haproxy.cfg for a managed balancer: TCP on the frontend port, every relay behind it.

With `monitoring`, a `frontend prometheus` serves HAProxy's built-in exporter on /metrics,
refusing every connection from outside the monitoring networks (which the firewall drops too).

Health checks go through the same PROXY header as real clients
(`check-send-proxy`): a relay whose postscreen expects the header would
otherwise see a bare SMTP conversation and fail every check.
"""

from __future__ import annotations

from ..inventory import LoadBalancer, Topology
from .files import HAPROXY_RELOAD, RenderedFile, header, template

SEND_PROXY = {"v1": "send-proxy", "v2": "send-proxy-v2", "none": ""}


def haproxy_cfg(t: Topology, balancer: LoadBalancer, metrics_port: int | None = None) -> RenderedFile:
    """The balancer's haproxy.cfg; with `metrics_port` (monitoring on), HAProxy's own Prometheus
    exporter on that port too, answering the monitoring networks only."""
    proxy = SEND_PROXY[balancer.proxy_protocol]
    server_options = "check inter 10s fall 3 rise 2" + (f" {proxy} check-send-proxy" if proxy else "")
    assert balancer.address is not None  # checks.py: a managed balancer has an address
    bind = f"[{balancer.address}]" if ":" in balancer.address else balancer.address
    metrics = None
    if metrics_port is not None:
        assert t.monitoring is not None  # Host.exporters: a metrics port only with monitoring
        metrics = {"bind": f"{bind}:{metrics_port}", "sources": " ".join(t.monitoring.networks)}
    text = template(
        "etc/haproxy/haproxy.cfg",
        header=header(t.cluster),
        bind=f"{bind}:{balancer.frontend_port}",
        servers=[{"name": r.name, "address": f"[{r.address}]" if ":" in r.address else r.address} for r in t.relays],
        backend_port=t.backend_port,
        server_options=server_options,
        metrics=metrics,
    )
    return RenderedFile(text, HAPROXY_RELOAD)
