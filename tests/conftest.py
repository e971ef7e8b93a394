"""Shared fixtures: the inventories every test runs against, and a render into tmp."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTRACT = REPO / "tests" / "fixtures" / "contract"
MAILFORGE = Path(sys.executable).parent / "mailforge"

# The contract inventories (accepted exactly as written), the project's own example, and the shipped
# ELB layout (an external balancer; its lab has a stand-in balancer: tests/test_lab_elb.py).
INVENTORIES = {
    "lb-relays-core": CONTRACT / "lb-relays-core",
    "elb-relays": CONTRACT / "elb-relays",
    "mx-proxy": CONTRACT / "mx-proxy",
    "example": REPO / "inventories" / "example",
    "elb": REPO / "inventories" / "elb",
    "outbound-tls": REPO / "tests" / "fixtures" / "outbound-tls",  # tls.outbound: DANE and MTA-STS (docs/outbound-tls.md)
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
import tempfile  # noqa: E402

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


# The example as a user runs it: copied out of the repository, driven by mailforge installed from its
# wheel (installed_mailforge) from a directory outside the repository. The lab tests then reach the
# same lab with this checkout's mailforge and the repository's example (the same cluster, so the same
# containers and the same lab keys).
LAB_EXAMPLE = Path(tempfile.gettempdir()) / "mailforge-lab-tests" / "example"
LAB_UP: dict[str, object] = {}  # what the session's `lab up` and first `verify --lab` did, for test_install_lab.py


@pytest.fixture(scope="session")
def lab(installed_mailforge):
    """The example cluster, up over SSH on the default Debian release and deployed, for the whole
    session, by the installed wheel; removed at the end (MAILFORGE_LAB_KEEP=1 keeps it)."""
    import shutil
    import time

    if LAB_EXAMPLE.parent.exists():
        shutil.rmtree(LAB_EXAMPLE.parent)
    LAB_EXAMPLE.parent.mkdir(parents=True)
    shutil.copytree(EXAMPLE, LAB_EXAMPLE, ignore=shutil.ignore_patterns(".mailforge"))
    started = time.monotonic()
    up = subprocess.run(
        [str(installed_mailforge), "lab", "up", "example"], cwd=LAB_EXAMPLE.parent, env=outside_env(), capture_output=True, text=True, timeout=1800
    )
    LAB_UP.update(up=up, up_seconds=time.monotonic() - started)
    assert up.returncode == 0, up.stdout + up.stderr
    started = time.monotonic()
    verify = subprocess.run(
        [str(installed_mailforge), "verify", "example", "--lab", "--json"],
        cwd=LAB_EXAMPLE.parent,
        env=outside_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    LAB_UP.update(verify=verify, verify_seconds=time.monotonic() - started)
    yield EXAMPLE
    if os.environ.get("MAILFORGE_LAB_KEEP") != "1":
        mailforge("lab", "down", str(LAB_EXAMPLE))


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


def failing_example(tmp_path: Path) -> Path:
    """A copy of the example that every host answers (Ansible's `local` connection: this machine) but
    where no Ansible module can run (its python3 is missing): a real ansible-playbook run that starts
    the playbook and fails at the first task of the first host, changing nothing here."""
    import shutil

    inventory = tmp_path / "failing"
    shutil.copytree(INVENTORIES["example"], inventory, ignore=shutil.ignore_patterns(".mailforge"))
    topology = inventory / "topology.yml"
    topology.write_text(topology.read_text() + "\nconnection:\n  plugin: local\n  become: false\n")
    (inventory / "hosts.yml").write_text("all:\n  vars:\n    ansible_python_interpreter: /nonexistent/python3\n  hosts: {lb: , relay1: , relay2: , core: }\n")
    return inventory


# --- mailforge as users install it: a wheel in a fresh virtualenv, outside the repository ----------

# What the build reads: the wheel is built from a copy of exactly these, so a stale build/ directory
# or a render left inside the package can never slip into it.
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "mailforge")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the working tree, built once per session (`pip wheel`, no download: the build
    backend is the setuptools of the test extra)."""
    import shutil

    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in PACKAGE_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".mailforge"))
        else:
            shutil.copy2(REPO / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [path] = (work / "dist").glob("mailforge-*.whl")
    return path


@pytest.fixture(scope="session")
def installed_mailforge(wheel, tmp_path_factory) -> Path:
    """The `mailforge` console script of the wheel installed in a fresh virtualenv in a temporary
    directory, its dependencies resolved from the package index as a user's are (pip's cache makes
    a second session cheaper: about 15 s). No extra: the lean install."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv / "bin" / "mailforge"


def outside_env(**extra: str) -> dict[str, str]:
    """The environment for running an installed mailforge: this checkout's virtualenv off PATH, no
    PYTHONPATH, so nothing of the source tree can be picked up by accident."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MAILFORGE_DEBUG", "FORCE_COLOR", "ANSIBLE_CONFIG")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env.update(extra)
    return env
