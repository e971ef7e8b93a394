"""A real SMTP server with STARTTLS on 127.0.0.1, for the inbound TLS rows' tests, and the
certificates it serves, made with `cryptography` the way a CA makes them.

`Authority` issues leaves (any names, any validity); `SmtpTlsServer` serves a chosen key and chain
with Python's ssl, offering a chosen range of TLS versions, and speaks just enough SMTP (banner,
EHLO with STARTTLS, STARTTLS, QUIT) for the `starttls` probe. Nothing is mocked: the probe connects
over TCP and does a real handshake.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.UTC)


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Authority:
    """A CA: its key and self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=365))  # before any leaf a test backdates
            .not_valid_after(NOW + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(self, names: list[str], not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None):
        """A server leaf for `names`: (key, certificate)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - datetime.timedelta(days=1))
            .not_valid_after(not_after or NOW + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return key, cert


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_chain(directory: Path, key, chain: list[x509.Certificate]) -> Path:
    """key + chain in one PEM file (as HOST_MX holds them), mode 0600."""
    path = directory / "served.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()) + b"".join(map(pem, chain)))
    path.chmod(0o600)
    return path


class SmtpTlsServer:
    """SMTP with STARTTLS on 127.0.0.1, serving `chain_file` with TLS versions [oldest, newest].
    Accepts connections until closed; each session in its own thread."""

    def __init__(self, chain_file: Path, oldest=ssl.TLSVersion.TLSv1_2, newest=ssl.TLSVersion.MAXIMUM_SUPPORTED):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if oldest < ssl.TLSVersion.TLSv1_2:
            self.context.set_ciphers("ALL:@SECLEVEL=0")  # OpenSSL 3 serves TLSv1.1 only at security level 0
        with warnings.catch_warnings():  # TLSv1.1 is deprecated: serving it is the point of some tests
            warnings.simplefilter("ignore", DeprecationWarning)
            self.context.minimum_version, self.context.maximum_version = oldest, newest
        self.context.load_cert_chain(chain_file)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket):
        conn.settimeout(10)
        try:
            conn.sendall(b"220 tls.test ESMTP\r\n")
            reader = conn.makefile("rb")
            while line := reader.readline(1024):
                verb = line.split(b" ", 1)[0].strip().upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-tls.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
                elif verb == b"STARTTLS":
                    conn.sendall(b"220 2.0.0 Ready to start TLS\r\n")
                    with self.context.wrap_socket(conn, server_side=True) as tls:
                        if tls.recv(1024).upper().startswith(b"QUIT"):
                            tls.sendall(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    return
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self):
        self.listener.close()


def checkable_haproxy_cfg(cfg: Path, work: Path) -> Path:
    """A copy of a rendered haproxy.cfg that `haproxy -c` can judge on this machine: the files deploy puts on the
    balancer beside it (the mta-sts.<domain> certificate, the MTA-STS policy) point at stand-ins under `work`.
    Everything else is the rendered text, unchanged; a cfg without the MTA-STS frontend is returned as it is."""
    from mailforge.render.mta_sts import HAPROXY_POLICY
    from mailforge.tls import HOST_MTA_STS

    text = cfg.read_text(encoding="utf-8")
    if HOST_MTA_STS not in text:
        return cfg
    work.mkdir(parents=True, exist_ok=True)
    key, cert = Authority.make("stand-in CA").issue(["mta-sts.example.com"])
    served = write_chain(work, key, [cert])
    copy = work / "haproxy.cfg"
    copy.write_text(text.replace(HOST_MTA_STS, str(served)).replace(HAPROXY_POLICY, str(cfg.parent / "mta-sts.txt")), encoding="utf-8")
    return copy
