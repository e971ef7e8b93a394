"""Outbound TLS of the hosts that deliver to the Internet (the cores, an MX proxy's postfix-outbound):
DANE with a local validating resolver, and MTA-STS policies (`tls.outbound` in the topology).

Without `tls.outbound` (or with both switches off) nothing here adds a setting or a file, so
existing inventories render byte for byte as before. Pure: names host paths, reads nothing.

DANE needs answers whose DNSSEC was validated *on the host* (the AD bit from a resolver Postfix
trusts): Debian's unbound on 127.0.0.1 validates from the root trust anchor, and the host's
/etc/resolv.conf names only it, with `options trust-ad` (glibc 2.31 and later drop the AD bit
otherwise) and `edns0`. A second nameserver there would let a non-validating answer through, so
there is none: if unbound stops, lookups fail and mail waits, rather than going out unverified.
MTA-STS is Debian's postfix-mta-sts-resolver (`mta-sts-daemon`), a socketmap on 127.0.0.1:8461
that Postfix asks per next-hop domain; a domain without a policy gets the default security
level (`dane` or `may`).
"""

from __future__ import annotations

from ..inventory import Topology
from .files import RenderedFile, header, template

UNBOUND_CONF = "/etc/unbound/unbound.conf.d/mailforge.conf"
RESOLV_CONF = "/etc/resolv.conf"
MTA_STS_CONF = "/etc/mta-sts-daemon.yml"
MTA_STS_ADDRESS, MTA_STS_PORT = "127.0.0.1", 8461
# Debian's unbound-helper copies dns-root-data's root key here before unbound starts; unbound
# keeps it current (RFC 5011) from then on.
ROOT_TRUST_ANCHOR = "/var/lib/unbound/root.key"

# The actions, in the manifest's words: unbound rereads its config on a reload (SIGHUP);
# mta-sts-daemon has no reload, so a change restarts it (Postfix is never restarted: it only
# reconnects to the socketmap). resolv.conf needs nothing: every lookup reads it.
UNBOUND_RELOAD = "unbound reload"
MTA_STS_RESTART = "mta-sts-daemon restart"
RESOLVER = "resolver"


def enabled(t: Topology) -> tuple[bool, bool]:
    """(dane, mta_sts) as the topology asks for the hosts that send to the Internet."""
    outbound = t.tls.outbound
    return (bool(outbound and outbound.dane), bool(outbound and outbound.mta_sts))


def postfix_settings(t: Topology) -> list[tuple[str, str]]:
    """The smtp client's settings for delivery to the Internet; [] without tls.outbound.

    `smtp_tls_security_level = dane` uses TLSA records where the receiving domain has DNSSEC and
    them, and is opportunistic (`may`) elsewhere; the MTA-STS socketmap, asked first per domain,
    overrides it with `secure match=...` for a domain that publishes a policy.
    """
    dane, mta_sts = enabled(t)
    settings: list[tuple[str, str]] = []
    if dane:
        settings += [("smtp_dns_support_level", "dnssec"), ("smtp_tls_security_level", "dane")]
    if mta_sts:
        settings.append(("smtp_tls_policy_maps", f"socketmap:inet:{MTA_STS_ADDRESS}:{MTA_STS_PORT}:postfix"))
    return settings


def files(t: Topology) -> dict[str, RenderedFile]:
    """The resolver's and the MTA-STS daemon's files for one host that sends to the Internet."""
    dane, mta_sts = enabled(t)
    result: dict[str, RenderedFile] = {}
    if dane:
        result[UNBOUND_CONF] = RenderedFile(template(UNBOUND_CONF, header=header(t.cluster), trust_anchor=ROOT_TRUST_ANCHOR), UNBOUND_RELOAD)
        result[RESOLV_CONF] = RenderedFile(template(RESOLV_CONF, header=header(t.cluster)), RESOLVER)
    if mta_sts:
        result[MTA_STS_CONF] = RenderedFile(template(MTA_STS_CONF, header=header(t.cluster), address=MTA_STS_ADDRESS, port=MTA_STS_PORT), MTA_STS_RESTART)
    return result
