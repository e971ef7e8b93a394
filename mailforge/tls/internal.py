"""The cluster's private CA and the certificates it issues, made with the `cryptography` library.

The private CA signs what only the cluster itself needs to trust: each host's certificate for its fqdn
(the relay-to-core hop, which relays verify against this CA and the core's name), and, when neither
files nor ACME give one, the MX certificate. Keys are EC P-256: small, fast, and taken by every
Postfix and HAProxy mailforge deploys. Files are written atomically (a temporary file in the same
directory, then rename), keys with mode 0600 and directories 0700 from the start, so a key is never
readable by anyone else even for a moment.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 365
DIR_MODE = 0o700
FILE_MODE = 0o600


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def ensure_dir(path: Path) -> None:
    """Make `path` and its missing parents with mode 0700 (none is ever wider, even for a moment);
    an existing `path` is tightened to 0700."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE, exist_ok=True)
        directory.chmod(DIR_MODE)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        path.chmod(DIR_MODE)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600, atomically: readers see the old file or the new one."""
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Authority:
    """The private CA: its key and self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_ca(cluster: str) -> Authority:
    """A CA for one cluster, valid ten years: basicConstraints CA (path length 0), keyUsage keyCertSign."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mailforge {cluster} internal CA")])
    start = now() - datetime.timedelta(minutes=5)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, cert)


def issue(ca: Authority, names: list[str], key=None, days: int = LEAF_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf certificate for `names` (SAN dNSName, the first also the CN), serverAuth and clientAuth, one year."""
    key = key or new_key()
    start = now() - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + datetime.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return key, cert


def load_authority(directory: Path) -> Authority | None:
    """The CA stored in `directory` (key.pem, cert.pem), or None if either is missing."""
    key_file, cert_file = directory / "key.pem", directory / "cert.pem"
    if not (key_file.is_file() and cert_file.is_file()):
        return None
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Authority(key, x509.load_pem_x509_certificate(cert_file.read_bytes()))


def save_authority(directory: Path, ca: Authority) -> None:
    write_atomic(directory / "key.pem", key_pem(ca.key))
    write_atomic(directory / "cert.pem", cert_pem(ca.cert))


def dns_names(cert: x509.Certificate) -> list[str]:
    """The certificate's SAN dNSNames (lower case); its CN only when it has no SAN, as TLS clients do."""
    try:
        return [n.lower() for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        return [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def covers(names: list[str], wanted: str) -> bool:
    """Does a certificate for `names` cover host `wanted` (a wildcard covers one leftmost label)?"""
    wanted = wanted.lower().rstrip(".")
    for name in names:
        if name == wanted:
            return True
        if name.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == name[2:]:
            return True
    return False
