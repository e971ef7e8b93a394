"""A stand-in for the world's ACME: what the lab and the tests need to run Debian's `pebble` (an ACME test
server) against a Knot that takes TSIG-signed updates, so `mailforge certs` runs unchanged against them.

Pure: it makes keys and texts; the caller writes them (0600) and starts the programs."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os

from .acme import TsigKey

TSIG_NAME = "mailforge-acme."
TSIG_ALGORITHM = "hmac-sha256"


def new_tsig(name: str = TSIG_NAME) -> TsigKey:
    return TsigKey(name, TSIG_ALGORITHM, base64.b64encode(os.urandom(32)).decode())


def tsig_text(key: TsigKey) -> str:
    """The key as a BIND/Knot `key` clause: the form a tsig_key_file holds."""
    return f'key "{key.name.rstrip(".")}" {{\n    algorithm {key.algorithm};\n    secret "{key.secret}";\n}};\n'


def listener_ca(names: list[str], addresses: list[str]) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, listener certificate, listener key), PEM: a one-off CA whose only certificate is
    pebble's HTTPS listener, for `names` and `addresses`. Clients trust the CA by tls.acme.ca_file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailforge lab ACME listener CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or addresses)[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


def pebble_config(listen: str, management: str, cert_file: str, key_file: str, http_port: int = 5002, tls_port: int = 5001) -> str:
    """pebble's JSON configuration: the ACME directory at https://LISTEN/dir, the management API (roots)
    at MANAGEMENT. Only DNS-01 is used; the HTTP-01/TLS-ALPN-01 ports are pebble's required settings."""
    return json.dumps(
        {
            "pebble": {
                "listenAddress": listen,
                "managementListenAddress": management,
                "certificate": cert_file,
                "privateKey": key_file,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        },
        indent=2,
    )


# pebble's behaviour the lab and tests want: no random validation sleeps, no rejected nonces.
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
