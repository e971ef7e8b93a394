"""The one host view: how every host is reached (topology < host < hosts.yml < --lab), the same
`--limit` grammar for every command, and commands that do not need recipients not reading them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLE, INVENTORIES, REPO, mailforge

from mailforge import hosts
from mailforge.deploy import ansible_inventory
from mailforge.inventory import load_inventory
from mailforge.render import render
from mailforge.write import manifest

CONNECTIONS = REPO / "tests" / "fixtures" / "connections"
ANSIBLE_INVENTORY = REPO / ".venv" / "bin" / "ansible-inventory"

HOSTS_YML = """\
all:
  children:
    relays:
      vars:
        ansible_user: deploy
      hosts:
        relay2:
          ansible_host: 192.0.2.22
        relay3:
          ansible_python_interpreter: /usr/bin/python3.13
    cores:
      hosts:
        core:
          ansible_port: 2200
"""


@pytest.fixture
def with_hosts_yml(tmp_path) -> Path:
    directory = tmp_path / "connections"
    shutil.copytree(CONNECTIONS, directory)
    (directory / "hosts.yml").write_text(HOSTS_YML)
    return directory


def test_the_precedence_topology_host_hosts_yml(with_hosts_yml):
    inventory = load_inventory(with_hosts_yml)
    reaches = hosts.reach_all(inventory)
    # topology (admin, sudo, key) < relay2's own (host, port 2222) < hosts.yml (relays: user deploy; relay2: ansible_host)
    argv = reaches["relay2"].shell().argv
    assert [w for i, w in enumerate(argv) if w != "-o" and argv[i - 1] != "-o"] == [
        "ssh",
        "-p",
        "2222",
        "-i",
        "/home/admin/.ssh/mailforge",
        "deploy@192.0.2.22",
    ]
    # host keys are checked, whatever ~/.ssh/config says, and never by a prompt
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes"} <= set(argv)
    assert reaches["relay2"].become
    # relay3's own settings (root, no sudo) lose to hosts.yml's group variable, and its other variables reach Ansible
    assert reaches["relay3"].shell().argv[-1] == "deploy@10.232.9.23" and not reaches["relay3"].become
    assert reaches["relay3"].ansible_vars()["ansible_python_interpreter"] == "/usr/bin/python3.13"
    # the core's docker connection keeps its container and gains hosts.yml's port; the balancer is untouched
    assert reaches["core"].shell().argv == ["docker", "exec", "-i", "mf-conn-core"] and reaches["core"].settings["port"] == 2200
    assert reaches["lb"].shell().argv[-1] == "admin@10.232.9.10"


def test_lab_replaces_every_connection_setting(with_hosts_yml):
    from mailforge import lab

    inventory = load_inventory(with_hosts_yml)
    reaches = hosts.reach_all(inventory, lab=lab.reaches(inventory))
    lab_keys = lab.keys(inventory)
    for name, reach in reaches.items():
        # over SSH as the lab's admin user with sudo, checked against the lab's own known_hosts
        argv = reach.shell().argv
        assert argv[-1] == f"{lab.ADMIN_USER}@{inventory.host(name).address}" and reach.become
        assert f"UserKnownHostsFile={lab_keys.known_hosts}" in argv and argv[argv.index("-i") + 1] == str(lab_keys.private_key)
        assert reach.ansible_vars()["ansible_user"] == lab.ADMIN_USER and reach.ansible_vars()["ansible_connection"] == "ssh"
        assert f"-o UserKnownHostsFile={lab_keys.known_hosts}" in str(reach.ansible_vars()["ansible_ssh_common_args"])


def test_deploy_and_the_shell_commands_reach_the_same_hosts(with_hosts_yml):
    """What deploy hands Ansible (read back by Ansible's own ansible-inventory) and the shell transport
    maps, drift and verify use name the same hosts, at the same address, port and user, for --limit relays."""
    inventory = load_inventory(with_hosts_yml)
    selected = [h.name for h in hosts.select(inventory, "relays")]
    assert selected == ["relay1", "relay2", "relay3"]
    reaches = hosts.reach_all(inventory)
    written = with_hosts_yml / "deploy-inventory.json"
    written.write_text(json.dumps(ansible_inventory(inventory, Path("/srv/render"), manifest(render(inventory), "conn"), reaches, selected)))
    listed = json.loads(subprocess.run([str(ANSIBLE_INVENTORY), "-i", str(written), "--list"], capture_output=True, text=True, check=True).stdout)
    hostvars = listed["_meta"]["hostvars"]
    assert sorted(hostvars) == sorted(selected)
    for name in selected:
        argv = reaches[name].shell().argv
        v = hostvars[name]
        assert argv[-1] == f"{v['ansible_user']}@{v['ansible_host']}", (name, argv, v)
        assert ("-p" in argv) == ("ansible_port" in v) and (v.get("ansible_port") is None or argv[argv.index("-p") + 1] == str(v["ansible_port"]))
        assert reaches[name].become == bool(v.get("ansible_become"))


@pytest.mark.parametrize(
    "limit, expected",
    [
        (None, ["lb", "relay1", "relay2", "relay3", "core"]),
        ("relays", ["relay1", "relay2", "relay3"]),
        ("relay1,core", ["relay1", "core"]),
        ("core:relay1", ["relay1", "core"]),
        ("all:!lb", ["relay1", "relay2", "relay3", "core"]),
        ("relays:!relay2", ["relay1", "relay3"]),
        ("relay*", ["relay1", "relay2", "relay3"]),
        ("~relay[13]", ["relay1", "relay3"]),
        ("relays:&relay2,core", ["relay2"]),
        ("balancers,cores", ["lb", "core"]),
    ],
)
def test_the_limit_grammar(limit, expected):
    assert [h.name for h in hosts.select(load_inventory(CONNECTIONS), limit)] == expected


@pytest.mark.parametrize("command", [["maps"], ["drift"], ["deploy"], ["verify", "--probe-from", "docker://nowhere"]])
def test_a_limit_that_matches_nothing_is_refused_by_every_command(command):
    result = mailforge(*command, str(CONNECTIONS), "--limit", "relays,relay9")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--limit: 'relay9' matches no host or group of the inventory" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_hosts_yml_is_named(tmp_path):
    directory = tmp_path / "broken"
    shutil.copytree(CONNECTIONS, directory)
    (directory / "hosts.yml").write_text("all: [this, is, not, an, inventory\n")
    result = mailforge("drift", str(directory))
    assert result.returncode == 2 and f"{directory / 'hosts.yml'}" in result.stderr, result.stderr


def test_a_host_the_topology_does_not_have_is_named(with_hosts_yml):
    """A misspelt name in hosts.yml would leave its host reached by the topology's settings alone: say so."""
    (with_hosts_yml / "hosts.yml").write_text(HOSTS_YML + "    balancers:\n      hosts:\n        lb2: {ansible_host: 192.0.2.99}\n")
    said: list[str] = []
    reaches = hosts.reach_all(load_inventory(with_hosts_yml), warn=said.append)
    assert said == [f"{with_hosts_yml / 'hosts.yml'}: lb2 is not a host of the topology (hosts: lb, relay1, relay2, relay3, core); its settings are not used"]
    assert reaches["lb"].target == "10.232.9.10"
    result = mailforge("maps", str(with_hosts_yml), "--limit", "nosuch")  # the CLI prints it as a warning, then refuses the limit
    assert "warning: " in result.stderr and "lb2 is not a host of the topology" in result.stderr, result.stderr


def test_lab_does_not_read_hosts_yml(tmp_path):
    from mailforge import lab

    directory = tmp_path / "broken"
    shutil.copytree(CONNECTIONS, directory)
    (directory / "hosts.yml").write_text("all: [this, is, not, an, inventory\n")
    inventory = load_inventory(directory)
    with pytest.raises(hosts.HostsError):
        hosts.reach_all(inventory)
    assert hosts.reach_all(inventory, lab=lab.reaches(inventory))["relay1"].settings["user"] == lab.ADMIN_USER


# --- commands that need no recipients never read them --------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ldap_down(tmp_path) -> Path:
    """The example with its recipients in an LDAP directory that does not answer."""
    directory = tmp_path / "ldapdown"
    directory.mkdir()
    text = (EXAMPLE / "topology.yml").read_text().replace("cluster: example", "cluster: ldapdown")
    start, end = text.index("recipients:"), text.index("load_balancers:")
    text = (
        text[:start]
        + f"recipients:\n  ldap:\n    uri: ldap://127.0.0.1:{closed_port()}\n    base: ou=people,dc=example,dc=com\n    timeout: 2\n\n"
        + text[end:]
    )
    (directory / "topology.yml").write_text(text)
    return directory


def test_dns_zone_works_while_the_directory_is_down(ldap_down):
    refused = mailforge("validate", str(ldap_down))
    assert refused.returncode == 2 and "recipients.ldap" in refused.stderr, refused.stderr  # it really is down
    zone = mailforge("dns", "zone", str(ldap_down))
    assert zone.returncode == 0, zone.stderr
    example = mailforge("dns", "zone", str(EXAMPLE))

    def same_records(text: str) -> str:
        """Without the DANE and DKIM lines, spacing aside: each cluster has its own TLS and DKIM store, so its own MX key and DKIM selectors."""
        notes = ("no live MX key", "live key's record")
        return "\n".join(
            " ".join(line.split())  # the columns are as wide as the longest name, a DKIM selector's among them
            for line in text.splitlines()
            if " TLSA " not in line and "._domainkey." not in line and line != ";" and not any(n in line for n in notes)
        )

    assert " TLSA 3 1 1 " in zone.stdout
    assert same_records(zone.stdout) == same_records(example.stdout.replace("cluster 'example'", "cluster 'ldapdown'"))
    as_json = mailforge("dns", "zone", str(ldap_down), "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["summary"]["zone_text"] == zone.stdout


@pytest.mark.lab
@pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they need the container engine)")
def test_lab_down_and_status_work_while_the_directory_is_down(ldap_down):
    status = mailforge("lab", "status", str(ldap_down), "--json")
    assert status.returncode == 1, status.stderr  # nothing runs for this cluster: every container absent
    envelope = json.loads(status.stdout)
    assert envelope["command"] == "lab status" and {r["status"] for r in json.loads(status.stdout)["hosts"]["relay1"]["results"]} == {"absent"}
    assert "ldap" not in status.stderr.lower()
    down = mailforge("lab", "down", str(ldap_down))
    assert down.returncode == 0 and "removed 0: nothing of this lab was there" in down.stdout, down.stderr


# --- the lab: a hosts.yml that reaches the example's containers, and --limit relays -----------------

LAB_HOSTS_YML = """\
# Every host reached through its lab container by Ansible's docker connection: no --lab anywhere.
all:
  vars:
    ansible_connection: community.docker.docker
    ansible_docker_timeout: 60
  hosts:
    lb: {ansible_host: mf-example-lb}
    relay1: {ansible_host: mf-example-relay1}
    relay2: {ansible_host: mf-example-relay2}
    core: {ansible_host: mf-example-core}
"""


@pytest.mark.lab
@pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they start containers)")
def test_deploy_maps_drift_and_verify_reach_the_same_hosts(lab, tmp_path):
    """With the same hosts.yml and --limit relays, each command covers exactly relay1 and relay2, and
    reaches them the way hosts.yml says (the topology alone would mean SSH to addresses where no sshd runs)."""
    from conftest import engine_env

    directory = tmp_path / "example"
    shutil.copytree(EXAMPLE, directory, ignore=shutil.ignore_patterns(".mailforge"))
    (directory / "hosts.yml").write_text(LAB_HOSTS_YML)
    env = engine_env()

    def run(*args: str) -> dict:
        result = subprocess.run(
            [str(REPO / ".venv" / "bin" / "mailforge"), *args, str(directory), "--limit", "relays", "--json"],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return json.loads(result.stdout)

    relays = {"relay1", "relay2"}
    deployed = run("deploy", "--check")
    assert set(deployed["hosts"]) == relays and deployed["summary"]["totals"]["changed"] == 0
    drifted = run("drift")
    assert set(drifted["hosts"]) == relays and drifted["status"] == "ok"
    mapped = run("maps", "--check")
    assert set(mapped["hosts"]) == relays and mapped["summary"]["changed"] is False
    verified = run("verify", "--probe-from", "docker://mf-example-client", "--wait", "20")
    assert set(verified["hosts"]) == relays | {"probe"}, verified["hosts"].keys()
    assert verified["status"] == "ok"


@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_each_host_s_instances_are_the_ones_rendered(name):
    """The host model's answer to "which Postfix instances does this host run" is what render writes."""
    inventory = load_inventory(INVENTORIES[name])
    tree = render(inventory)
    rendered = {host: sorted({f.config_directory for f in files.values() if f.config_directory}) for host, files in tree.items()}
    assert {h.name: sorted(h.instances) for h in inventory.hosts} == rendered


# --- what every command says when a host cannot be reached (before it does anything) -----------------


@pytest.mark.parametrize(
    ("command", "host", "says"),
    [
        ("deploy", "127.0.0.1", "nothing accepts SSH on 127.0.0.1 port {port}"),
        ("drift", "127.0.0.1", "nothing accepts SSH on 127.0.0.1 port {port}"),
        ("maps", "no-such-host.invalid", "the name no-such-host.invalid does not resolve"),
        ("deploy", "no-such-host.invalid", "the name no-such-host.invalid does not resolve"),
    ],
)
def test_a_host_that_cannot_be_reached_is_named_with_what_to_do(tmp_path, command, host, says):
    port = closed_port()
    directory = tmp_path / "cut-off"
    shutil.copytree(EXAMPLE, directory, ignore=shutil.ignore_patterns(".mailforge"))
    topology = directory / "topology.yml"
    topology.write_text(topology.read_text() + f"\nconnection:\n  host: {host}\n  port: {port}\n  user: admin\n  become: true\n")
    result = mailforge(command, str(directory))
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    for name in ("lb", "relay1", "relay2", "core"):  # every host at once, not only the first
        assert f"cannot reach {name}: {says.format(port=port)}" in message, message
    assert "Traceback" not in result.stderr and "Deploy summary" not in result.stdout


def test_a_command_handed_to_a_master_connection_that_just_ended_is_asked_again(tmp_path, monkeypatch):
    """ssh's shared master connection (ControlPersist) can end just as a command is handed to it: ssh
    exits 255 with a mux error though the host answers. The command is run once more; a host that
    refuses twice is unreachable, named."""
    from mailforge.remote import HostShell, HostUnreachable

    marker = tmp_path / "seen"
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text(
        "#!/bin/sh\n"
        f'if [ ! -e {marker} ]; then touch {marker}; echo "mux_client_request_session: read from master failed: Broken pipe" >&2; exit 255; fi\n'
        'shift; exec "$@"\n'
    )
    fake_ssh.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    shell = HostShell("relay1", ["ssh", "mailforge@relay1"])
    assert shell.run("echo answered").stdout == b"answered\n"
    fake_ssh.write_text('#!/bin/sh\necho "mux_client_request_session: read from master failed: Broken pipe" >&2\nexit 255\n')
    with pytest.raises(HostUnreachable, match="relay1"):
        shell.run("true")


def test_ansible_retries_ssh_unless_the_configuration_says_otherwise(tmp_path, monkeypatch):
    from mailforge.ansible_env import SSH_RETRIES, ansible_settings

    monkeypatch.delenv("ANSIBLE_SSH_RETRIES", raising=False)
    monkeypatch.delenv("ANSIBLE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    inventory = tmp_path / "inv"
    inventory.mkdir()
    env, _ = ansible_settings(inventory)
    assert env["ANSIBLE_SSH_RETRIES"] == SSH_RETRIES
    (inventory / "ansible.cfg").write_text("[ssh_connection]\nretries = 0\n")
    env, cfg = ansible_settings(inventory)
    assert cfg == (inventory / "ansible.cfg").resolve() and "ANSIBLE_SSH_RETRIES" not in env
