"""haproxy.cfg for a managed balancer: TCP on the frontend port, every relay behind it.

No message is lost to a relay that dies: a connection a relay refuses, or does not answer within
`timeout connect`, is sent to another relay (`retries`, `option redispatch 1`: every retry goes
elsewhere), so the client never sees the failure; and the health checks take a dead or hung relay
out within seconds (`CHECK_TIMING`). Sessions already open on a relay that is marked down are left
to finish (no `on-marked-down shutdown-sessions`): a relay that is merely slow keeps what it took.

Health checks speak SMTP as real clients do, through the same PROXY header (`check-send-proxy`):
greeting 220, EHLO 250, QUIT 221. A relay whose postscreen expects the header would otherwise see
a bare SMTP conversation and fail every check.

With `monitoring`, a `frontend prometheus` serves HAProxy's built-in exporter on /metrics,
refusing every connection from outside the monitoring networks (which the firewall drops too).

With `tls.mta_sts`, a `frontend mta_sts` on 443 serves the MTA-STS policy (render/mta_sts.py, rendered
beside haproxy.cfg) with the certificate the TLS shipment puts at HOST_MTA_STS. It depends only on
the inventory: render never looks at the controller's store, and the shipment always provides that
file for a managed balancer with tls.mta_sts.
"""

from __future__ import annotations

from ..inventory import LoadBalancer, Topology
from ..tls import HOST_MTA_STS
from ..tls.names import policy_hosts
from .files import HAPROXY_RELOAD, RenderedFile, header, template
from .mta_sts import HAPROXY_POLICY, WELL_KNOWN, policy_text

MTA_STS_PORT = 443  # RFC 8461: the policy is fetched from https://mta-sts.<domain>/ on the default port

SEND_PROXY = {"v1": "send-proxy", "v2": "send-proxy-v2", "none": ""}

# A check every 2 s; after a first failure the next comes 1 s later, and two failures in a row
# take a relay out: a relay that refuses is out within about 3 s, one that hangs (no greeting
# within `timeout check`) within about 10 s. Two passes in a row, 2 s apart, put it back.
CHECK_TIMING = "check inter 2s fastinter 1s downinter 2s fall 2 rise 2"


def ehlo_name(balancer: LoadBalancer) -> str:
    """The name the health check gives in EHLO: the balancer's fqdn, or its address literal (RFC 5321 4.1.3)."""
    if balancer.fqdn:
        return balancer.fqdn
    assert balancer.address is not None  # checks.py: a managed balancer has an address
    return f"[IPv6:{balancer.address}]" if ":" in balancer.address else f"[{balancer.address}]"


def haproxy_cfg(t: Topology, balancer: LoadBalancer, metrics_port: int | None = None) -> RenderedFile:
    """The balancer's haproxy.cfg; with `metrics_port` (monitoring on), HAProxy's own Prometheus
    exporter on that port too, answering the monitoring networks only."""
    proxy = SEND_PROXY[balancer.proxy_protocol]
    server_options = CHECK_TIMING + (f" {proxy} check-send-proxy" if proxy else "")
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
        ehlo=ehlo_name(balancer),
        metrics=metrics,
        mta_sts=mta_sts_frontend(t, bind),
    )
    return RenderedFile(text, HAPROXY_RELOAD)


def mta_sts_frontend(t: Topology, bind: str) -> dict | None:
    if t.tls.mta_sts is None:
        return None
    return {"bind": f"{bind}:{MTA_STS_PORT}", "crt": HOST_MTA_STS, "file": HAPROXY_POLICY, "path": WELL_KNOWN, "hosts": " ".join(policy_hosts(t))}


def mta_sts_files(t: Topology) -> dict[str, RenderedFile]:
    """The policy file HAProxy returns (read when HAProxy loads its configuration: a change needs a reload)."""
    if t.tls.mta_sts is None:
        return {}
    return {HAPROXY_POLICY: RenderedFile(policy_text(t), HAPROXY_RELOAD)}
