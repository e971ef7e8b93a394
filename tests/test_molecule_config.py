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
