"""mailforge as a user installs it: the wheel in a fresh virtualenv outside the repository, every
command run from a directory outside it on a copy of the example (fixtures `wheel` and
`installed_mailforge` in conftest.py; about 20 s, most of it pip).

What would break for such a user and not for a developer's editable install: a file the package
does not carry (the collection, templates, the lab's scripts, the Postfix parameter list), a path
computed from the source tree, a dependency only the test extra brings in.
"""

from __future__ import annotations

import filecmp
import json
import re
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import INVENTORIES, MAILFORGE, REPO, failing_example, outside_env, rows

EXAMPLE = INVENTORIES["example"]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
BROKEN = ("Traceback", "FileNotFoundError", "internal error", "missing", "source tree")


@pytest.fixture
def outside(tmp_path) -> Path:
    """A working directory outside the repository holding a copy of the example inventory (`example/`)."""
    shutil.copytree(EXAMPLE, tmp_path / "example", ignore=shutil.ignore_patterns(".mailforge"))
    return tmp_path


def run(mailforge: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(mailforge), *args], cwd=cwd, env=outside_env(**env), capture_output=True, text=True, timeout=600)


def unreachable(directory: Path) -> Path:
    """The copied example with every host reached by SSH at a closed port of this machine."""
    topology = directory / "example" / "topology.yml"
    topology.write_text(topology.read_text() + "\nconnection:\n  host: 127.0.0.1\n  port: 1\n")
    return directory / "example"


def test_the_wheel_carries_the_collection_the_lab_scripts_and_the_licence(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    collection = "mailforge/ansible_collections/mailforge/cluster/"
    for path in (
        "galaxy.yml",
        "meta/runtime.yml",
        "playbooks/site.yml",
        "roles/mailforge_postfix/tasks/instance.yml",
        "roles/mailforge_relay/meta/argument_specs.yml",
    ):
        assert collection + path in names, path
    assert {"mailforge/data/lab/container-engine", "mailforge/data/lab/lab-image", "mailforge/templates/etc/postfix/main.cf.j2"} <= names
    assert f"mailforge-{VERSION}.dist-info/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"mailforge-{VERSION}.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata and "Project-URL: Source, " in metadata
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
    # lean: ansible-core, not the 470 MB ansible bundle, unless the docker extra is asked for
    assert any(line.startswith("ansible-core>=") and "extra" not in line for line in requires), requires
    assert [line for line in requires if re.match(r"ansible[<>=;]", line)] == ['ansible>=9; extra == "docker"']


def test_version(installed_mailforge, tmp_path):
    result = run(installed_mailforge, "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"mailforge {VERSION} (ansible-core "), result.stdout
    # the collection ships with the package and carries its version
    galaxy = yaml.safe_load((REPO / "mailforge/ansible_collections/mailforge/cluster/galaxy.yml").read_text())
    assert galaxy["version"] == VERSION


def test_validate_render_and_dns_zone_from_another_directory(installed_mailforge, outside, rendered):
    validated = run(installed_mailforge, "validate", "example", cwd=outside)
    assert validated.returncode == 0 and validated.stdout.startswith("valid: example/topology.yml"), validated.stdout + validated.stderr

    rendered_here = run(installed_mailforge, "render", "example", "-o", "out", cwd=outside)
    assert rendered_here.returncode == 0, rendered_here.stderr
    # byte for byte what the source tree renders for the same inventory
    source = rendered("example")
    compared = filecmp.dircmp(source, outside / "out")
    differing = []

    def walk(cmp: filecmp.dircmp, prefix: str = "") -> None:
        differing.extend(prefix + name for name in cmp.left_only + cmp.right_only + cmp.funny_files)
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
        differing.extend(prefix + name for name in mismatch + errors)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(compared)
    assert differing == [], differing
    assert len(json.loads((outside / "out" / "manifest.json").read_text())["hosts"]) == 4

    zone = run(installed_mailforge, "dns", "zone", "example", cwd=outside)
    source_zone = subprocess.run([str(MAILFORGE), "dns", "zone", str(EXAMPLE)], capture_output=True, text=True, timeout=120)
    assert zone.returncode == 0 and zone.stdout == source_zone.stdout, zone.stderr


def test_deploy_check_reaches_the_playbook(installed_mailforge, outside):
    """The installed collection is found: Ansible starts the playbook's first play and fails only at
    the host, where no module can run (exit 1, the host named, the whole log kept)."""
    inventory = failing_example(outside)
    state = outside / "state"
    result = run(installed_mailforge, "deploy", "--check", "--json", str(inventory), cwd=outside, XDG_STATE_HOME=str(state))
    assert result.returncode == 1, result.stdout + result.stderr
    envelope = json.loads(result.stdout)
    [core] = [r for r in rows(envelope) if r["host"] == "core"]  # the cores' play comes first
    assert not core["ok"] and "ansible.legacy.setup" in core["detail"], envelope
    assert not any(word in result.stderr for word in BROKEN), result.stderr
    log = Path(envelope["summary"]["log"])
    assert log.parent == state / "mailforge" / "runs"
    text = log.read_text()
    assert "PLAY [Cores first, so the relays have somewhere to forward to]" in text
    assert "fatal: [core]: FAILED!" in text and "The module interpreter '/nonexistent/python3' was not found" in text
    assert "role 'mailforge.cluster" not in text  # the collection's roles were found


def test_drift_from_another_directory_names_the_unreachable_hosts(installed_mailforge, outside):
    """drift reads the roles' package lists from the installed collection (it once ended in
    FileNotFoundError outside the source tree)."""
    result = run(installed_mailforge, "drift", str(unreachable(outside)), "--limit", "relay1", cwd=outside)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot reach relay1" in result.stderr
    assert not any(word in result.stderr for word in BROKEN), result.stderr


def test_the_docker_connection_needs_the_docker_extra(installed_mailforge, outside):
    """Without the `ansible` bundle there is no community.docker: asking for Ansible's docker
    connection is refused before anything runs, saying what to install."""
    hosts = {"all": {"vars": {"ansible_connection": "community.docker.docker"}, "hosts": {name: None for name in ("lb", "relay1", "relay2", "core")}}}
    (outside / "example" / "hosts.yml").write_text(yaml.safe_dump(hosts))
    result = run(installed_mailforge, "deploy", "--check", "example", cwd=outside)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "lb, relay1, relay2, core are reached with Ansible's docker connection (community.docker.docker), which is not installed" in result.stderr
    assert "mailforge[docker]" in result.stderr
    assert "Traceback" not in result.stderr


def test_shell_completion(installed_mailforge, tmp_path):
    script = run(installed_mailforge, "--show-completion", "bash", cwd=tmp_path)
    assert script.returncode == 0 and "_MAILFORGE_COMPLETE=complete_bash" in script.stdout, script.stdout + script.stderr
    words = run(installed_mailforge, cwd=tmp_path, COMP_WORDS="mailforge lab ", COMP_CWORD="2", _MAILFORGE_COMPLETE="complete_bash")
    assert words.stdout.split() == ["up", "down", "status"], words.stdout + words.stderr
