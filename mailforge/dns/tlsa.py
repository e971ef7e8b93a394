"""TLSA records (DANE, RFC 7672) for the MX names: `_25._tcp.<mx name>. TLSA 3 1 1 <sha256 of SPKI>`,
one for the live MX key and one for the next, so a key roll never leaves a published name without
a record for the key its relays present. Pure: the digests come in (the CLI reads them from the store)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..inventory import Topology
from ..tls import dane
from ..tls.dane import tlsa_name
from ..tls.names import mx_names
from .records import Record, zone_of

USAGE, SELECTOR, MATCHING = 3, 1, 1  # DANE-EE, SubjectPublicKeyInfo, SHA-256


def tlsa_value(digest: str) -> str:
    return f"{USAGE} {SELECTOR} {MATCHING} {digest.lower()}"


def tlsa_records(topology: Topology, digests: Sequence[tuple[str, str]]) -> list[Record]:
    """One record per MX name and (digest, what) pair, e.g. [(live, "live MX key"), (next, "next MX key")]."""
    domains = list(topology.domains)
    names = mx_names(topology)
    records = []
    for name in names:
        for digest, what in digests:
            records.append(Record(zone_of(name, domains, names), tlsa_name(name), "TLSA", tlsa_value(digest), f"DANE: {what}"))
    return records


def store_tlsa(topology: Topology, store: Path) -> tuple[list[Record], list[str]]:
    """With tls.dane: the TLSA records of the live and next MX keys in `store` (the next key is made there,
    0600, when absent), and comment lines saying what is missing. Only public halves are read out."""
    if topology.tls.dane is None:
        return [], []
    found = dane.keys(store, make_next=True)
    digests, notes = [], []
    if found.live:
        digests.append((found.live, f"live MX key ({found.live_source})"))
    else:
        notes.append(f"DANE: no live MX key in {store} yet (`mailforge deploy` or `mailforge certs` makes it): only the next key's TLSA below;")
        notes.append("run `mailforge dns zone` again afterwards and publish the live key's record too, before the relays present it.")
    assert found.next is not None  # made above
    digests.append((found.next, "next MX key (mx/next-key.pem): published ahead, so a key roll never breaks DANE"))
    return tlsa_records(topology, digests), notes
