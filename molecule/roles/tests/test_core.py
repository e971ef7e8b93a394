"""mailforge_core: the hidden core runs Postfix on port 25 behind its firewall and delivers to Maildirs.

The delivery test is the user-visible outcome: an SMTP session from inside the container (over
loopback, which the core's firewall accepts and its mynetworks trusts) hands a message to a
listed recipient, and the message appears in that recipient's Maildir.
"""

import time
import uuid

from host_checks import listens_on, role_defaults, smtp, topology

testinfra_hosts = ["ansible://cores"]  # the instances that converge this role (molecule.yml)

HOST = "core"  # mailforge_host in molecule.yml
CORE = next(c for c in topology()["cores"] if c["name"] == HOST)
DEFAULTS = role_defaults("mailforge_core")
BASE = DEFAULTS["mailforge_core_mailbox_base"]


def test_postfix_running(host):
    assert host.run("postfix status").rc == 0


def test_smtp_listens_on_the_core_address(host):
    assert listens_on(host, CORE["address"], 25)


def test_firewall_loaded(host):
    rules = host.check_output("iptables -S INPUT")
    assert "-P INPUT DROP" in rules
    assert "mailforge: the relays hand over inbound mail" in rules


def test_maildir_base(host):
    base = host.file(BASE)
    assert base.is_directory
    assert (base.user, base.group, base.mode) == (DEFAULTS["mailforge_core_mailbox_owner"], DEFAULTS["mailforge_core_mailbox_group"], 0o770)
    # the rendered main.cf delivers there
    assert host.check_output("postconf -h virtual_mailbox_base") == BASE


def test_unlisted_recipient_is_refused(host):
    _banner, _ehlo, _mail, rcpt, _quit = smtp(
        host, "127.0.0.1", 25, "EHLO client.roles.example.com", "MAIL FROM:<sender@example.net>", "RCPT TO:<nobody@roles.example.com>", "QUIT")
    assert rcpt[-1].startswith("550"), rcpt


def test_message_is_delivered_to_the_maildir(host):
    token = uuid.uuid4().hex
    message = f"From: sender@example.net\\nTo: alice@roles.example.org\\nSubject: mailforge molecule {token}\\n\\nhello {token}\\n."
    banner, ehlo, mail, rcpt, data, sent, quit_ = smtp(
        host, "127.0.0.1", 25,
        "EHLO client.roles.example.com", "MAIL FROM:<sender@example.net>", "RCPT TO:<alice@roles.example.org>", "DATA", message, "QUIT")
    assert banner[-1].startswith("220 " + CORE["fqdn"]), banner
    assert rcpt[-1].startswith("250"), rcpt
    assert data[-1].startswith("354"), data
    assert sent[-1].startswith("250"), sent
    maildir = f"{BASE}/roles.example.org/alice"
    deadline = time.monotonic() + 30
    found = ""
    while time.monotonic() < deadline:
        found = host.run(f"grep -l {token} {maildir}/new/* 2>/dev/null").stdout.strip()
        if found:
            break
        time.sleep(1)
    assert found, f"no message with {token} in {maildir}/new within 30 s:\n" + host.run("tail -20 /var/log/mail.log").stdout
    delivered = host.file(found.splitlines()[0])
    assert (delivered.user, delivered.group) == ("mail", "mail")
