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
    from mailforge.inventory import load_inventory
    from mailforge.render import render
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


# --- the example cluster in the lab (MAILFORGE_LAB=1): shared by the lab and maps tests ----------

import os  # noqa: E402
import subprocess  # noqa: E402

EXAMPLE = REPO / "inventories" / "example"


def mailforge(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([str(MAILFORGE), *args], capture_output=True, text=True, timeout=timeout)


def engine_env() -> dict[str, str]:
    from mailforge.lab import engine_environment

    return engine_environment()


def in_container(host: str, script: str, stdin: str | None = None, check: bool = True) -> str:
    """Run a shell script in one of the example lab's containers (lb, relay1, relay2, core, client, ...)."""
    result = subprocess.run(
        ["docker", "exec", "-i", f"mf-example-{host}", "sh", "-c", script], env=engine_env(), capture_output=True, text=True, timeout=300, input=stdin
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="session")
def lab():
    """The example cluster, up and deployed, for the whole session; removed at the end."""
    up = mailforge("lab", "up", str(EXAMPLE))
    assert up.returncode == 0, up.stdout + up.stderr
    yield EXAMPLE
    if os.environ.get("MAILFORGE_LAB_KEEP") != "1":
        mailforge("lab", "down", str(EXAMPLE))


def rows(envelope: dict) -> list[dict]:
    """Every result of a `--json` envelope (docs/json.md) as one flat dict: the result's own fields with
    the command's fields (`data`) over them, host by host."""
    flat = []
    for entry in envelope["hosts"].values():
        for result in entry["results"]:
            fields = {k: v for k, v in result.items() if k != "data"}
            flat.append({**fields, **result["data"]})
    return flat


def unreachable_example(tmp_path: Path) -> Path:
    """A copy of the example whose every host is reached by SSH at a closed port of this machine."""
    import shutil

    inventory = tmp_path / "unreachable"
    shutil.copytree(INVENTORIES["example"], inventory, ignore=shutil.ignore_patterns(".mailforge"))
    topology = inventory / "topology.yml"
    topology.write_text(topology.read_text() + "\nconnection:\n  host: 127.0.0.1\n  port: 1\n")
    return inventory
