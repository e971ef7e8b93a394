"""verify's inbound TLS rows against real TLS servers on 127.0.0.1 (tests/tlsserver.py).

The `starttls` probe runs as verify runs it (smtp_probe.py through a shell, here this machine's),
against a server serving a chosen chain and TLS versions; the controller judges its answer. Each
case breaks one thing (the CA, the names, the protocol, the dates) and exactly that row must fail,
or warn, while the others hold.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
from pathlib import Path

import pytest
from conftest import INVENTORIES
from tlsserver import NOW, Authority, SmtpTlsServer, pem, write_chain

from mailforge import verify
from mailforge.inventory import load_inventory
from mailforge.probes import run_probe
from mailforge.remote import HostShell
from mailforge.tls import inbound
from mailforge.tls.names import mx_names

MX = "mx.example.com"
ROWS = (inbound.CHAIN, inbound.NAMES, inbound.PROTOCOL, inbound.EXPIRY)


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority.make("mailforge test CA")


def probe_and_judge(tmp_path: Path, ca: Authority, roots: list, key_cert=None, oldest=ssl.TLSVersion.TLSv1_2, newest=ssl.TLSVersion.MAXIMUM_SUPPORTED, days=21):
    """Serve `key_cert` (default: a good leaf for MX from `ca`), probe it, judge it: row -> Judgement."""
    key, cert = key_cert or ca.issue([MX])
    server = SmtpTlsServer(write_chain(tmp_path, key, [cert, ca.cert]), oldest=oldest, newest=newest)
    try:
        probe = {"kind": "starttls", "host": "127.0.0.1", "port": server.port, "helo": "client.test", "server_name": MX, "timeout": 5}
        answer = run_probe(HostShell("here", ["env"]), {"probes": [probe]})[0]
    finally:
        server.close()
    return inbound.judge(answer, [MX], roots, "the test CA", NOW, days)


def statuses(judged) -> dict[str, str]:
    return {row: judged[row].status for row in ROWS}


def test_a_good_certificate_passes_every_row(tmp_path, ca):
    judged = probe_and_judge(tmp_path, ca, [ca.cert])
    assert statuses(judged) == dict.fromkeys(ROWS, "ok"), judged
    assert judged[inbound.CHAIN].detail == "mx.example.com <- mailforge test CA (trusted: the test CA)"
    assert judged[inbound.PROTOCOL].detail.startswith("TLSv1.3 negotiated; TLSv1.1 refused")


def test_a_chain_from_another_ca_fails_the_chain_only(tmp_path, ca):
    other = Authority.make("someone else's CA")
    judged = probe_and_judge(tmp_path, ca, [other.cert])
    assert statuses(judged) == {inbound.CHAIN: "failed", inbound.NAMES: "ok", inbound.PROTOCOL: "ok", inbound.EXPIRY: "ok"}
    assert "does not verify against the test CA" in judged[inbound.CHAIN].detail


def test_a_certificate_for_other_names_fails_the_names_only(tmp_path, ca):
    judged = probe_and_judge(tmp_path, ca, [ca.cert], ca.issue(["relay1.example.com", "*.example.org"]))
    assert statuses(judged) == {inbound.CHAIN: "ok", inbound.NAMES: "failed", inbound.PROTOCOL: "ok", inbound.EXPIRY: "ok"}
    assert judged[inbound.NAMES].detail == "certificate for relay1.example.com, *.example.org does not cover mx.example.com"


def test_a_server_that_still_takes_tls_1_1_fails_the_protocol(tmp_path, ca):
    judged = probe_and_judge(tmp_path, ca, [ca.cert], oldest=ssl.TLSVersion.TLSv1_1)
    assert statuses(judged) == {inbound.CHAIN: "ok", inbound.NAMES: "ok", inbound.PROTOCOL: "failed", inbound.EXPIRY: "ok"}
    assert "a TLSv1.1-only client was accepted" in judged[inbound.PROTOCOL].detail


def test_a_tls_1_1_only_server_fails_the_protocol(tmp_path, ca):
    judged = probe_and_judge(tmp_path, ca, [ca.cert], oldest=ssl.TLSVersion.TLSv1_1, newest=ssl.TLSVersion.TLSv1_1)
    assert judged[inbound.PROTOCOL].status == "failed"
    assert judged[inbound.PROTOCOL].detail.startswith("TLSv1.1 negotiated (want TLSv1.2 or newer)")


def test_an_expired_certificate_fails_the_expiry_and_still_shows_its_chain(tmp_path, ca):
    expired = ca.issue([MX], NOW - datetime.timedelta(days=100), NOW - datetime.timedelta(days=10))
    judged = probe_and_judge(tmp_path, ca, [ca.cert], expired)
    assert statuses(judged) == {inbound.CHAIN: "ok", inbound.NAMES: "ok", inbound.PROTOCOL: "ok", inbound.EXPIRY: "failed"}
    assert judged[inbound.EXPIRY].detail.startswith("expired ")


def test_a_certificate_expiring_soon_warns(tmp_path, ca):
    soon = ca.issue([MX], not_after=NOW + datetime.timedelta(days=5, hours=1))
    judged = probe_and_judge(tmp_path, ca, [ca.cert], soon, days=21)
    assert judged[inbound.EXPIRY].status == "warning" and judged[inbound.EXPIRY].ok
    assert "in 5 days (tls.expiry_warning_days: 21): renew it" in judged[inbound.EXPIRY].detail
    assert probe_and_judge(tmp_path, ca, [ca.cert], soon, days=3)[inbound.EXPIRY].status == "ok"


def test_no_starttls_fails_every_row_saying_why():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    try:
        probe = {"kind": "starttls", "host": "127.0.0.1", "port": closed.getsockname()[1], "timeout": 2}
        answer = run_probe(HostShell("here", ["env"]), {"probes": [probe]})[0]
    finally:
        closed.close()
    judged = inbound.judge(answer, [MX], [], "nothing", NOW, 21)
    assert all(j.status == "failed" and "no TLS session: ConnectionRefusedError" in j.detail for j in judged.values()), judged


def test_the_trust_is_the_trust_file_else_the_store_and_the_system(tmp_path, ca):
    inventory_dir = tmp_path / "inv"
    shutil.copytree(INVENTORIES["example"], inventory_dir)
    store = tmp_path / "store"
    (store / "internal-ca").mkdir(parents=True)
    (store / "internal-ca" / "cert.pem").write_bytes(pem(ca.cert))
    roots, where = inbound.trust(load_inventory(inventory_dir), store)
    assert ca.cert in roots
    assert where == ("the private CA + the system's CAs" if inbound.system_ca_file() else "the private CA")
    topology = inventory_dir / "topology.yml"
    topology.write_text(topology.read_text().replace("\ntls:\n", "\ntls:\n  trust_file: roots.pem\n", 1))
    with pytest.raises(inbound.TrustError, match=r"topology.yml: tls.trust_file: cannot read .*roots.pem"):
        inbound.trust(load_inventory(inventory_dir), store)
    (inventory_dir / "roots.pem").write_text("not a certificate\n")
    with pytest.raises(inbound.TrustError, match="holds no PEM certificate"):
        inbound.trust(load_inventory(inventory_dir), store)
    (inventory_dir / "roots.pem").write_bytes(pem(ca.cert))
    assert inbound.trust(load_inventory(inventory_dir), store) == ([ca.cert], "tls.trust_file roots.pem")


def test_the_mx_names_are_the_balancers_else_the_relays():
    assert mx_names(load_inventory(INVENTORIES["example"]).topology) == ["mx.example.com"]
    assert mx_names(load_inventory(INVENTORIES["elb"]).topology) == ["mx.example.net"]


# --- relay-to-core: the relay's own log says each hop was verified ----------------------------------

CLEANUP = "Dec  7 12:00:01 relay1 postfix/cleanup[311]: 4dQk1x0Zz1: message-id=<a1b2c3-1@lab-sender.test>"
VERIFIED = (
    "Dec  7 12:00:01 relay1 postfix/smtp[320]: Verified TLS connection established to core.internal.example.com[10.232.0.30]:25: "
    "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature ECDSA (P-256) server-digest SHA256"
)
SENT = (
    "Dec  7 12:00:01 relay1 postfix/smtp[320]: 4dQk1x0Zz1: to=<abuse@example.com>, relay=core.internal.example.com[10.232.0.30]:25, "
    "delay=0.1, delays=0.02/0/0.05/0.03, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4dQk1x1Abc)"
)


def test_a_verified_hop_is_read_from_the_relays_log():
    other = "Dec  7 11:00:00 relay1 postfix/smtp[300]: 4dQj0000001: to=<abuse@example.com>, relay=core.internal.example.com[10.232.0.30]:25, status=sent (250)"
    assert verify.hop_of("\n".join([other, CLEANUP, VERIFIED, SENT]), "a1b2c3") == (
        True,
        "core.internal.example.com",
        "Verified TLS connection established to core.internal.example.com[10.232.0.30]:25: TLSv1.3",
    )
    assert verify.hop_of("\n".join([other, VERIFIED, SENT]), "a1b2c3") is None  # no copy of the test mail: nothing to judge yet


def test_an_unverified_or_clear_or_deferred_hop_fails():
    untrusted = VERIFIED.replace("Verified TLS", "Untrusted TLS")
    ok, hop, evidence = verify.hop_of("\n".join([CLEANUP, untrusted, SENT]), "a1b2c3")
    assert not ok and hop == "core.internal.example.com" and "Untrusted TLS connection established to core.internal.example.com" in evidence
    ok, _, evidence = verify.hop_of("\n".join([CLEANUP, SENT]), "a1b2c3")
    assert not ok and "no TLS connection logged for this delivery" in evidence
    deferred = SENT.replace("status=sent (250 2.0.0 Ok: queued as 4dQk1x1Abc)", "status=deferred (Server certificate not verified)")
    ok, _, evidence = verify.hop_of("\n".join([CLEANUP, deferred]), "a1b2c3")
    assert not ok and evidence.startswith("status=deferred (Server certificate not verified)")


def test_the_verify_rows_through_a_door(tmp_path, ca):
    """verify's own function, as `verify` calls it: the rows, under the probing host, and a warning
    that holds (exit 0) but says so in the result's status."""
    key, cert = ca.issue([MX], not_after=NOW + datetime.timedelta(days=3))
    server = SmtpTlsServer(write_chain(tmp_path, key, [cert]))
    try:
        inventory = load_inventory(INVENTORIES["example"])
        checks = verify.inbound_tls_checks(inventory, HostShell("here", ["env"]), ("127.0.0.1", server.port), [ca.cert], "the test CA")
    finally:
        server.close()
    assert [(c.name, c.host, c.ok, c.warning) for c in checks] == [
        (inbound.CHAIN, "here", True, False),
        (inbound.NAMES, "here", True, False),
        (inbound.PROTOCOL, "here", True, False),
        (inbound.EXPIRY, "here", True, True),
    ]
    run = verify.results_of(checks, "example")
    assert run.exit_code == 0 and [r.status for r in run.results] == ["ok", "ok", "ok", "warning"]
