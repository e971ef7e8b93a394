"""mailforge_postmulti: the MX proxy of inventories/mx-proxy runs three Postfix instances.

The default instance listens on loopback only and manages the others; postfix-inbound takes
public mail on port 25 of the relay's address; postfix-outbound takes mail from the trusted
networks on the submission port.
"""

import pytest
from host_checks import MX_PROXY_RENDER, PROJECT, assert_live_file_is_rendered, listening, rendered_files, topology

testinfra_hosts = ["ansible://mxproxies"]  # the instances that converge this role (molecule.yml)

HOST = "mxproxy"  # mailforge_host in molecule.yml
FILES = rendered_files(HOST, MX_PROXY_RENDER)
INVENTORY = topology(PROJECT / "inventories/mx-proxy/topology.yml")
RELAY = next(r for r in INVENTORY["relays"] if r["name"] == HOST)
ADDRESS = RELAY["address"]
INBOUND_PORT = (RELAY["instances"].get("inbound") or {}).get("port", 25)
OUTBOUND_PORT = (RELAY["instances"].get("outbound") or {}).get("port", 587)
INSTANCES = {"postfix-inbound": "/etc/postfix-inbound", "postfix-outbound": "/etc/postfix-outbound"}
CONFIG_DIRECTORIES = ["/etc/postfix", *INSTANCES.values()]


def test_postmulti_lists_the_instances_enabled(host):
    listed = {}
    for line in host.check_output("postmulti -l").splitlines():
        name, group, enabled, directory = line.split()
        listed[name] = (group, enabled, directory)
    assert listed["-"] == ("-", "y", "/etc/postfix")
    for name, directory in INSTANCES.items():
        assert listed.get(name) == ("mta", "y", directory), listed


@pytest.mark.parametrize("directory", CONFIG_DIRECTORIES)
def test_instance_running(host, directory):
    status = host.run(f"postfix -c {directory} status")
    assert status.rc == 0, status.stderr
    queue = host.check_output(f"postconf -c {directory} -h queue_directory")
    pid = host.file(f"{queue}/pid/master.pid").content_string.strip()
    assert host.run(f"kill -0 {pid}").rc == 0


@pytest.mark.parametrize("directory", CONFIG_DIRECTORIES)
def test_instance_check_passes(host, directory):
    check = host.run(f"postfix -c {directory} check")
    assert check.rc == 0 and check.stderr == "", check.stderr


@pytest.mark.parametrize("path", sorted(p for p, m in FILES.items() if "config_directory" in m))
def test_live_file_is_the_rendered_one(host, path):
    assert_live_file_is_rendered(host, HOST, path, MX_PROXY_RENDER)


def test_inbound_listens_on_port_25_of_the_relay_address(host):
    assert f"{ADDRESS}:{INBOUND_PORT}" in listening(host)


def test_outbound_listens_on_its_port(host):
    assert f"{ADDRESS}:{OUTBOUND_PORT}" in listening(host)


def test_default_instance_on_loopback_only(host):
    assert host.check_output("postconf -c /etc/postfix -h inet_interfaces") == "loopback-only"
    sockets = listening(host)
    assert "127.0.0.1:25" in sockets
    # port 25 is bound on loopback (default) and on the relay address (inbound), nowhere else
    assert {s for s in sockets if s.endswith(":25")} == {"127.0.0.1:25", f"{ADDRESS}:{INBOUND_PORT}"}


def test_inbound_answers_as_the_mx(host):
    session = host.run(
        "python3 -c \"import socket; s=socket.create_connection(('%s', %d), timeout=30); print(s.makefile().readline().strip())\""
        % (ADDRESS, INBOUND_PORT))
    assert session.rc == 0, session.stderr
    assert session.stdout.startswith(f"220 {RELAY['fqdn']} ESMTP"), session.stdout


def test_inbound_recipient_map(host):
    listed = INVENTORY["recipients"]["addresses"][0]
    assert host.check_output(f"postmap -q {listed} hash:/etc/postfix-inbound/relay_recipients") == "OK"
    assert host.run("postmap -q nobody@example.org hash:/etc/postfix-inbound/relay_recipients").stdout == ""
