"""Judging the certificate the front door presents on STARTTLS: chain, names, protocol, expiry.

The probe (`probes/smtp_probe.py`, kind `starttls`) runs where the mail probes run (the lab's client,
or the host named with --probe-from), because that is where the world's mail comes from: a relay
behind a balancer answers only the balancer. It hands back what it saw, as data (the peer's chain as
PEM, the protocol negotiated, whether a TLSv1.1-only client was refused); everything is judged
here, on the controller, with the `cryptography` library, so the judging is the same whatever
Python or OpenSSL the probing host has, and is tested against real TLS servers (tests/tlsserver.py).

Each judging function is pure: what was seen, what is wanted, the time, in; (ok, evidence) out.
`trust` is the one that reads files: the certificates a chain must lead to.
"""

from __future__ import annotations

import datetime
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ..errors import MailforgeError
from ..inventory import Inventory
from .internal import covers, dns_names  # one reading of a certificate's names, for the store and for verify

# The verify rows this module judges, by name.
CHAIN = "inbound TLS chain"
NAMES = "inbound TLS names"
PROTOCOL = "inbound TLS protocol"
EXPIRY = "inbound TLS expiry"

ACCEPTED_PROTOCOLS = ("TLSv1.2", "TLSv1.3")
OK, WARNING, FAILED = "ok", "warning", "failed"


class TrustError(MailforgeError):
    """The certificates `verify` should trust cannot be read (tls.trust_file missing or not PEM)."""


@dataclass(frozen=True)
class Judgement:
    """One row's outcome: ok, warning (holds, but someone should act) or failed; and the evidence."""

    status: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != FAILED


def system_ca_file() -> Path | None:
    """The system's CA bundle, where OpenSSL (through Python's ssl) says it is."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _pem_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file; quietly, since a system bundle may hold an old CA whose
    encoding `cryptography` grumbles about (a negative serial) without refusing it."""
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return x509.load_pem_x509_certificates(data) if b"-----BEGIN CERTIFICATE-----" in data else []


def trust(inventory: Inventory, store: Path) -> tuple[list[x509.Certificate], str]:
    """The certificates an inbound chain must lead to, and where they came from (for the evidence).

    `tls.trust_file` when the inventory names one (relative to the inventory directory): exactly
    those. Else the store's trust.pem (e.g. the lab's ACME root), the cluster's private CA (the MX
    certificate is the private CA's when neither files nor ACME give one) and the system's CAs."""
    tls = inventory.topology.tls
    if tls.trust_file:
        path = inventory.directory / str(tls.trust_file)
        try:
            found = _pem_certificates(path)
        except (OSError, ValueError) as exc:
            raise TrustError(
                f"{inventory.directory / 'topology.yml'}: tls.trust_file: cannot read {path}: {exc} (expected a PEM file of CA certificates)"
            ) from None
        if not found:
            raise TrustError(
                f"{inventory.directory / 'topology.yml'}: tls.trust_file: {path} holds no PEM certificate (expected a PEM file of CA certificates)"
            )
        return found, f"tls.trust_file {tls.trust_file}"
    certificates: list[x509.Certificate] = []
    sources = []
    for path, label in ((store / "trust.pem", "the store's trust.pem"), (store / "internal-ca" / "cert.pem", "the private CA")):
        if path.is_file():
            certificates += _pem_certificates(path)
            sources.append(label)
    system = system_ca_file()
    if system is not None:
        certificates += _pem_certificates(system)
        sources.append("the system's CAs")
    return certificates, " + ".join(sources) or "nothing (no trust.pem, no private CA, no system CAs)"


def load_chain(pems: list[str]) -> list[x509.Certificate]:
    """The peer's chain as the probe sent it (PEM, leaf first)."""
    return [x509.load_pem_x509_certificate(p.encode()) for p in pems]


def _subject(cert: x509.Certificate) -> str:
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else cert.subject.rfc4514_string() or "(no subject)"


def judge_chain(chain: list[x509.Certificate], roots: list[x509.Certificate], where: str, now: datetime.datetime) -> Judgement:
    """The chain the server sent leads to one of `roots` (RFC 5280 path validation, as a web PKI
    client does, by `cryptography`'s verifier). Names and dates are other rows: the path is checked
    for the leaf's own first name, and, for an expired leaf, as of its last valid second."""
    if not chain:
        return Judgement(FAILED, "the server sent no certificate")
    leaf = chain[0]
    names = [n for n in dns_names(leaf) if not n.startswith("*.")] or [n[2:] for n in dns_names(leaf)]
    if not names:
        return Judgement(FAILED, f"leaf {_subject(leaf)!r} names no host (no subjectAltName dNSName)")
    if not roots:
        return Judgement(FAILED, f"nothing to verify against: {where}")
    at = min(now, leaf.not_valid_after_utc - datetime.timedelta(seconds=1))
    verifier = PolicyBuilder().store(Store(roots)).time(at).build_server_verifier(x509.DNSName(names[0]))
    issuers = " <- ".join(_subject(c) for c in chain)
    try:
        path = verifier.verify(leaf, chain[1:])
    except VerificationError as exc:
        return Judgement(FAILED, f"chain {issuers} does not verify against {where}: {exc}")
    return Judgement(OK, f"{' <- '.join(_subject(c) for c in path)} (trusted: {where})")


def judge_names(leaf: x509.Certificate | None, wanted: list[str]) -> Judgement:
    """The certificate covers every MX name (the names the MX records, and so senders, use)."""
    if leaf is None:
        return Judgement(FAILED, "the server sent no certificate")
    if not wanted:
        return Judgement(FAILED, "the topology names no MX name (give the balancer or the relays an fqdn)")
    names = dns_names(leaf)
    missing = [n for n in wanted if not covers(names, n)]
    if missing:
        return Judgement(FAILED, f"certificate for {', '.join(names) or '(no names)'} does not cover {', '.join(missing)}")
    return Judgement(OK, f"{', '.join(wanted)} covered by {', '.join(names)}")


def judge_protocol(version: str | None, old: dict | None) -> Judgement:
    """TLSv1.2 or newer negotiated, and a client offering only TLSv1.1 refused. `old` is the probe's
    second attempt: {"refused": bool, "detail": str}, or {"untested": ...} when the probing host's
    own TLS library would not even offer TLSv1.1 (then the row says so and fails: nothing proved)."""
    if version is None:
        return Judgement(FAILED, "no TLS session was negotiated")
    if version not in ACCEPTED_PROTOCOLS:
        return Judgement(FAILED, f"{version} negotiated (want TLSv1.2 or newer)")
    if old is None or "untested" in old:
        return Judgement(FAILED, f"{version} negotiated; TLSv1.1 could not be tried: {(old or {}).get('untested', 'not asked')}")
    if not old.get("refused"):
        return Judgement(FAILED, f"{version} negotiated, but a TLSv1.1-only client was accepted ({old.get('detail', '')})")
    return Judgement(OK, f"{version} negotiated; TLSv1.1 refused ({old.get('detail', '')})")


def judge_expiry(leaf: x509.Certificate | None, now: datetime.datetime, warning_days: int) -> Judgement:
    """Failed once expired (or not yet valid), a warning within `warning_days` of the end, else ok."""
    if leaf is None:
        return Judgement(FAILED, "the server sent no certificate")
    end, start = leaf.not_valid_after_utc, leaf.not_valid_before_utc
    stamp = end.strftime("%Y-%m-%d %H:%M UTC")
    if now < start:
        return Judgement(FAILED, f"not valid before {start.strftime('%Y-%m-%d %H:%M UTC')}")
    if now >= end:
        return Judgement(FAILED, f"expired {stamp}")
    left = end - now
    if left < datetime.timedelta(days=warning_days):
        return Judgement(WARNING, f"expires {stamp}, in {left.days} days (tls.expiry_warning_days: {warning_days}): renew it")
    return Judgement(OK, f"valid until {stamp} ({left.days} days)")


def judge(answer: dict, wanted: list[str], roots: list[x509.Certificate], where: str, now: datetime.datetime, warning_days: int) -> dict[str, Judgement]:
    """Every inbound TLS row from one `starttls` probe answer."""
    if not answer.get("chain"):
        error = answer.get("error") or ", ".join(f"{s} {c} {t[:70]}" for s, (c, t) in answer.get("stages", {}).items()) or "no answer"
        failed = Judgement(FAILED, f"no TLS session: {error}")
        return {CHAIN: failed, NAMES: failed, PROTOCOL: failed, EXPIRY: failed}
    chain = load_chain(answer["chain"])
    return {
        CHAIN: judge_chain(chain, roots, where, now),
        NAMES: judge_names(chain[0], wanted),
        PROTOCOL: judge_protocol(answer.get("version"), answer.get("tls11")),
        EXPIRY: judge_expiry(chain[0], now, warning_days),
    }
