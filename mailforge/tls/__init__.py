"""TLS for the cluster: where every certificate and key lives, on the controller and on the hosts.

This module is the one home of those paths. Private keys stay on the controller in a store per
cluster (mode 0700 directories, 0600 files), outside the inventory, and reach a host only by the
base role's TLS task (`no_log`), never through `render`'s tree, a manifest, a diff or a log.

Controller store (`store_of(cluster)`):
  internal-ca/key.pem, cert.pem     the cluster's private CA (relay-to-core hop, fallback MX)
  hosts/<host>/key.pem, cert.pem    a host's certificate from the private CA (its fqdn)
  mx/key.pem, chain.pem             the MX names' key and chain (ACME, or copied from cert_file/key_file)
  mx/next-key.pem, next-key.seen    the pre-published next MX key (DANE) and when its TLSA was first seen
  internal-mx/key.pem, chain.pem    the MX certificate from the private CA, when neither files nor ACME
  mta-sts/key.pem, chain.pem        the mta-sts.<domain> certificate (ACME), served by HAProxy
  acme/account.json                 the ACME account key and registration
  trust.pem                         extra CA certificates `verify` trusts (e.g. the lab's ACME root)
  dkim/<domain>/<selector>.key      DKIM keys (`mailforge.dkim`), shipped by `mailforge.signing`

Host paths (`HOST_*`): each file holds the private key, then the chain, leaf first, as
Postfix's `smtpd_tls_chain_files` and HAProxy's `crt` take them.
"""

from __future__ import annotations

import os
from pathlib import Path

HOST_DIRECTORY = "/etc/mailforge/tls"
HOST_MX = f"{HOST_DIRECTORY}/mx.pem"  # key + chain the relays (and MX proxy's inbound) present to the world
HOST_CERT = f"{HOST_DIRECTORY}/host.pem"  # key + chain for the host's own fqdn, from the private CA (cores' inbound hop)
HOST_INTERNAL_CA = f"{HOST_DIRECTORY}/internal-ca.pem"  # the private CA's certificate only: what relays verify cores with
HOST_MTA_STS = f"{HOST_DIRECTORY}/mta-sts.pem"  # key + chain HAProxy serves the MTA-STS policy with

# OpenDKIM's files on a host that signs (topology.dkim): the tables and keys `mailforge.signing` ships
# from the DKIM store, beside the opendkim.conf `render.dkim` renders.
HOST_DKIM_DIRECTORY = "/etc/opendkim"
HOST_DKIM_KEY_TABLE = f"{HOST_DKIM_DIRECTORY}/key.table"  # names each selector's key file
HOST_DKIM_SIGNING_TABLE = f"{HOST_DKIM_DIRECTORY}/signing.table"  # which key signs which From domain
HOST_DKIM_KEYS = f"{HOST_DKIM_DIRECTORY}/keys"  # <domain>/<selector>.private, owner opendkim, 0600
DKIM_USER = "opendkim"  # Debian's opendkim runs as this user (UserID), which must read the keys


def host_dkim_key(domain: str, selector: str) -> str:
    """Where a selector's private key lives on a host that signs."""
    return f"{HOST_DKIM_KEYS}/{domain}/{selector}.private"


ENV_STATE_DIR = "MAILFORGE_STATE_DIR"


def state_base() -> Path:
    """$MAILFORGE_STATE_DIR, else $XDG_STATE_HOME/mailforge, else ~/.local/state/mailforge."""
    explicit = os.environ.get(ENV_STATE_DIR)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "mailforge"


def store_of(cluster: str) -> Path:
    """The controller's TLS store of one cluster (not created here)."""
    return state_base() / "clusters" / cluster / "tls"
