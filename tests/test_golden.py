"""The rendered output of every shipped inventory is pinned byte for byte.

Regenerate on purpose with: MAILFORGE_UPDATE_GOLDEN=1 pytest tests/test_golden.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import INVENTORIES

GOLDEN = Path(__file__).parent / "golden"


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rendered_tree_matches_golden(inventory_name, rendered):
    out = rendered(inventory_name)
    golden = GOLDEN / inventory_name
    if os.environ.get("MAILFORGE_UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        shutil.copytree(out, golden)
    assert golden.is_dir(), f"no golden files for {inventory_name}; run with MAILFORGE_UPDATE_GOLDEN=1"
    got, want = tree_files(out), tree_files(golden)
    assert sorted(got) == sorted(want), "the set of rendered files changed"
    for name in want:
        assert got[name] == want[name], f"{inventory_name}/{name} differs from its golden file"


def test_golden_covers_every_inventory():
    assert sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()) == sorted(INVENTORIES)


@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_render_is_deterministic(name, tmp_path):
    from mailforge.inventory import load_inventory
    from mailforge.render import render
    from mailforge.write import write_tree

    for attempt in ("first", "second"):
        inventory = load_inventory(INVENTORIES[name])
        write_tree(render(inventory), inventory.topology.cluster, tmp_path / attempt)
    assert tree_files(tmp_path / "first") == tree_files(tmp_path / "second")


def test_the_relays_share_one_recipients_map():
    """What maps.py and write.py count on to make, hash and compare a million-line map once, not per relay."""
    from mailforge.inventory import load_inventory
    from mailforge.render import render

    tree = render(load_inventory(INVENTORIES["example"]))
    first, second = (tree[relay]["/etc/postfix/relay_recipients"].content for relay in ("relay1", "relay2"))
    assert first is second
