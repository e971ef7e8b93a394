"""The MX proxy layout (inventories/mx-proxy) in its own lab: `verify` passes on every check, its
outbound instance's included (a host in `trusted_networks` submits on port 587 and the mail is really
delivered to the outside domain's mail server; the lab's client, outside them, is refused), and an
outbound instance that trusts the wrong host fails exactly those checks.

Runs when MAILFORGE_LAB=1. The lab is brought up here and always taken down at the end, whatever
MAILFORGE_LAB_KEEP says (that keeps the example's): its network, 10.233.0.0/23, overlaps the one
Molecule's `roles` scenario creates for the MX proxy of the same inventory.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import REPO, engine_env, mailforge, rows

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they start containers)"),
]

MX_PROXY = REPO / "inventories" / "mx-proxy"
SUBMITTED = "mail from trusted_networks to lab-sender.test accepted on mxproxy port 587"
DELIVERED = "mxproxy delivers it to lab-sender.test's mail server"
REFUSED = "mail from outside trusted_networks refused on mxproxy port 587"


def on(host: str, script: str) -> str:
    """Run a shell script in one of the MX proxy lab's containers (mxproxy, filter, client, submitter, ...)."""
    result = subprocess.run(["docker", "exec", "-i", f"mf-mxproxy-{host}", "sh", "-c", script], env=engine_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{host}: {script}: {result.stderr}"
    return result.stdout


def verify_rows() -> tuple[dict[str, dict], set[tuple[str, str]]]:
    """`verify --lab` of the MX proxy: its rows by name (the outbound ones are unique), and (host, name) of those that failed."""
    result = mailforge("verify", str(MX_PROXY), "--lab", "--json", "--wait", "20")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    checks = rows(json.loads(result.stdout))
    return {c["name"]: c for c in checks}, {(c["host"], c["name"]) for c in checks if not c["ok"]}


@pytest.fixture(scope="module")
def mx_proxy_lab():
    from mailforge import lab
    from mailforge.inventory import load_inventory

    up = mailforge("lab", "up", str(MX_PROXY), timeout=1800)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield lab.plan(load_inventory(MX_PROXY))
    finally:
        down = mailforge("lab", "down", str(MX_PROXY))
        assert down.returncode == 0, down.stdout + down.stderr


def test_verify_passes_with_the_outbound_instance(mx_proxy_lab):
    checks, failed = verify_rows()
    assert failed == set()
    client = mx_proxy_lab.by_host("client").address
    assert checks[SUBMITTED]["host"] == "submitter" and "data 250" in checks[SUBMITTED]["detail"]
    assert checks[DELIVERED]["detail"].startswith(f"relay=mail.lab-sender.test[{client}]:25,") and "status=sent" in checks[DELIVERED]["detail"]
    assert checks[REFUSED]["host"] == "client" and checks[REFUSED]["detail"] == "no banner: TimeoutError: timed out"  # the firewall drops it
    queue_id = checks[SUBMITTED]["detail"].split("queued as ")[1]  # the MX proxy's; its Received header names it
    mailbox = on("client", "cat /var/mail/mailforge")  # the outside mail server's mailbox has the message, from the MX proxy
    assert f"Received: from mx.example.org (mx.example.org [{mx_proxy_lab.by_host('mxproxy').address}])" in mailbox and f" id {queue_id}" in mailbox


def test_an_outbound_instance_trusting_the_wrong_host_fails_its_checks(mx_proxy_lab):
    """The outbound instance takes mail from the lab's client (outside trusted_networks) instead of the
    submitter (inside): both Postfix's mynetworks and the firewall let the client in. The outsider is
    relayed and the trusted host refused, and verify says so; put back by hand afterwards."""
    client = mx_proxy_lab.by_host("client").address
    on("mxproxy", "cp -p /etc/postfix-outbound/main.cf /root/outbound-main.cf")
    try:
        on(
            "mxproxy",
            f"postconf -c /etc/postfix-outbound -e 'mynetworks = 127.0.0.0/8 {client}/32' && postfix -c /etc/postfix-outbound reload"
            " && iptables -I INPUT -p tcp --dport 587 -j ACCEPT",
        )
        checks, failed = verify_rows()
    finally:
        on(
            "mxproxy",
            "mv /root/outbound-main.cf /etc/postfix-outbound/main.cf && postfix -c /etc/postfix-outbound reload"
            " && iptables -D INPUT -p tcp --dport 587 -j ACCEPT",
        )
    assert failed == {
        ("submitter", SUBMITTED),
        ("mxproxy", DELIVERED),
        ("client", REFUSED),
        ("mxproxy", "effective postconf matches (/etc/postfix-outbound)"),
        ("mxproxy", "files as rendered"),
        ("mxproxy", "firewall rules loaded"),
    }
    assert "rcpt 554 5.7.1 <submitter.lab-sender.test" in checks[SUBMITTED]["detail"]
    assert checks[DELIVERED]["detail"] == "not accepted, so not delivered"
    assert "rcpt 250" in checks[REFUSED]["detail"]
