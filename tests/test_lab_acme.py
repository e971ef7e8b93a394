"""The lab's example cluster on a certificate from the lab's ACME server (pebble, DNS-01 through the lab's
Knot): the relays present it through the front door, and `certs --renew --deploy --lab` brings every
relay the renewed certificate (new serial, same key) by a reload, with a mail sent meanwhile delivered."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import EXAMPLE, MAILFORGE, in_container
from mailstream import MailStream

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they start containers)"),
]

RELAYS = ("relay1", "relay2")


def store_leaf():
    from cryptography import x509

    from mailforge.inventory import load_topology
    from mailforge.tls import store_of

    chain = store_of(load_topology(EXAMPLE).topology.cluster) / "mx" / "chain.pem"
    return x509.load_pem_x509_certificates(chain.read_bytes())[0]


def presented(host: str, port: int) -> tuple[str, str]:
    """(serial, public key PEM) of the certificate the front door presents after STARTTLS, seen from the lab's client."""
    text = in_container(
        "client",
        f"openssl s_client -starttls smtp -connect {host}:{port} -servername mx.example.com </dev/null 2>/dev/null | openssl x509 -noout -serial -pubkey",
    )
    serial = next(line.split("=", 1)[1].strip().lower() for line in text.splitlines() if line.startswith("serial="))
    return serial.lstrip("0"), text[text.index("-----BEGIN PUBLIC KEY") :].strip()


def master_pid(relay: str) -> str:
    return in_container(relay, "cat /var/spool/postfix/pid/master.pid").strip()


def spki_pem(cert) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode().strip()


def test_relays_present_the_acme_certificate_and_a_renewal_reaches_them_by_reload(lab):
    stream = MailStream(EXAMPLE)
    leaf = store_leaf()
    assert "Pebble" in leaf.issuer.rfc4514_string(), leaf.issuer
    serial, key = presented(stream.host, stream.port)
    assert serial == f"{leaf.serial_number:x}" and key == spki_pem(leaf)

    pids = {relay: master_pid(relay) for relay in RELAYS}
    stream.start(count=3, rate=1)
    renewed = subprocess.run(
        [str(MAILFORGE), "certs", str(EXAMPLE), "--renew", "--deploy", "--lab"], capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    outcome = stream.wait(deliver_within=60)
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    new = store_leaf()
    assert new.serial_number != leaf.serial_number and spki_pem(new) == spki_pem(leaf), "renewed, with the same key"
    for _ in RELAYS:  # the balancer spreads connections over both relays: ask often enough to meet each
        seen = {presented(stream.host, stream.port) for _ in range(4)}
        assert seen == {(f"{new.serial_number:x}", spki_pem(new))}, seen
    assert {relay: master_pid(relay) for relay in RELAYS} == pids, "Postfix was restarted, not reloaded"
    assert len(outcome.accepted) == 3 and not outcome.lost, outcome.summary()
