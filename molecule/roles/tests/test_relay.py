"""mailforge_relay: postscreen behind the PROXY balancer on the backend port, listed recipients only.

The SMTP sessions run inside the container against the relay's own address (over loopback, which
its firewall accepts), starting with the PROXY header the balancer would send.
"""

import pytest
from host_checks import code, listens_on, smtp, topology

testinfra_hosts = ["ansible://relays"]  # the instances that converge this role (molecule.yml)

HOST = "relay"  # mailforge_host in molecule.yml
INVENTORY = topology()
RELAY = next(r for r in INVENTORY["relays"] if r["name"] == HOST)
LB = INVENTORY["load_balancers"][0]
CORE = INVENTORY["cores"][0]
ADDRESS, PORT = RELAY["address"], LB["backend_port"]
LISTED = "alice@roles.example.com"       # users.txt x domains
UNLISTED = "nobody@roles.example.com"
CLIENT = "192.0.2.7"  # the client address the PROXY header carries


def session(host, helo, *commands):
    return smtp(host, ADDRESS, PORT, f"EHLO {helo}", *commands, "QUIT", proxy_from=CLIENT)


def test_postfix_running(host):
    assert host.run("postfix status").rc == 0


def test_postscreen_listens_on_the_backend_port(host):
    assert listens_on(host, ADDRESS, PORT)
    master = host.check_output("postconf -M")
    assert any(line.split()[:2] == [f"{PORT}", "inet"] and line.split()[-1] == "postscreen" for line in master.splitlines())
    # and nothing else takes mail: no smtpd on port 25
    assert not listens_on(host, ADDRESS, 25)


def test_proxy_settings(host):
    assert host.check_output("postconf -h postscreen_upstream_proxy_protocol") == "haproxy"
    assert host.check_output("postconf -h smtpd_upstream_proxy_protocol") == ""
    assert host.check_output("postconf -h relay_domains") == "hash:/etc/postfix/relay_domains"
    assert host.check_output("postconf -h relay_recipient_maps") == "hash:/etc/postfix/relay_recipients"
    assert host.check_output("postmap -q %s cidr:/etc/postfix/postscreen_access.cidr" % LB["address"]) == "permit"


def test_recipient_map(host):
    assert host.check_output(f"postmap -q {LISTED} hash:/etc/postfix/relay_recipients") == "OK"
    unlisted = host.run(f"postmap -q {UNLISTED} hash:/etc/postfix/relay_recipients")
    assert unlisted.rc == 1 and unlisted.stdout == ""


@pytest.mark.parametrize("domain", INVENTORY["domains"])
def test_domains_go_to_the_core(host, domain):
    assert host.check_output(f"postmap -q {domain} hash:/etc/postfix/relay_domains") == "OK"
    assert host.check_output(f"postmap -q {domain} hash:/etc/postfix/transport") == f"relay:[{CORE['address']}]:25"


def test_smtp_session_through_proxy_header(host):
    banner, ehlo, mail, unlisted, listed, foreign, quit_ = session(
        host, "client.example.net",
        "MAIL FROM:<>", f"RCPT TO:<{UNLISTED}>", f"RCPT TO:<{LISTED}>", "RCPT TO:<someone@elsewhere.example>")
    assert code(banner) == "220" and RELAY["fqdn"] in banner[-1], banner
    assert code(ehlo) == "250", ehlo
    assert code(mail) == "250", mail
    assert code(unlisted) == "550" and "5.1.1" in unlisted[-1], unlisted
    assert code(listed) == "250", listed
    assert code(foreign) == "554" and "Relay access denied" in foreign[-1], foreign
    assert code(quit_) == "221", quit_


def test_forged_helo_is_refused(host):
    *_, rcpt, _quit = session(host, RELAY["fqdn"], "MAIL FROM:<>", f"RCPT TO:<{LISTED}>")
    assert code(rcpt) == "554" and "forged HELO" in rcpt[-1], rcpt


def test_connection_without_proxy_header_is_dropped(host):
    # postscreen waits postscreen_upstream_proxy_timeout for the header, then hangs up without a banner
    result = host.run(
        "python3 -c \"import socket; s=socket.create_connection(('%s', %d), timeout=30); print(repr(s.recv(512)))\"" % (ADDRESS, PORT))
    assert result.rc == 0, result.stderr
    assert "220" not in result.stdout, result.stdout
