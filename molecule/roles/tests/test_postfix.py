"""mailforge_postfix, verified on the core (a meta dependency of mailforge_core): the rendered Postfix files are live, compiled, checked and running."""

import base64

import pytest
from host_checks import RENDER, assert_live_file_is_rendered, listens_on, rendered_files

testinfra_hosts = ["ansible://cores"]  # the instances that converge this role (molecule.yml)

HOST = "core"  # mailforge_host in molecule.yml
POSTFIX_FILES = {path: meta for path, meta in rendered_files(HOST).items() if "config_directory" in meta}
MAPS = sorted(path for path, meta in POSTFIX_FILES.items() if meta["action"] == "postmap")


def test_postfix_installed(host):
    for name in ("postfix", "postfix-lmdb", "ssl-cert"):
        assert host.package(name).is_installed, name


def test_postfix_running(host):
    status = host.run("postfix status")
    assert status.rc == 0, status.stderr
    master = host.file("/var/spool/postfix/pid/master.pid").content_string.strip()
    assert host.run(f"kill -0 {master}").rc == 0
    assert host.process.filter(comm="master")


@pytest.mark.parametrize("path", sorted(POSTFIX_FILES))
def test_live_file_is_the_rendered_one(host, path):
    assert_live_file_is_rendered(host, HOST, path)


def test_effective_settings_are_the_rendered_ones(host):
    """postconf -n on the host equals postconf -n of the rendered main.cf (judged by the host's own postconf)."""
    rendered = (RENDER / HOST / "etc/postfix/main.cf").read_bytes()
    judge = "/tmp/mailforge-judge"
    put = host.run(f"rm -rf {judge} && mkdir -p {judge} && echo {base64.b64encode(rendered).decode()} | base64 -d > {judge}/main.cf")
    assert put.rc == 0, put.stderr
    expected = host.run(f"postconf -c {judge} -n")
    live = host.run("postconf -n")
    host.run(f"rm -rf {judge}")
    assert expected.rc == 0 and live.rc == 0
    assert live.stderr == "", live.stderr  # no warning (unknown parameter, ...)
    # postconf -c DIR reports config_directory = DIR; the rest must be identical
    assert live.stdout.splitlines() == [line for line in expected.stdout.splitlines() if not line.startswith("config_directory = ")]
    assert "myhostname = core.internal.roles.example.com" in live.stdout.splitlines()


def test_postfix_check_passes(host):
    check = host.run("postfix check")
    assert check.rc == 0
    assert check.stderr == "", check.stderr


@pytest.mark.parametrize("path", MAPS)
def test_map_database_is_compiled_and_fresh(host, path):
    db_type = host.check_output("postconf -h default_database_type")
    suffix = {"hash": "db", "btree": "db"}.get(db_type, db_type)
    db = host.file(f"{path}.{suffix}")
    assert db.exists, f"{path}.{suffix} missing"
    assert db.mtime >= host.file(path).mtime, f"{path}.{suffix} is older than {path}"


def test_map_database_answers(host):
    # every recipient of the rendered virtual_mailboxes is found through the compiled database
    rendered = (RENDER / HOST / "etc/postfix/virtual_mailboxes").read_text().splitlines()
    entries = [line.split() for line in rendered if line and not line.startswith("#")]
    assert entries
    for key, value in entries:
        assert host.check_output(f"postmap -q {key} hash:/etc/postfix/virtual_mailboxes") == value
    assert host.run("postmap -q nobody@roles.example.com hash:/etc/postfix/virtual_mailboxes").stdout == ""


def test_queue_and_data_directories(host):
    queue = host.file("/var/spool/postfix")
    assert queue.is_directory and (queue.user, queue.mode) == ("root", 0o755)
    data = host.file("/var/lib/postfix")
    assert data.is_directory and (data.user, data.mode) == ("postfix", 0o700)


# tls.outbound (docs/outbound-tls.md): the scenario's inventory turns it on for the core; each file
# is live as rendered, unbound answers on 127.0.0.1 with DNSSEC validation on, mta-sts-daemon listens
# where main.cf's socketmap points, and Postfix reads its policies through it.
OUTBOUND_ACTIONS = ("unbound reload", "mta-sts-daemon restart", "resolver")
OUTBOUND_FILES = sorted(path for path, meta in rendered_files(HOST).items() if meta["action"] in OUTBOUND_ACTIONS)

# Runs on the host: one DNS query (localhost. A, which unbound answers from its own local zone, no
# Internet needed) to 127.0.0.1:53; prints the reply's rcode and answer count.
_DNS_QUERY = r"""
import socket, struct
query = struct.pack(">HHHHHH", 0x4d46, 0x0100, 1, 0, 0, 0) + b"\x09localhost\x00" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(10); s.sendto(query, ("127.0.0.1", 53))
reply = s.recv(512)
ident, flags, _, answers, _, _ = struct.unpack(">HHHHHH", reply[:12])
print(ident == 0x4d46, flags & 0xF, answers)
"""


@pytest.mark.parametrize("path", OUTBOUND_FILES)
def test_outbound_tls_file_is_the_rendered_one(host, path):
    assert_live_file_is_rendered(host, HOST, path)


def test_unbound_answers_on_loopback(host):
    if "/etc/unbound/unbound.conf.d/mailforge.conf" not in OUTBOUND_FILES:
        pytest.skip("no tls.outbound.dane in this scenario's inventory")
    result = host.run(f"python3 - <<'EOF'\n{_DNS_QUERY}\nEOF")
    assert result.rc == 0, result.stderr
    assert result.stdout.split() == ["True", "0", "1"], result.stdout  # our id, NOERROR, one answer


def test_mta_sts_daemon_listens_where_postfix_asks(host):
    if "/etc/mta-sts-daemon.yml" not in OUTBOUND_FILES:
        pytest.skip("no tls.outbound.mta_sts in this scenario's inventory")
    assert listens_on(host, "127.0.0.1", 8461)
    assert host.check_output("postconf -h smtp_tls_policy_maps") == "socketmap:inet:127.0.0.1:8461:postfix"
