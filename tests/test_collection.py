"""The Ansible collection mailforge.cluster as Ansible users meet it: ansible-doc shows its roles,
ansible-galaxy builds it, every role variable is documented once (defaults/main.yml and
meta/argument_specs.yml agree) and read by something, and what `mailforge deploy` hands the roles
passes their argument specs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import INVENTORIES, REPO

from mailforge.resources import COLLECTION, COLLECTIONS, ROLES

BIN = Path(sys.executable).parent
ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if (p / "tasks" / "main.yml").is_file())
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# Variables the roles read that no role defines: the loop variable of mailforge_postfix's instance
# loop, and the playbook's own extra variables that deploy sets: the batch size (--batch) and the
# rotation step around each relay batch (site.yml, documented there and in the collection's README).
NOT_ROLE_VARIABLES = {"mailforge_postfix_config_directory", "mailforge_relay_batch", "mailforge_rotation_command", "mailforge_rotation_relays"}


def spec(role: str) -> dict:
    return yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"] or {}


def defaults(role: str) -> dict:
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}


def task_texts() -> str:
    """Everything of the collection that can read a variable: tasks and playbooks."""
    files = [*COLLECTION.glob("roles/*/tasks/*.yml"), *COLLECTION.glob("playbooks/*.yml")]
    return "\n".join(f.read_text() for f in files)


def test_ansible_doc_lists_every_role_with_its_description():
    result = subprocess.run(
        [str(BIN / "ansible-doc"), "-t", "role", "-l", "mailforge.cluster", "--json"],
        env={"ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(Path.home())},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert sorted(listed) == [f"mailforge.cluster.{r}" for r in ROLE_NAMES]
    for name, entry in listed.items():
        assert entry["entry_points"]["main"], name  # the short_description of its argument spec


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_defaults_and_argument_specs_agree(role):
    options, values = spec(role), defaults(role)
    documented_defaults = {name: o["default"] for name, o in options.items() if "default" in o}
    assert values == documented_defaults, "defaults/main.yml and meta/argument_specs.yml disagree"
    for name, option in options.items():
        assert option.get("description"), f"{name} has no description"
        assert option.get("required") or "default" in option, f"{name}: neither required nor with a default"
        assert name.startswith(f"{role}_") or option.get("required"), f"{name}: a role variable carries the role's name"


def test_every_documented_variable_is_read_and_every_variable_read_is_documented():
    texts = task_texts()
    documented = {name for role in ROLE_NAMES for name in spec(role)}
    unread = sorted(name for name in documented if not re.search(rf"\b{name}\b", texts))
    assert unread == [], f"documented, but nothing reads them: {unread}"
    read = set(re.findall(r"(?<![\w.])(mailforge_\w+)", texts)) - set(ROLE_NAMES) - NOT_ROLE_VARIABLES
    assert sorted(read - documented) == [], "read by a task, documented in no argument spec"


@pytest.mark.parametrize("inventory_name", ["example", "mx-proxy"])
def test_what_deploy_hands_the_roles_passes_their_argument_specs(inventory_name, rendered):
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    from mailforge.deploy import ansible_inventory
    from mailforge.hosts import reach_all
    from mailforge.inventory import load_inventory

    inventory = load_inventory(INVENTORIES[inventory_name])
    out = rendered(inventory_name)
    manifest = json.loads((out / "manifest.json").read_text())
    groups = ansible_inventory(inventory, out, manifest, reach_all(inventory))["all"]["children"]
    checked = 0
    for group in groups.values():
        for host, hostvars in group["hosts"].items():
            for role in ROLE_NAMES:
                options = spec(role)
                params = {k: v for k, v in hostvars.items() if k in options}
                result = ArgumentSpecValidator(options).validate(params)
                assert not result.error_messages, (host, role, result.error_messages)
                checked += 1
    assert checked


def test_ansible_galaxy_builds_the_collection(tmp_path):
    result = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path), str(COLLECTION)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    archive = tmp_path / f"mailforge-cluster-{VERSION}.tar.gz"
    names = tarfile.open(archive).getnames()
    assert {"meta/runtime.yml", "playbooks/site.yml", "CHANGELOG.md"} <= set(names)
    assert {f"roles/{r}/meta/argument_specs.yml" for r in ROLE_NAMES} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
