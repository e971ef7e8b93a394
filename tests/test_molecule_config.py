"""Molecule's cluster scenario is the lab: same containers, names, addresses, images, network and DNS.

If the two drifted apart, `mailforge verify --lab` in the scenario would probe containers
Molecule never made. The scenario's inventory is the shipped example with some hosts on Debian 12,
so the scenario covers both releases; it must stay the example otherwise. No containers are started here.
"""

from __future__ import annotations

import ast
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


def _role_scenarios() -> list[Path]:
    """Every scenario directory but `cluster` (which runs `mailforge deploy`, not the roles one by one)."""
    return sorted(p.parent for p in SCENARIOS.glob("*/molecule.yml") if p.parent.name != "cluster")


def _with_dependencies(named: list[str]) -> set[str]:
    """The roles named and, transitively, their meta dependencies."""
    todo, seen = [role_dir(r).name for r in named], set()
    while todo:
        role = todo.pop()
        if role not in seen:
            seen.add(role)
            meta = yaml.safe_load((ROLES / role / "meta" / "main.yml").read_text()) or {}
            todo += [role_dir(d["role"] if isinstance(d, dict) else d).name for d in meta.get("dependencies", [])]
    return seen


def _converged_roles(scenario: Path) -> dict[str, set[str]]:
    """{instance: every role the scenario's converge.yml runs on it}: the roles its plays name and the
    instance's `mailforge_role` (from its groups' group_vars) where a play includes
    `mailforge.cluster.{{ mailforge_role }}`, with their meta dependencies."""
    config = yaml.safe_load((scenario / "molecule.yml").read_text())
    group_vars = config["provisioner"]["inventory"].get("group_vars", {})
    plays = yaml.safe_load((scenario / "converge.yml").read_text())
    named = [r["role"] if isinstance(r, dict) else r for play in plays for r in play.get("roles", [])]
    per_host = any(
        task.get("ansible.builtin.include_role", {}).get("name") == "mailforge.cluster.{{ mailforge_role }}" for play in plays for task in play.get("tasks", [])
    )
    converged = {}
    for platform in config["platforms"]:
        roles = list(named)
        if per_host:
            [role] = {group_vars[g]["mailforge_role"] for g in platform.get("groups", []) if "mailforge_role" in group_vars.get(g, {})}
            roles.append(f"mailforge.cluster.{role}")
        converged[platform["name"]] = _with_dependencies(roles)
    return converged


def _tested_instances(test: Path, scenario: Path) -> list[str]:
    """The instances testinfra runs `test` on: the groups (or instances) its `testinfra_hosts` names, else all."""
    platforms = yaml.safe_load((scenario / "molecule.yml").read_text())["platforms"]
    assigned = [node for node in ast.parse(test.read_text()).body if isinstance(node, ast.Assign)]
    hosts = next((ast.literal_eval(a.value) for a in assigned if any(getattr(t, "id", "") == "testinfra_hosts" for t in a.targets)), None)
    if hosts is None:
        return [p["name"] for p in platforms]
    names = [h.removeprefix("ansible://") for h in hosts]
    return [p["name"] for p in platforms if p["name"] in names or set(p.get("groups", [])) & set(names)]


def test_every_role_is_converged_and_tested_by_a_scenario():
    """A role counts as covered only where its tests run on instances that converge it.

    Role scenarios share converges (mailforge_core also runs base, firewall and postfix as meta
    dependencies), so a role's testinfra tests live in a scenario that converges it:
    `molecule/<scenario>/tests/test_<role without mailforge_>.py`, run (its `testinfra_hosts`) on
    instances that all converge the role. A converged role nobody tests, or a test file run on an
    instance that does not converge its role, leaves the role uncovered.
    """
    roles = sorted(p.name for p in ROLES.iterdir() if (p / "tasks" / "main.yml").is_file())
    covered: dict[str, list[str]] = {}
    for scenario in _role_scenarios():
        converged = _converged_roles(scenario)
        for test in sorted((scenario / "tests").glob("test_*.py")):
            role = "mailforge_" + test.stem.removeprefix("test_")
            instances = _tested_instances(test, scenario)
            assert instances, f"{test.relative_to(REPO)}: its testinfra_hosts name no instance of {scenario.name}"
            for instance in instances:
                assert role in converged[instance], (
                    f"{test.relative_to(REPO)} tests {role} on {instance}, which does not converge it ({sorted(converged[instance])})"
                )
            covered.setdefault(role, []).append(scenario.name)
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
    """Each role scenario converges and verifies each of its hosts (each role) on Debian 13 and on Debian 12 at once."""
    for scenario in _role_scenarios():
        converged = _converged_roles(scenario)
        images: dict[frozenset[str], set[str]] = {}
        for p in yaml.safe_load((scenario / "molecule.yml").read_text())["platforms"]:
            images.setdefault(frozenset(converged[p["name"]]), set()).add(p["image"])
        for roles, found in images.items():
            assert found == {lab.image_of(codename) for codename in RELEASES}, (scenario.name, sorted(roles))
