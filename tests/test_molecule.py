"""Molecule scenarios, for real: the role scenarios (converge, idempotence, verify with testinfra) and
`cluster`, the example's whole topology verified with every check of `mailforge verify`.

`roles` converges the balancer, the relay and the core of molecule/shared/inventory and the MX proxy
of inventories/mx-proxy, each with its own role, in one run (one create, converge, idempotence,
verify and destroy rather than four, one scenario after another: CI time, docs/molecule.md).

Needs a container engine and root (scripts/container-engine sets up Podman's Docker API when no
Docker answers); runs when MAILFORGE_LAB=1. Scenarios run one at a time: `roles` uses
10.234.0.0/24 (its MX proxy 10.233.0.0/24), and `cluster` uses the lab's own network and container names.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LAB_EXAMPLE, REPO

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="Molecule scenarios run with MAILFORGE_LAB=1 (they start containers)"),
]

SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))
# The role scenarios first, the whole cluster last.
SCENARIOS = [s for s in SCENARIOS if s != "cluster"] + [s for s in SCENARIOS if s == "cluster"]


@pytest.fixture(scope="module")
def molecule_env() -> dict[str, str]:
    from mailforge.inventory.releases import RELEASES
    from mailforge.lab import build_image, engine_environment, image_of

    env = engine_environment()
    for codename in RELEASES:  # the scenarios' pre-built images: every scenario runs on every release
        build_image(env, image_of(codename))
    # `cluster` uses the example lab's network and container names: the lab tests' lab must be gone.
    subprocess.run(
        [str(Path(sys.executable).parent / "mailforge"), "lab", "down", str(LAB_EXAMPLE)], capture_output=True, timeout=600
    )  # the scenarios' pre-built image
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["ANSIBLE_NOCOLOR"] = env["NO_COLOR"] = "1"
    return env


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario, molecule_env):
    result = subprocess.run(["molecule", "test", "-s", scenario], cwd=REPO, env=molecule_env, capture_output=True, text=True, timeout=1800)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    for step in ("converge", "idempotence", "verify"):
        assert f"{step}: Executed: Successful" in output, f"{scenario}: {step} did not run\n{output[-3000:]}"
