"""mailforge_haproxy: HAProxy runs the rendered haproxy.cfg and listens on the balancer's frontend."""

import hashlib
import json
import os
from pathlib import Path

import yaml

HOST = "lb"  # mailforge_host in molecule.yml
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
RENDER = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "render"
FILES = json.loads((RENDER / "manifest.json").read_text())["hosts"][HOST]["files"]
INVENTORY = yaml.safe_load((PROJECT / "molecule/shared/inventory/topology.yml").read_text())
LB = next(b for b in INVENTORY["load_balancers"] if b["name"] == HOST)
CONFIG = yaml.safe_load((PROJECT / "roles/mailforge_haproxy/defaults/main.yml").read_text())["mailforge_haproxy_config"]


def listens_on(host, address, port):
    """A TCP socket accepts connections on address:port (bound to it or to every IPv4 address).

    Not host.socket(...).is_listening: testinfra 10.2 does not count a 0.0.0.0 socket for a
    given address.
    """
    local = {line.split()[3] for line in host.check_output("ss -Hltn").splitlines()}
    return bool({f"{address}:{port}", f"0.0.0.0:{port}", f"*:{port}"} & local)


def test_haproxy_installed(host):
    assert host.package("haproxy").is_installed


def test_config_is_the_rendered_one(host):
    meta = FILES[CONFIG]
    rendered = (RENDER / HOST / CONFIG.lstrip("/")).read_bytes()
    assert hashlib.sha256(rendered).hexdigest() == meta["sha256"]
    live = host.file(CONFIG)
    assert live.is_file and not live.is_symlink
    assert live.content == rendered
    assert (live.user, live.group, live.mode) == (meta["owner"], meta["group"], int(meta["mode"], 8))


def test_config_check_passes(host):
    check = host.run(f"haproxy -c -f {CONFIG}")
    assert check.rc == 0, check.stdout + check.stderr


def test_haproxy_running(host):
    assert host.run("service haproxy status").rc == 0
    pids = host.check_output("pidof haproxy").split()
    assert pids
    # the running process was started with the live configuration
    cmdline = host.file(f"/proc/{pids[0]}/cmdline").content_string.split("\0")
    assert CONFIG in cmdline


def test_listens_on_the_frontend(host):
    port = LB.get("frontend_port", 25)
    assert listens_on(host, LB["address"], port)
    # and accepts connections there (the relay is absent in this scenario, so HAProxy has no
    # server up and closes them: the accept is what is checked)
    result = host.run("python3 -c \"import socket; socket.create_connection(('%s', %d), timeout=10).close()\"" % (LB["address"], port))
    assert result.rc == 0, result.stderr


def test_firewall_opens_the_frontend(host):
    rules = host.check_output("iptables -S INPUT")
    assert "-P INPUT DROP" in rules
    assert '--dport 25 -m comment --comment "mailforge: public smtp" -j ACCEPT' in rules
