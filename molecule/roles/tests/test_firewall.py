"""mailforge_firewall, verified on the relay (a meta dependency of mailforge_relay): the rules rendered for this host are on disk, byte for byte, and loaded live."""

import pytest
from host_checks import RENDER, assert_live_file_is_rendered, role_defaults

testinfra_hosts = ["ansible://relays"]  # the instances that converge this role (molecule.yml)

HOST = "relay"  # mailforge_host in molecule.yml
DEFAULTS = role_defaults("mailforge_firewall")

FAMILIES = [("/etc/iptables/rules.v4", "iptables")]
if DEFAULTS["mailforge_firewall_ipv6"]:
    FAMILIES.append(("/etc/iptables/rules.v6", "ip6tables"))


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
    assert_live_file_is_rendered(host, HOST, path)


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
