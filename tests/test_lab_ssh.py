"""The path real hosts take, on the example lab: SSH as a non-root admin user with sudo, host keys
checked, and what happens when any of that is wrong (exit 2, a message that says what to do, nothing
applied), and the guard that keeps a deploy from locking its controller out.

The lab's hosts are reached here without `--lab`, with the topology's own `connection:` keys written as
a mail admin writes them for real hosts: only the key, the known_hosts file and the user differ from
case to case. Runs when MAILFORGE_LAB=1, on the session's lab (conftest.lab).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLE, in_container, mailforge, rows

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they start containers)"),
]


def lab_keys():
    from mailforge import lab as lab_module
    from mailforge.inventory import load_topology

    return lab_module.keys(load_topology(EXAMPLE))


def real_host_copy(tmp_path: Path, name: str = "real", *, extra: str = "", **connection: object) -> Path:
    """A copy of the example that reaches the lab's hosts as real hosts are reached: topology.yml's own
    `connection:` (the lab's admin user with sudo, its key and known_hosts unless overridden)."""
    keys = lab_keys()
    settings = {"user": "mailforge", "become": True, "private_key_file": str(keys.private_key), "known_hosts_file": str(keys.known_hosts), **connection}
    directory = tmp_path / name
    shutil.copytree(EXAMPLE, directory, ignore=shutil.ignore_patterns(".mailforge"))
    topology = directory / "topology.yml"
    lines = "".join(f"  {key}: {json.dumps(value)}\n" for key, value in settings.items())
    topology.write_text(topology.read_text() + extra + "\nconnection:\n" + lines)
    return directory


def test_every_command_reaches_the_hosts_over_ssh_as_a_sudo_user(lab, tmp_path):
    """deploy, drift, maps and verify, with nothing but topology.yml's connection keys: each passes, and
    the hosts' own logs show the SSH login of the admin user and its sudo."""
    inventory = real_host_copy(tmp_path)
    keys = lab_keys()
    mark = len(in_container("relay1", "cat /var/log/auth.log"))
    deploy = mailforge("deploy", str(inventory), "--json")
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert json.loads(deploy.stdout)["summary"]["totals"]["changed"] == 0
    drift = mailforge("drift", str(inventory), "--json")
    assert drift.returncode == 0, drift.stdout + drift.stderr
    maps = mailforge("maps", str(inventory), "--json")
    assert maps.returncode == 0, maps.stdout + maps.stderr
    probe = f"ssh://mailforge@10.232.0.200?ssh_identity_file={keys.private_key}&known_hosts_file={keys.known_hosts}"
    verify = mailforge("verify", str(inventory), "--probe-from", probe, "--json", "--wait", "30")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert all(r["ok"] for r in rows(json.loads(verify.stdout)))
    auth = in_container("relay1", "cat /var/log/auth.log")
    # the login (perhaps by an earlier command: one master connection per host is kept for a minute)
    assert "Accepted publickey for mailforge from 10.232.0.1" in auth, auth[-2000:]
    assert "for root from" not in auth  # nobody ever logged in as root
    # sudo's own record of what this test's commands ran as root (drift's survey, verify's log search)
    since = auth[mark:]
    assert "sudo: mailforge : PWD=/home/mailforge ; USER=root ; COMMAND=/usr/bin/sh -c" in since and "CONNECT from [10.232.0.200]" in since, since[-2000:]


def relay1_rules() -> str:
    return in_container("relay1", "sha256sum /etc/iptables/rules.v4 /etc/postfix/main.cf")


@pytest.mark.parametrize("command", ["deploy", "drift", "maps", "verify"])
def test_an_unknown_host_key_stops_every_command_before_it_acts(lab, tmp_path, command):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    inventory = real_host_copy(tmp_path, known_hosts_file=str(empty))
    before = relay1_rules()
    args = [command, str(inventory)] + (["--probe-from", "ssh://mailforge@10.232.0.200"] if command == "verify" else [])
    result = mailforge(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "host key is not known" in message and f"not in {empty}" in message and "ssh-keyscan -p 22 10.232.0.21" in message, message
    assert "Traceback" not in result.stderr and "Deploy summary" not in result.stdout
    assert relay1_rules() == before


def test_a_changed_host_key_stops_deploy(lab, tmp_path):
    keys = lab_keys()
    forged = tmp_path / "other-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(forged)], check=True)
    other = forged.with_suffix(".pub").read_text().split()
    lines = [line for line in keys.known_hosts.read_text().splitlines() if not line.startswith("10.232.0.21 ")]
    known = tmp_path / "known_hosts"
    known.write_text("\n".join([*lines, f"10.232.0.21 {other[0]} {other[1]}"]) + "\n")
    inventory = real_host_copy(tmp_path, known_hosts_file=str(known))
    before = relay1_rules()
    result = mailforge("deploy", str(inventory))
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "relay1" in message and "host key has CHANGED" in message and f"ssh-keygen -R '10.232.0.21' -f {known}" in message, message
    assert "relay2" not in message  # only the host whose key changed is named
    assert relay1_rules() == before


def test_a_wrong_key_stops_deploy(lab, tmp_path):
    wrong = tmp_path / "wrong-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    inventory = real_host_copy(tmp_path, private_key_file=str(wrong))
    result = mailforge("deploy", str(inventory))
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "mailforge@10.232.0.21 refused the login" in message and str(wrong) in message, message
    assert "Traceback" not in result.stderr


def test_a_user_without_sudo_stops_deploy(lab, tmp_path):
    public = lab_keys().public_key.read_text()
    for host in ("lb", "relay1", "relay2", "core"):
        in_container(
            host,
            "id -u plain >/dev/null 2>&1 || useradd -m -s /bin/sh plain; install -d -m 700 -o plain -g plain /home/plain/.ssh; "
            "cat > /home/plain/.ssh/authorized_keys; chown plain:plain /home/plain/.ssh/authorized_keys",
            stdin=public,
        )
    inventory = real_host_copy(tmp_path, user="plain")
    result = mailforge("deploy", str(inventory))
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "plain@10.232.0.21 may not use sudo without a password" in message and "plain ALL=(ALL) NOPASSWD: ALL" in message, message
    assert "Deploy summary" not in result.stdout


def test_a_deploy_that_would_lock_out_its_controller_is_refused(lab, tmp_path):
    """The rendered firewall would admit SSH only from the user network: the controller (10.232.0.1 as
    the hosts see it) would be shut out after the first host's firewall loads. Nothing is applied."""
    inventory = real_host_copy(tmp_path)
    topology = inventory / "topology.yml"
    topology.write_text(topology.read_text().replace("admin_networks: [10.232.0.0/24]", "admin_networks: [10.232.0.128/26]"))
    before = relay1_rules()
    result = mailforge("deploy", str(inventory))
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "would lock mailforge out" in message and "relay1 sees this controller's SSH connection come from 10.232.0.1 to port 22" in message, message
    assert "firewall.admin_networks" in message and str(topology) in message and "Nothing was applied" in message
    assert relay1_rules() == before
    # the same inventory with the controller's address admitted deploys (and changes the walls as asked)
    topology.write_text(topology.read_text().replace("admin_networks: [10.232.0.128/26]", "admin_networks: [10.232.0.128/26, 10.232.0.1/32]"))
    check = mailforge("deploy", str(inventory), "--check")
    assert check.returncode == 0, check.stdout + check.stderr
