"""What the hosts that sign with DKIM get from the controller: each signing selector's private key and
OpenDKIM's KeyTable and SigningTable, made here from the DKIM store (`mailforge.dkim.signing_keys`).

Beside `tls.material.shipment`, not inside it: the DKIM store writes through `tls.internal`, so the TLS
package cannot import it back. Callers that ship or compare (deploy, drift, verify) use `shipment` and
`fingerprints` here, which are the TLS ones plus these. The tables are not secret, but they name the
keys the store holds right now, so they travel with the keys (render stays pure: it never reads the
store). Everything is owned by opendkim (which rereads tables and keys on a reload, after dropping
root); keys are 0600. Hosts: every core, and every MX proxy with an outbound instance.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .inventory import Inventory, Topology
from .tls import DKIM_USER, HOST_DKIM_KEY_TABLE, HOST_DKIM_SIGNING_TABLE, host_dkim_key, material
from .tls.material import Shipped

ALGORITHM_ORDER = {"rsa": 0, "ed25519": 1}


def signing_hosts(t: Topology) -> list[str]:
    """The hosts that send to the Internet, so sign: the cores, and MX proxies with an outbound instance."""
    return [c.name for c in t.cores] + [r.name for r in t.relays if r.instances is not None and r.instances.outbound]


def tables(keys) -> tuple[bytes, bytes]:
    """(KeyTable, SigningTable) for `keys` (`dkim.SigningKey`s): one key per selector, and every
    signing key of a From domain applied to its mail (with two algorithms, two signatures)."""
    ordered = sorted(keys, key=lambda k: (k.domain, ALGORITHM_ORDER.get(k.algorithm, 9), k.selector))
    key_table = "".join(f"{k.selector}._domainkey.{k.domain} {k.domain}:{k.selector}:{host_dkim_key(k.domain, k.selector)}\n" for k in ordered)
    signing_table = "".join(f"*@{k.domain} {k.selector}._domainkey.{k.domain}\n" for k in ordered)
    return key_table.encode(), signing_table.encode()


def dkim_shipment(inventory: Inventory, store: Path) -> dict[str, dict[str, Shipped]]:
    """Per signing host: the tables and one 0600 key file per signing selector; {} without topology.dkim."""
    t = inventory.topology
    if t.dkim is None:
        return {}
    from . import dkim

    keys = dkim.signing_keys(t, store)
    key_table, signing_table = tables(keys)
    files: dict[str, Shipped] = {
        HOST_DKIM_KEY_TABLE: Shipped((), mode="0640", owner=DKIM_USER, group=DKIM_USER, data=key_table),
        HOST_DKIM_SIGNING_TABLE: Shipped((), mode="0640", owner=DKIM_USER, group=DKIM_USER, data=signing_table),
    }
    for k in keys:
        files[host_dkim_key(k.domain, k.selector)] = Shipped((Path(k.key_path),), mode="0600", owner=DKIM_USER, group=DKIM_USER)
    return {host: dict(files) for host in signing_hosts(t)}


def shipment(inventory: Inventory, store: Path) -> dict[str, dict[str, Shipped]]:
    """Everything deploy ships from the controller's store: the TLS files and the DKIM files, by host and host path."""
    result = material.shipment(inventory, store)
    for host, files in dkim_shipment(inventory, store).items():
        result.setdefault(host, {}).update(files)
    return result


def fingerprints(inventory: Inventory, store: Path) -> dict[str, dict[str, str]]:
    """sha256 (hex) of every file `shipment` ships, by host and host path: compared with the live files, never shown."""
    return {host: {path: hashlib.sha256(item.content()).hexdigest() for path, item in files.items()} for host, files in shipment(inventory, store).items()}
