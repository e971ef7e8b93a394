"""TLSA records (DANE, RFC 7672) for the MX names: `_25._tcp.<mx name>. TLSA 3 1 1 <sha256 of SPKI>`,
one for the live MX key and one for the next, so a key roll never leaves a published name without
a record for the key its relays present. Pure: the digests come in (the CLI reads them from the store)."""

from __future__ import annotations

from collections.abc import Sequence

from ..inventory import Topology
from ..tls.names import mx_names
from .records import Record, zone_of

USAGE, SELECTOR, MATCHING = 3, 1, 1  # DANE-EE, SubjectPublicKeyInfo, SHA-256


def tlsa_name(mx_name: str, port: int = 25) -> str:
    return f"_{port}._tcp.{mx_name}"


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
