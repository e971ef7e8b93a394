"""Relay-to-core TLS in the lab: each hop verified against the private CA; a core presenting a
certificate from another CA gets nothing in clear (the mail waits on the relays), and once the right
certificate is back the mail is delivered.

Needs a container engine and root (the lab starts one); runs when MAILFORGE_LAB=1.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import EXAMPLE, in_container
from mailstream import MailStream

from mailforge.inventory import load_topology
from mailforge.tls import HOST_CERT, internal

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they start containers)"),
]


def queued(relay: str, token: str) -> list[dict]:
    """The relay's queued messages (postqueue -j) whose recipients' delay reason is given, for the token's mail."""
    found = []
    for line in in_container(relay, "postqueue -j").splitlines():
        message = json.loads(line)
        ids = in_container(relay, f"postcat -q {message['queue_id']} 2>/dev/null | grep -c {token} || true").strip()
        if ids not in ("", "0"):
            found.append(message)
    return found


def test_relays_deliver_only_over_verified_tls(lab):
    topology = load_topology(EXAMPLE).topology
    core = topology.cores[0]
    relays = [r.name for r in topology.relays]

    # 1. A test mail through the front door: delivered, and the relay's log says the hop was verified.
    outcome = MailStream(EXAMPLE).start(1, 1.0).wait(60)
    assert outcome.accepted and not outcome.lost, outcome.summary()
    # The transport names the core by address ([10.232.0.30]:25): Postfix logs the peer as
    # host[address], the host being what reverse DNS says, else the address again.
    verified = f"grep -E 'Verified TLS connection established to [^ ]*\\[{core.address}\\]:25' /var/log/mail.log || true"
    assert any(in_container(r, verified).strip() for r in relays)

    # 2. The core presents a certificate for its name from ANOTHER CA.
    right = in_container(core.name, f"cat {HOST_CERT}")
    other = internal.make_ca("another")
    key, cert = internal.issue(other, [core.fqdn])
    wrong = (internal.key_pem(key) + internal.cert_pem(cert)).decode()
    in_container(core.name, f"cat > {HOST_CERT}.new && chmod 600 {HOST_CERT}.new && mv {HOST_CERT}.new {HOST_CERT} && postfix reload", stdin=wrong)
    # A relay keeps an idle connection to the core for smtp_connection_cache_time_limit (2 s): the
    # next message must need a new handshake, with the new certificate.
    time.sleep(2)
    try:
        stream = MailStream(EXAMPLE)
        outcome = stream.start(1, 1.0).wait(10)
        assert outcome.accepted, outcome.summary()
        assert not outcome.delivered, "a message reached the core past a certificate from another CA"
        deadline = time.monotonic() + 30
        waiting: list[dict] = []
        while time.monotonic() < deadline and not waiting:
            waiting = [m for r in relays for m in queued(r, stream.token)]
            if not waiting:
                time.sleep(2)
        assert waiting, "the message is in no relay's queue"
        reasons = [rcpt.get("delay_reason", "") for m in waiting for rcpt in m["recipients"]]
        assert any("verif" in reason.lower() or "certificate" in reason.lower() for reason in reasons), reasons
    finally:
        # 3. The right certificate back: the relays' queued mail goes once flushed.
        in_container(core.name, f"cat > {HOST_CERT}.new && chmod 600 {HOST_CERT}.new && mv {HOST_CERT}.new {HOST_CERT} && postfix reload", stdin=right)
        for relay in relays:
            in_container(relay, "postqueue -f")
    outcome = stream.delivered_within(outcome, 60)
    assert set(outcome.accepted) <= outcome.delivered, outcome.summary()
