"""Shared fixtures: the inventories every test runs against, and a render into tmp."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTRACT = REPO.parent / "shared" / "contract"
MAILFORGE = Path(sys.executable).parent / "mailforge"

# The contract inventories (accepted exactly as written) and the project's own example.
INVENTORIES = {
    "lb-relays-core": CONTRACT / "lb-relays-core",
    "elb-relays": CONTRACT / "elb-relays",
    "mx-proxy": CONTRACT / "mx-proxy",
    "example": REPO / "inventories" / "example",
}


@pytest.fixture(params=sorted(INVENTORIES), scope="session")
def inventory_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def rendered(tmp_path_factory):
    """Render each inventory once per session into tmp: name -> output directory."""
    from mailforge.render import render
    from mailforge.topology import load_inventory
    from mailforge.write import write_tree

    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            inventory = load_inventory(INVENTORIES[name])
            out = tmp_path_factory.mktemp("render") / name
            write_tree(render(inventory), inventory.topology.cluster, out)
            cache[name] = out
        return cache[name]

    return get
