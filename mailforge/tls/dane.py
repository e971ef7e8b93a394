"""DANE for the MX names: the TLSA 3 1 1 data of the live MX key and of the next one, and the rule that
says when `certs` may roll to the next key.

TLSA 3 1 1 (DANE-EE, SubjectPublicKeyInfo, SHA-256) pins the key, not the certificate, so a renewal
that keeps the key (ACME does) never touches DNS. A new key must be in DNS before any relay presents
it, and long enough for every resolver's cached TLSA set to have expired: so `dns zone` publishes a
*next* key beside the live one from the start, `dns check` records when it first saw the next key's
record published, and `may_roll` allows the roll only `publish_wait_hours` after that.

Only the public half of a key is ever read out of here: the SPKI digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

LIVE_KEYS = ("mx/key.pem", "internal-mx/key.pem")  # the ACME / file MX key first, else the private CA's MX key
LIVE_CHAINS = ("mx/chain.pem", "internal-mx/chain.pem")
NEXT_KEY = "mx/next-key.pem"
NEXT_SEEN = "mx/next-key.seen"


def tlsa_name(mx_name: str, port: int = 25) -> str:
    """The owner of an MX name's TLSA records: what `dns zone` prints, `dns check` asks and `certs` names."""
    return f"_{port}._tcp.{mx_name}"


def spki_digest(pem: bytes) -> str:
    """sha256 (hex) of the SubjectPublicKeyInfo of a PEM private key, public key or certificate (the
    first of them in `pem`): TLSA 3 1 1 data. Raises ValueError for anything else."""
    public: Any
    if b"-----BEGIN CERTIFICATE-----" in pem:
        public = x509.load_pem_x509_certificate(pem).public_key()
    elif b"PRIVATE KEY-----" in pem:
        public = serialization.load_pem_private_key(pem, password=None).public_key()
    elif b"PUBLIC KEY-----" in pem:
        public = serialization.load_pem_public_key(pem)
    else:
        raise ValueError("no PEM certificate or key")
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def public_key_digest(public_key) -> str:
    """TLSA 3 1 1 data of a public key object (e.g. the one a relay's certificate holds)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _digest_of(path: Path) -> str:
    """`spki_digest` of a file, a parse error naming the file (never its content)."""
    try:
        return spki_digest(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM key or certificate ({str(exc).split('.')[0]})") from None


@dataclass(frozen=True)
class DaneKeys:
    """The SPKI digests `dns zone` publishes and `dns check` expects; None for a key the store has not got."""

    live: str | None
    live_source: str | None  # store-relative path the live digest was read from
    next: str | None


def live_digest(store: Path) -> tuple[str | None, str | None]:
    """(digest, store-relative path) of the live MX key: mx/ (ACME or the inventory's files), else internal-mx/.
    Read from the certificate chain when there is one (public only), else from the key."""
    for chain, key in zip(LIVE_CHAINS, LIVE_KEYS, strict=True):
        for relative in (chain, key):
            path = store / relative
            if path.is_file():
                return _digest_of(path), relative
    return None, None


def ensure_next_key(store: Path) -> Path:
    """Make the next MX key if it is absent (same kind as the live key: EC P-256 unless the live key is RSA),
    mode 0600 in a 0700 directory, written atomically. Returns its path."""
    path = store / NEXT_KEY
    if path.is_file():
        return path
    kind = "ec"
    for relative in LIVE_KEYS:
        live = store / relative
        if live.is_file():
            loaded = serialization.load_pem_private_key(live.read_bytes(), password=None)
            kind = "rsa" if isinstance(loaded, rsa.RSAPrivateKey) else "ec"
            break
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_private(path, pem)
    return path


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def keys(store: Path, make_next: bool) -> DaneKeys:
    """The live and next digests; with `make_next` (tls.dane set) the next key is made when absent."""
    live, source = live_digest(store)
    nxt = None
    if make_next:
        nxt = _digest_of(ensure_next_key(store))
    elif (store / NEXT_KEY).is_file():
        nxt = _digest_of(store / NEXT_KEY)
    return DaneKeys(live, source, nxt)


def roll_allowed(first_seen: datetime | None, now: datetime, publish_wait_hours: int) -> bool:
    """Pure: whether the next key's TLSA record, first seen published at `first_seen`, has been out long enough."""
    return first_seen is not None and now - first_seen >= timedelta(hours=publish_wait_hours)


def first_seen(store: Path) -> datetime | None:
    """When `dns check` first saw the current next key's TLSA published (None if never, or for another key)."""
    path = store / NEXT_SEEN
    if not path.is_file() or not (store / NEXT_KEY).is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("spki_sha256") != spki_digest((store / NEXT_KEY).read_bytes()):
            return None
        return datetime.fromisoformat(data["first_seen"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def may_roll(store: Path, now: datetime, publish_wait_hours: int = 48) -> bool:
    """What `certs` asks before it rolls the MX key to mx/next-key.pem: its TLSA record has been seen
    published (by `dns check`) at least `publish_wait_hours` ago."""
    return roll_allowed(first_seen(store), now, publish_wait_hours)


def record_seen(store: Path, digest: str, now: datetime) -> datetime:
    """`dns check` saw the next key's TLSA (`digest`) published: keep the first time (restarted for a new key).
    Returns the first-seen time."""
    earlier = first_seen(store)
    if earlier is not None:
        return earlier
    path = store / NEXT_SEEN
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps({"spki_sha256": digest, "first_seen": now.isoformat()}) + "\n", encoding="utf-8")
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return now
