"""DKIM signing (RFC 6376) by OpenDKIM on the hosts that send to the Internet (`topology.dkim`): the
cores, and an MX proxy's postfix-outbound instance.

Pure, like the rest of `render`: only the files that follow from the inventory are rendered here
(opendkim.conf, the InternalHosts list) and the Postfix parameters that hand every message to the
milter. The keys and the KeyTable/SigningTable that name them follow from the controller's DKIM
store (`mailforge.dkim.signing_keys`), so `mailforge.signing` ships them beside the TLS keys:
the store is read at deploy time, never here, and no key is ever in a rendered file.

Without `topology.dkim` nothing here adds a setting or a file, so existing inventories render byte
for byte as before.
"""

from __future__ import annotations

from ..inventory import Topology
from ..tls import HOST_DKIM_DIRECTORY as OPENDKIM_DIR
from ..tls import HOST_DKIM_KEY_TABLE as KEY_TABLE
from ..tls import HOST_DKIM_SIGNING_TABLE as SIGNING_TABLE
from .files import RenderedFile, header, template

OPENDKIM_CONF = "/etc/opendkim.conf"
INTERNAL_HOSTS = f"{OPENDKIM_DIR}/internal-hosts"
MILTER_ADDRESS, MILTER_PORT = "localhost", 8891
MILTER = f"inet:{MILTER_ADDRESS}:{MILTER_PORT}"

# The manifest's word for a change to these files: OpenDKIM rereads its config and tables on
# SIGUSR1 (`service opendkim reload`), so signing never stops for a change; Postfix's own
# parameters come with its main.cf (a Postfix reload).
OPENDKIM_RELOAD = "opendkim reload"

LOOPBACK_HOSTS = ["127.0.0.1", "::1"]


def enabled(t: Topology) -> bool:
    return t.dkim is not None


def signed_domains(t: Topology) -> list[str]:
    """The From domains the hosts sign for: `dkim.domains`, or every hosted domain."""
    assert t.dkim is not None
    return sorted(t.dkim.domains or t.domains)


def postfix_settings(t: Topology) -> list[tuple[str, str]]:
    """Every message Postfix takes (smtpd and sendmail/pickup) goes through OpenDKIM. When the milter
    does not answer, Postfix answers 4xx (`tempfail`): mail waits at the sender rather than going out
    unsigned, where DMARC would reject it. [] without dkim."""
    if not enabled(t):
        return []
    return [
        ("smtpd_milters", MILTER),
        ("non_smtpd_milters", MILTER),
        ("milter_default_action", "tempfail"),
        ("milter_protocol", "6"),
    ]


def files(t: Topology, internal_networks: list[str]) -> dict[str, RenderedFile]:
    """opendkim.conf and its InternalHosts (`internal_networks`, the clients whose mail is signed:
    a core's user_networks, the outbound instance's trusted_networks; plus loopback, for mail made on
    the host). {} without dkim."""
    if not enabled(t):
        return {}
    assert t.dkim is not None
    conf = template(
        OPENDKIM_CONF,
        header=header(t.cluster),
        socket=f"inet:{MILTER_PORT}@{MILTER_ADDRESS}",
        key_table=KEY_TABLE,
        signing_table=SIGNING_TABLE,
        internal_hosts=INTERNAL_HOSTS,
        multiple=len(t.dkim.algorithms) > 1,
    )
    hosts = "".join(f"{network}\n" for network in [*LOOPBACK_HOSTS, *internal_networks])
    return {
        OPENDKIM_CONF: RenderedFile(conf, OPENDKIM_RELOAD),
        INTERNAL_HOSTS: RenderedFile(header(t.cluster) + hosts, OPENDKIM_RELOAD),
    }
