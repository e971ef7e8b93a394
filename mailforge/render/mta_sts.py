"""The MTA-STS policy (RFC 8461) of every hosted domain, and its id.

One policy serves every domain: its `mx:` lines are the MX names (`mx_names`), the same for each.
Its id, published in `_mta-sts.<domain>` TXT, is derived from the policy text itself, so a changed
policy always gets a new id and senders fetch it again (a changed policy under an old id stays
cached by senders for max_age seconds: the error `dns check` flags).

With a managed balancer, HAProxy serves the file at https://mta-sts.<domain>/.well-known/mta-sts.txt
(`HAPROXY_POLICY`, see balancer.py); without one, `dns zone` prints it for the user to host there.
"""

from __future__ import annotations

import hashlib

from ..inventory import Topology
from ..tls.names import mx_names

HAPROXY_POLICY = "/etc/haproxy/mta-sts.txt"  # the rendered policy HAProxy returns (http-request return ... file)
WELL_KNOWN = "/.well-known/mta-sts.txt"
ID_LENGTH = 20  # hex characters of the policy's sha256: RFC 8461 allows 1 to 32 alphanumerics


def policy_text(topology: Topology) -> str:
    """The policy file, CRLF-free as RFC 8461 allows: version, mode, one mx line per MX name, max_age."""
    mta_sts = topology.tls.mta_sts
    assert mta_sts is not None  # callers render a policy only with tls.mta_sts
    lines = ["version: STSv1", f"mode: {mta_sts.mode}", *(f"mx: {name}" for name in mx_names(topology)), f"max_age: {mta_sts.max_age}"]
    return "\n".join(lines) + "\n"


def policy_id(text: str) -> str:
    """The id for `_mta-sts` TXT: the first 20 hex characters of the policy's sha256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


def policy_url(domain: str) -> str:
    return f"https://mta-sts.{domain}{WELL_KNOWN}"


def served_by_balancer(topology: Topology) -> bool:
    """Whether a managed balancer serves the policy (tls.mta_sts and a balancer that is not external)."""
    return topology.tls.mta_sts is not None and any(not lb.external for lb in topology.load_balancers)
