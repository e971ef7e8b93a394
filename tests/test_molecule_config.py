"""Molecule's cluster scenario is the lab: same containers, names, addresses, network and DNS.

If the two drifted apart, `mailforge verify --lab` in the scenario would probe containers
Molecule never made. No containers are started here.
"""

from __future__ import annotations

import yaml
from conftest import REPO

from mailforge import lab
from mailforge.inventory import load_inventory
from mailforge.resources import ROLES

SCENARIOS = REPO / "molecule"


def _platforms() -> list[dict]:
    return yaml.safe_load((SCENARIOS / "cluster" / "molecule.yml").read_text())["platforms"]


def test_cluster_platforms_are_the_lab_containers():
    plan = lab.plan(load_inventory(REPO / "inventories" / "example"))
    dns = plan.by_host("dns").address
    expected = {c.name: (c.hostname, c.address) for c in plan.containers}
    got = {}
    for p in _platforms():
        [network] = p["networks"]
        assert network["name"] == plan.network, p["name"]
        assert p["dns_servers"] == [dns], p["name"]
        assert p["image"] == lab.IMAGE and p["pre_build_image"] is True
        assert {"NET_ADMIN", "NET_RAW"} <= set(p["capabilities"]), p["name"]
        got[p["name"]] = (p["hostname"], network["ipv4_address"])
    assert got == expected


def test_cluster_network_is_the_lab_network():
    networks = [n for p in _platforms() for n in p.get("docker_networks", [])]
    plan = lab.plan(load_inventory(REPO / "inventories" / "example"))
    assert [(n["name"], n["ipam_config"][0]["subnet"]) for n in networks] == [(plan.network, plan.subnet)]


def test_every_role_has_a_molecule_scenario():
    roles = sorted(p.name for p in (ROLES).iterdir() if (p / "tasks" / "main.yml").is_file())
    scenarios = sorted(p.parent.name for p in SCENARIOS.glob("*/molecule.yml"))
    assert set(roles) <= set(scenarios), f"roles without a scenario: {sorted(set(roles) - set(scenarios))}"


def test_cluster_instances_carry_the_labels_lab_up_adopts():
    """`lab up --no-deploy` adopts only what is labelled with its inventory's directory (see lab.clashes):
    Molecule's instances and network carry the labels `lab up` itself would give them, once Molecule has
    put its project directory in (it runs from the repository)."""
    plan = lab.plan(load_inventory(REPO / "inventories" / "example"))

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
