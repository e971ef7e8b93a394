"""mailforge_core: the hidden core runs Postfix on port 25 behind its firewall and delivers to Maildirs.

The delivery test is the user-visible outcome: an SMTP session from inside the container (over
loopback, which the core's firewall accepts and its mynetworks trusts) hands a message to a
listed recipient, and the message appears in that recipient's Maildir.
"""

import json
import os
import time
import uuid
from pathlib import Path

import yaml

HOST = "core"  # mailforge_host in molecule.yml
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
INVENTORY = yaml.safe_load((PROJECT / "molecule/shared/inventory/topology.yml").read_text())
CORE = next(c for c in INVENTORY["cores"] if c["name"] == HOST)
DEFAULTS = yaml.safe_load((PROJECT / "roles/mailforge_core/defaults/main.yml").read_text())
BASE = DEFAULTS["mailforge_core_mailbox_base"]

SESSION = r'''
import json, socket, sys
address, commands = sys.argv[1], sys.argv[2:]
s = socket.create_connection((address, 25), timeout=30)
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        line = f.readline().decode()
        if not line:
            lines.append("<closed>")
            return lines
        lines.append(line.rstrip("\r\n"))
        if line[3:4] != "-":
            return lines
replies = [reply()]
for command in commands:
    s.sendall(command.encode().replace(b"\\n", b"\r\n") + b"\r\n")
    replies.append(reply())
print(json.dumps(replies))
'''


def smtp(host, address, *commands):
    quoted = " ".join("'%s'" % c for c in commands)
    result = host.run(f"python3 - {address} {quoted} <<'EOF'\n{SESSION}\nEOF")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def listens_on(host, address, port):
    """A TCP socket accepts connections on address:port (bound to it or to every IPv4 address).

    Not host.socket(...).is_listening: testinfra 10.2 does not count a 0.0.0.0 socket for a
    given address.
    """
    local = {line.split()[3] for line in host.check_output("ss -Hltn").splitlines()}
    return bool({f"{address}:{port}", f"0.0.0.0:{port}", f"*:{port}"} & local)


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
        host, "127.0.0.1", "EHLO client.roles.example.com", "MAIL FROM:<sender@example.net>", "RCPT TO:<nobody@roles.example.com>", "QUIT")
    assert rcpt[-1].startswith("550"), rcpt


def test_message_is_delivered_to_the_maildir(host):
    token = uuid.uuid4().hex
    message = f"From: sender@example.net\\nTo: alice@roles.example.org\\nSubject: mailforge molecule {token}\\n\\nhello {token}\\n."
    banner, ehlo, mail, rcpt, data, sent, quit_ = smtp(
        host, "127.0.0.1",
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
