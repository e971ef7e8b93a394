"""Molecule's cluster scenario is the lab: same containers, names, addresses, images, network and DNS.

If the two drifted apart, `mailforge verify --lab` in the scenario would probe containers
Molecule never made. The scenario's inventory is the shipped example with some hosts on Debian 12,
so the scenario covers both releases; it must stay the example otherwise. No containers are started here.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import REPO

from mailforge import lab
from mailforge.inventory import load_inventory
from mailforge.inventory.releases import RELEASES
from mailforge.resources import ROLES, role_dir

SCENARIOS = REPO / "molecule"
CLUSTER_INVENTORY = SCENARIOS / "cluster" / "inventory"


def _platforms() -> list[dict]:
    return yaml.safe_load((SCENARIOS / "cluster" / "molecule.yml").read_text())["platforms"]


def test_cluster_platforms_are_the_lab_containers():
    plan = lab.plan(load_inventory(CLUSTER_INVENTORY))
    dns = plan.by_host("dns").address
    expected = {c.name: (c.hostname, c.address, c.image) for c in plan.containers}
    got = {}
    for p in _platforms():
        [network] = p["networks"]
        assert network["name"] == plan.network, p["name"]
        assert p["dns_servers"] == [dns], p["name"]
        assert p["pre_build_image"] is True
        assert {"NET_ADMIN", "NET_RAW"} <= set(p["capabilities"]), p["name"]
        got[p["name"]] = (p["hostname"], network["ipv4_address"], p["image"])
    assert got == expected


def test_cluster_network_is_the_lab_network():
    networks = [n for p in _platforms() for n in p.get("docker_networks", [])]
    plan = lab.plan(load_inventory(CLUSTER_INVENTORY))
    assert [(n["name"], n["ipam_config"][0]["subnet"]) for n in networks] == [(plan.network, plan.subnet)]


def _converged_roles(scenario: Path) -> set[str]:
    """Every role a role scenario's converge.yml runs: the roles it names and, transitively, their meta dependencies."""
    named = [r["role"] if isinstance(r, dict) else r for play in yaml.safe_load((scenario / "converge.yml").read_text()) for r in play.get("roles", [])]
    todo, seen = [role_dir(r).name for r in named], set()
    while todo:
        role = todo.pop()
        if role not in seen:
            seen.add(role)
            meta = yaml.safe_load((ROLES / role / "meta" / "main.yml").read_text()) or {}
            todo += [role_dir(d["role"] if isinstance(d, dict) else d).name for d in meta.get("dependencies", [])]
    return seen


def test_every_role_is_converged_and_tested_by_a_scenario():
    """A role counts as covered only where one scenario both converges it and verifies it.

    Role scenarios share converges (mailforge_core also runs base, firewall and postfix as meta
    dependencies), so a role's testinfra tests live in a scenario that converges it:
    `molecule/<scenario>/tests/test_<role without mailforge_>.py`. A converged role nobody tests, or
    a test file in a scenario that does not converge its role, leaves the role uncovered.
    """
    roles = sorted(p.name for p in ROLES.iterdir() if (p / "tasks" / "main.yml").is_file())
    covered: dict[str, list[str]] = {}
    for scenario in sorted(SCENARIOS.glob("mailforge_*/molecule.yml")):
        converged = _converged_roles(scenario.parent)
        for test in sorted((scenario.parent / "tests").glob("test_*.py")):
            role = "mailforge_" + test.stem.removeprefix("test_")
            assert role in converged, f"{test.relative_to(REPO)} tests {role}, which the scenario does not converge ({sorted(converged)})"
            covered.setdefault(role, []).append(scenario.parent.name)
    missing = [role for role in roles if role not in covered]
    assert not missing, f"roles no scenario both converges and tests (add molecule/<scenario>/tests/test_<role>.py): {missing}"


def test_cluster_instances_carry_the_labels_lab_up_adopts():
    """`lab up --no-deploy` adopts only what is labelled with its inventory's directory (see lab.clashes):
    Molecule's instances and network carry the labels `lab up` itself would give them, once Molecule has
    put its project directory in (it runs from the repository)."""
    plan = lab.plan(load_inventory(REPO / "molecule" / "cluster" / "inventory"))

    def filled(labels: dict) -> dict:
        return {key: str(value).replace("${MOLECULE_PROJECT_DIRECTORY}", str(REPO)) for key, value in labels.items()}

    def wanted(args: list[str]) -> dict:
        return dict(value.split("=", 1) for value in args[1::2])

    by_name = {c.name: c for c in plan.containers}
    for p in _platforms():
        assert filled(p["labels"]) == wanted(plan.labels(by_name[p["name"]].host)), p["name"]
    [network] = [n for p in _platforms() for n in p.get("docker_networks", [])]
    assert filled(network["labels"]) == wanted(plan.labels())
    found = [lab.Found("container", p["name"], filled(p["labels"])) for p in _platforms()]
    assert lab.clashes(plan, found + [lab.Found("network", plan.network, filled(network["labels"]), (plan.subnet,))]) == []


def test_cluster_runs_both_debian_releases():
    images = {p["image"] for p in _platforms()}
    assert images == {lab.image_of(codename) for codename in RELEASES}, images


def test_cluster_inventory_is_the_example_apart_from_debian_release():
    """The scenario deploys the shipped example; only the hosts' releases differ."""

    def without_releases(value):
        if isinstance(value, dict):
            return {k: without_releases(v) for k, v in value.items() if k != "debian_release"}
        if isinstance(value, list):
            return [without_releases(v) for v in value]
        return value

    example, scenario = load_inventory(REPO / "inventories" / "example"), load_inventory(CLUSTER_INVENTORY)
    assert without_releases(scenario.topology.model_dump()) == without_releases(example.topology.model_dump())
    assert scenario.recipients == example.recipients
    assert {h.debian_release.codename for h in example.hosts} == {"trixie"}  # the README's cluster: Debian 13
    assert {h.debian_release.codename for h in scenario.hosts} == set(RELEASES)


def test_every_role_scenario_runs_on_every_release():
    """Each role scenario converges and verifies its host on Debian 13 and on Debian 12 at once."""
    for path in sorted(SCENARIOS.glob("mailforge_*/molecule.yml")):
        platforms = yaml.safe_load(path.read_text())["platforms"]
        assert {p["image"] for p in platforms} == {lab.image_of(codename) for codename in RELEASES}, path
