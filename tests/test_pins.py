"""Pins of what the live-host half computes before it reaches a host: the Ansible inventory of every
shipped inventory, the shell transport per host, the rollout order, the lab's plan, and a recorded
ansible-runner event stream turned into per-host results.

They were written before the host half was restructured and hold the values it computed then; a
change to one of them is a change of behaviour. `MAILFORGE_UPDATE_PINS=1` rewrites them on purpose.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
from conftest import INVENTORIES, REPO

PINS = REPO / "tests" / "pins"
CONNECTIONS = REPO / "tests" / "fixtures" / "connections"
EVENTS = REPO / "tests" / "fixtures" / "ansible-events" / "example-run.json"
RENDER_DIR = Path("/srv/mailforge/render")
ALL = {**INVENTORIES, "mx-proxy-shipped": REPO / "inventories" / "mx-proxy", "connections": CONNECTIONS}


def pinned(name: str, value) -> None:
    path = PINS / f"{name}.json"
    text = json.dumps(value, indent=1, sort_keys=True) + "\n"
    if os.environ.get("MAILFORGE_UPDATE_PINS"):
        PINS.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is missing: run with MAILFORGE_UPDATE_PINS=1 to write it"
    assert json.loads(text) == json.loads(path.read_text()), f"{name} differs from {path}"


# --- adapters: the only part that follows the code's names ----------------------------------------


def portable(value, inventory):
    """`value` with this machine's paths (the ssh control directory, the lab's key directory, which
    depends on where the checkout is) in words, so a pin holds on every machine."""
    from mailforge import lab as lab_module
    from mailforge.remote import control_directory

    text = json.dumps(value).replace(str(lab_module.keys(inventory).directory), "<lab keys>").replace(control_directory(), "<ssh control>")
    text = re.sub(r"mf-[0-9a-f]{8}-", "mf-<key and known_hosts>-", text)  # the lab's paths are in the hash
    return json.loads(text)


def load(path: Path):
    from mailforge.inventory import load_inventory

    return load_inventory(path)


def ansible_inventory(inventory, lab: bool = False) -> dict:
    from mailforge import hosts
    from mailforge import lab as lab_module
    from mailforge.deploy import ansible_inventory
    from mailforge.render import render
    from mailforge.write import manifest

    manifest_ = manifest(render(inventory), inventory.topology.cluster)
    reaches = hosts.reach_all(inventory, lab=lab_module.reaches(inventory) if lab else None)
    return portable(ansible_inventory(inventory, RENDER_DIR, manifest_, reaches), inventory)


def shells(inventory) -> dict:
    from mailforge import hosts

    return portable(
        {
            name: {"argv": s.argv, "become": s.become, "remote_command_is_string": s.remote_command_is_string}
            for name, s in ((n, r.shell()) for n, r in hosts.reach_all(inventory).items())
        },
        inventory,
    )


def rollout(inventory, batch: int) -> list[list[str]]:
    from mailforge.inventory import rollout_order

    return rollout_order(inventory.hosts, batch)


def lab_plan(inventory) -> dict:
    from mailforge.errors import MailforgeError
    from mailforge.lab import plan

    try:
        planned = dataclasses.asdict(plan(inventory))
        planned.pop("owner")  # the checkout's own path (what labels a lab as its own): tests/test_lab_plan.py holds it
        return planned
    except MailforgeError as exc:
        return {"refused": str(exc)}


def tally(recorded: dict, hosts: list[str], limited: bool) -> dict:
    from mailforge.deploy import EventTally

    counter = iter(range(1000))
    t = EventTally(hosts, clock=lambda: float(next(counter)))
    for event in recorded["events"]:
        t(event)
    return {host: dataclasses.asdict(r) for host, r in t.results(recorded["stats"], limited=limited).items()}


# --- the pins -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
def test_ansible_inventory(name):
    pinned(f"ansible-inventory-{name}", ansible_inventory(load(ALL[name])))


def test_ansible_inventory_of_the_lab():
    pinned("ansible-inventory-example-lab", ansible_inventory(load(INVENTORIES["example"]), lab=True))


@pytest.mark.parametrize("name", sorted(ALL))
def test_shell_transport(name):
    pinned(f"shells-{name}", shells(load(ALL[name])))


@pytest.mark.parametrize("name", sorted(ALL))
def test_rollout_order(name):
    inventory = load(ALL[name])
    pinned(f"rollout-{name}", {"batch 1": rollout(inventory, 1), "batch 2": rollout(inventory, 2)})


@pytest.mark.parametrize("name", sorted(ALL))
def test_lab_plan(name):
    pinned(f"lab-plan-{name}", lab_plan(load(ALL[name])))


def test_event_stream_to_host_results():
    recorded = json.loads(EVENTS.read_text())
    hosts = ["lb", "relay1", "relay2", "core"]
    pinned("events-example-run", {"all": tally(recorded, hosts, limited=False), "limited": tally(recorded, [*hosts, "relay3"], limited=True)})
