"""`mailforge deploy` runs Ansible as an Ansible user expects: the ansible.cfg beside the topology is
honoured (and $ANSIBLE_CONFIG over it), -v shows Ansible's own output, and a failed run's whole log
is kept and named. Real ansible-playbook runs of the shipped playbook against the example, whose
hosts all answer (Ansible's local connection) but can run no module (conftest.failing_example): each
run fails at its first host in about 2 s, after Ansible has read its configuration and started the playbook.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import MAILFORGE, failing_example

FIRST_PLAY = "PLAY [Cores first, so the relays have somewhere to forward to]"


def deploy(inventory: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("ANSIBLE_CONFIG", "MAILFORGE_DEBUG", "FORCE_COLOR")}
    environment.setdefault("XDG_STATE_HOME", str(cwd / "state"))
    environment.update(env)
    return subprocess.run([str(MAILFORGE), "deploy", str(inventory), "--check", *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


@pytest.fixture
def inventory(tmp_path) -> Path:
    return failing_example(tmp_path)


def test_the_ansible_cfg_beside_the_topology_is_honoured(inventory, tmp_path):
    """Its log_path takes effect, and its `pipelining = False` wins over mailforge's own default
    (pipelining on), which holds again once the file is gone. Run from another directory: the file
    is found beside topology.yml, not in the current directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (inventory / "ansible.cfg").write_text(f"[defaults]\nlog_path = {tmp_path / 'ansible.log'}\n\n[connection]\npipelining = False\n")
    result = deploy(inventory, "-vvv", cwd=elsewhere)
    assert result.returncode == 1, result.stderr
    assert f"config file = {inventory / 'ansible.cfg'}" in result.stdout
    assert FIRST_PLAY in (tmp_path / "ansible.log").read_text()
    assert "Pipelining is enabled." not in result.stdout

    (inventory / "ansible.cfg").unlink()
    result = deploy(inventory, "-vvv", cwd=elsewhere)
    assert result.returncode == 1, result.stderr
    assert "Pipelining is enabled." in result.stdout


def test_ansible_config_names_the_file_over_the_one_beside_the_topology(inventory, tmp_path):
    (inventory / "ansible.cfg").write_text(f"[defaults]\nlog_path = {tmp_path / 'beside.log'}\n")
    named = tmp_path / "named.cfg"
    named.write_text(f"[defaults]\nlog_path = {tmp_path / 'named.log'}\n")
    result = deploy(inventory, cwd=tmp_path, ANSIBLE_CONFIG=str(named))
    assert result.returncode == 1, result.stderr
    assert FIRST_PLAY in (tmp_path / "named.log").read_text()
    assert not (tmp_path / "beside.log").exists()


def test_a_world_writable_inventory_directory_has_its_ansible_cfg_refused(inventory, tmp_path):
    (inventory / "ansible.cfg").write_text("[defaults]\nforks = 1\n")
    inventory.chmod(0o777)
    result = deploy(inventory, cwd=tmp_path)
    assert result.returncode == 2
    assert f"error: {inventory / 'ansible.cfg'}: not used, because {inventory} is world-writable" in result.stderr
    assert f"chmod o-w {inventory}" in result.stderr and "Traceback" not in result.stderr


def test_verbosity_passes_to_ansible(inventory, tmp_path):
    quiet = deploy(inventory, cwd=tmp_path)
    assert FIRST_PLAY not in quiet.stdout and "ESTABLISH LOCAL CONNECTION" not in quiet.stdout
    one = deploy(inventory, "-v", cwd=tmp_path)
    assert FIRST_PLAY in one.stdout and "ESTABLISH LOCAL CONNECTION" not in one.stdout
    three = deploy(inventory, "-vvv", cwd=tmp_path)
    assert FIRST_PLAY in three.stdout and "ESTABLISH LOCAL CONNECTION FOR USER" in three.stdout
    # with --json, Ansible's output goes to stderr and stdout stays one envelope
    as_json = deploy(inventory, "-v", "--json", cwd=tmp_path)
    assert json.loads(as_json.stdout)["command"] == "deploy" and FIRST_PLAY in as_json.stderr


def test_a_failed_run_keeps_its_whole_log(inventory, tmp_path):
    result = deploy(inventory, "--json", cwd=tmp_path, XDG_STATE_HOME=str(tmp_path / "state"))
    assert result.returncode == 1
    path = Path(json.loads(result.stdout)["summary"]["log"])
    assert f"the whole Ansible log: {path}" in result.stderr
    assert path.parent == tmp_path / "state" / "mailforge" / "runs"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_text()
    assert text.startswith("# mailforge deploy: ansible-playbook --check ")
    assert FIRST_PLAY in text and "fatal: [core]: FAILED!" in text and "PLAY RECAP" in text

    # without XDG_STATE_HOME: ~/.local/state; a second failure never overwrites the first
    home = tmp_path / "home"
    env = {"HOME": str(home), "XDG_STATE_HOME": ""}
    first, second = deploy(inventory, cwd=tmp_path, **env), deploy(inventory, cwd=tmp_path, **env)
    logs = sorted((home / ".local" / "state" / "mailforge" / "runs").iterdir())
    assert len(logs) == 2, (first.stderr, second.stderr)


def test_a_run_that_fails_before_any_host_keeps_its_log_too(inventory, tmp_path):
    (inventory / "ansible.cfg").write_text("[defaults]\nstrategy = no_such_strategy\n")
    result = deploy(inventory, cwd=tmp_path)
    assert result.returncode == 2
    assert "error: ansible-playbook failed before reaching any host" in result.stderr
    [log] = (tmp_path / "state" / "mailforge" / "runs").iterdir()
    assert f"the whole Ansible log: {log}" in result.stderr
    assert "no_such_strategy" in log.read_text()
