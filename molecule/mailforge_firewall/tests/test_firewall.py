"""mailforge_firewall: the rules rendered for this host are on disk, byte for byte, and loaded live."""

import hashlib
import os
from pathlib import Path

import pytest
import yaml

HOST = "relay"  # mailforge_host in molecule.yml
RENDER = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "render"
DEFAULTS = yaml.safe_load((Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "roles/mailforge_firewall/defaults/main.yml").read_text())

FAMILIES = [("/etc/iptables/rules.v4", "iptables")]
if DEFAULTS["mailforge_firewall_ipv6"]:
    FAMILIES.append(("/etc/iptables/rules.v6", "ip6tables"))


def manifest():
    import json
    return json.loads((RENDER / "manifest.json").read_text())["hosts"][HOST]["files"]


def rule_lines(text):
    """The -A rules of the filter table, in order, as iptables -S prints them.

    iptables prints a conntrack state list in its own order (RELATED,ESTABLISHED): compare the
    states as a set, everything else verbatim.
    """
    rules = []
    for line in text.splitlines():
        if not line.startswith("-A "):
            continue
        words = line.split()
        for i, word in enumerate(words[:-1]):
            if word in ("--ctstate", "--state"):
                words[i + 1] = ",".join(sorted(words[i + 1].split(",")))
        rules.append(" ".join(words))
    return rules


@pytest.mark.parametrize("path,command", FAMILIES)
def test_rules_file_on_disk_is_the_rendered_one(host, path, command):
    meta = manifest()[path]
    rendered = (RENDER / HOST / path.lstrip("/")).read_bytes()
    assert hashlib.sha256(rendered).hexdigest() == meta["sha256"]
    live = host.file(path)
    assert live.is_file and not live.is_symlink
    assert live.content == rendered
    assert (live.user, live.group, live.mode) == (meta["owner"], meta["group"], int(meta["mode"], 8))


@pytest.mark.parametrize("path,command", FAMILIES)
def test_rendered_rules_are_loaded_live(host, path, command):
    rendered = rule_lines((RENDER / HOST / path.lstrip("/")).read_text())
    assert any("mailforge:" in line for line in rendered), "the rendered rules carry no mailforge comment?"
    live = host.run(f"{command} -S")
    assert live.rc == 0, live.stderr
    assert rule_lines(live.stdout) == rendered
    policies = [line for line in live.stdout.splitlines() if line.startswith("-P ")]
    assert "-P INPUT DROP" in policies
    assert "-P FORWARD DROP" in policies


def test_packages_installed(host):
    for name in DEFAULTS["mailforge_firewall_packages"]:
        assert host.package(name).is_installed, name


def test_no_autosave_questions_pending(host):
    # the role answers iptables-persistent's questions: no save of the live rules over ours at install
    out = host.run("debconf-show iptables-persistent").stdout
    assert "autosave_v4: false" in out
