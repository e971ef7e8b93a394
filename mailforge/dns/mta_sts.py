"""The MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) records of each hosted domain, pure from the topology:

- `_mta-sts.<domain> TXT "v=STSv1; id=<policy id>"`: the id changes whenever the policy does;
- `mta-sts.<domain> A/AAAA <managed balancer>`: where HTTPS fetches the policy, when a managed
  balancer serves it (else the user hosts it and points the name there);
- `_smtp._tls.<domain> TXT "v=TLSRPTv1; rua=<addresses>"`.
"""

from __future__ import annotations

import ipaddress

from ..inventory import Topology
from ..render.mta_sts import policy_id, policy_text, served_by_balancer


def sts_txt(topology: Topology) -> str:
    return f"v=STSv1; id={policy_id(policy_text(topology))}"


def tlsrpt_txt(topology: Topology) -> str:
    assert topology.tls.tls_rpt is not None
    return "v=TLSRPTv1; rua=" + ",".join(topology.tls.tls_rpt.addresses)


def policy_records(topology: Topology) -> list[tuple[str, str, str, str, str]]:
    """(zone, name, type, value, comment) of the MTA-STS and TLS-RPT records of every hosted domain, in domain
    order (none without tls.mta_sts / tls.tls_rpt); `records.zone_records` makes them Records."""
    t = topology
    records: list[tuple[str, str, str, str, str]] = []
    balancers = [lb for lb in t.load_balancers if not lb.external and lb.address]
    for domain in sorted(t.domains):
        if t.tls.mta_sts is not None:
            records.append((domain, f"_mta-sts.{domain}", "TXT", f'"{sts_txt(t)}"', "MTA-STS: the id changes with the policy"))
            if served_by_balancer(t):
                for lb in balancers:
                    assert lb.address is not None
                    rtype = "A" if ipaddress.ip_address(lb.address).version == 4 else "AAAA"
                    records.append((domain, f"mta-sts.{domain}", rtype, lb.address, f"MTA-STS policy served by balancer {lb.name} (HTTPS)"))
        if t.tls.tls_rpt is not None:
            records.append((domain, f"_smtp._tls.{domain}", "TXT", f'"{tlsrpt_txt(t)}"', "TLS-RPT: where receivers send TLS reports"))
    return records
