"""No private key material anywhere but the store and the staged files Ansible ships: not in the
rendered tree, manifest.json, deploy's output (--check --diff) or the base role's task output; and
the store and staged files are 0700/0600. A bad MX certificate stops deploy before anything is written."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mailforge.inventory import load_topology
from mailforge.tls import internal, material, store_of

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "inventories" / "example"
COLLECTIONS = REPO / "mailforge"


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailforge.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.fixture
def example(tmp_path) -> Path:
    directory = tmp_path / "example"
    shutil.copytree(EXAMPLE, directory, ignore=shutil.ignore_patterns(".mailforge"))
    return directory


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    state = tmp_path / "state"
    monkeypatch.setenv("MAILFORGE_STATE_DIR", str(state))
    return {**os.environ, "MAILFORGE_STATE_DIR": str(state), "PYTHONPATH": str(REPO)}


def key_bodies(store: Path) -> list[str]:
    """Lines of base64 from every private key in the store (each 64 characters: long enough to be unique)."""
    bodies = []
    for path in store.rglob("*key.pem"):
        bodies += [line for line in path.read_text().splitlines() if line and not line.startswith("-----") and len(line) >= 40]
    assert bodies
    return bodies


def assert_clean(text: str, bodies: list[str], where: str) -> None:
    assert "PRIVATE KEY" not in text, where
    for body in bodies:
        assert body not in text, f"a private key's base64 appears in {where}"


def test_render_manifest_and_deploy_output_hold_no_key(example, env, tmp_path):
    inv = load_topology(example)
    store = store_of("example")
    material.prepare(inv, store)
    bodies = key_bodies(store)
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [store, *store.rglob("*")]}
    assert all(mode == (0o700 if p.is_dir() else 0o600) for p, mode in modes.items()), modes

    rendered = cli("render", str(example), "-o", str(tmp_path / "out"), env=env, cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert_clean(path.read_text(errors="replace"), bodies, str(path))
    assert "/etc/mailforge/tls/mx.pem" in (tmp_path / "out" / "relay1" / "etc" / "postfix" / "main.cf").read_text()

    # deploy --check --diff: every host answers (local connection) and fails at Ansible's first task;
    # the TLS files were assembled and handed over, and nothing of them is in the output.
    topology = example / "topology.yml"
    topology.write_text(topology.read_text() + "\nconnection:\n  plugin: local\n  become: false\n")
    (example / "hosts.yml").write_text("all:\n  vars:\n    ansible_python_interpreter: /nonexistent/python3\n  hosts: {lb: , relay1: , relay2: , core: }\n")
    run = cli("deploy", str(example), "--check", "--diff", env=env, cwd=tmp_path)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stdout + run.stderr
    assert_clean(run.stdout + run.stderr, bodies, "deploy --check --diff output")
    manifest = example / ".mailforge" / "render" / "manifest.json"
    assert manifest.is_file()
    assert_clean(manifest.read_text(), bodies, "manifest.json")
    for log in Path(env.get("XDG_STATE_HOME", Path.home() / ".local" / "state")).glob("mailforge/logs/*"):
        assert_clean(log.read_text(errors="replace"), bodies, str(log))


def test_base_role_ships_the_files_without_showing_them(example, env, tmp_path):
    """The base role's tasks/tls.yml for real (ansible-playbook on this machine, --diff): files land with
    their modes, the output names paths only, and a file openssl cannot read is refused."""
    inv = load_topology(example)
    store = store_of("example")
    material.prepare(inv, store)
    bodies = key_bodies(store)
    staged = material.assemble(material.shipment(inv, store), tmp_path / "stage", ["relay1"])["relay1"]
    live = tmp_path / "live"
    files = [{**entry, "path": str(live / Path(entry["path"]).name), "owner": "root", "group": "root"} for entry in staged]
    playbook = tmp_path / "tls.yml"
    playbook.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.import_role:\n        name: mailforge.cluster.mailforge_base\n        tasks_from: tls\n"
    )
    vars_file = tmp_path / "vars.json"
    import json

    def play(entries) -> subprocess.CompletedProcess:
        vars_file.write_text(json.dumps({"mailforge_tls_files": entries, "mailforge_base_tls_dir": str(live)}))
        ansible = Path(sys.executable).parent / "ansible-playbook"
        return subprocess.run(
            [str(ansible), "-i", "localhost,", "--diff", "-e", f"@{vars_file}", "-e", "ansible_python_interpreter=" + sys.executable, str(playbook)],
            capture_output=True,
            text=True,
            timeout=600,
            env={**env, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_NOCOLOR": "1"},
        )

    result = play(files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_clean(result.stdout + result.stderr, bodies, "ansible-playbook output")
    assert "changed=" in result.stdout and "BEGIN" not in result.stdout
    for entry in files:
        path = Path(entry["path"])
        assert path.read_bytes() == Path(entry["src"]).read_bytes()
        assert f"{stat.S_IMODE(path.stat().st_mode):04o}" == entry["mode"]
    assert stat.S_IMODE((live / "mx.pem").stat().st_mode) == 0o600

    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    result = play([{**files[0], "src": str(broken)}])
    assert result.returncode != 0
    assert (live / Path(files[0]["path"]).name).read_bytes() == Path(files[0]["src"]).read_bytes(), "the live file stayed"


def _pair(directory: Path, matching: bool) -> None:
    ca = internal.make_ca("elsewhere")
    key, cert = internal.issue(ca, ["mx.example.com"])
    (directory / "mx.pem").write_bytes(internal.cert_pem(cert))
    (directory / "mx.key").write_bytes(internal.key_pem(key if matching else internal.new_key()))
    topology = directory / "topology.yml"
    topology.write_text(topology.read_text().replace("\ntls:\n", "\ntls:\n  cert_file: mx.pem\n  key_file: mx.key\n", 1))  # files win over tls.acme


def test_deploy_refuses_a_mismatched_key_before_writing_anything(example, env, tmp_path):
    _pair(example, matching=False)
    run = cli("deploy", str(example), env=env, cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    line = next(i for i, text in enumerate((example / "topology.yml").read_text().splitlines(), 1) if "cert_file: mx.pem" in text)
    assert re.search(rf"error: .*topology\.yml:{line}:\d+: tls\.cert_file: the private key does not match the certificate", run.stderr), run.stderr
    assert "1 problem found; nothing was written." in run.stderr
    assert "Traceback" not in run.stderr
    assert not (example / ".mailforge").exists()
    assert not (Path(env["MAILFORGE_STATE_DIR"]) / "clusters" / "example" / "tls" / "mx").exists(), "a bad pair never enters the store"


def test_tls_stage_writes_what_deploy_would_ship_and_prints_no_key(example, env, tmp_path):
    """The hidden command Molecule's shared playbooks use: prepares an empty store, stages 0600 files in a 0700 directory."""
    import json

    run = cli("tls-stage", str(example), str(tmp_path / "stage"), env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    bodies = key_bodies(Path(env["MAILFORGE_STATE_DIR"]) / "clusters" / "example" / "tls")
    assert_clean(run.stdout + run.stderr, bodies, "tls-stage output")
    staged = json.loads((tmp_path / "stage" / "tls_files.json").read_text())
    assert sorted(staged) == ["core", "lb", "relay1", "relay2"]
    assert stat.S_IMODE((tmp_path / "stage").stat().st_mode) == 0o700
    for entry in staged["relay1"] + staged["lb"]:
        assert stat.S_IMODE(Path(entry["src"]).stat().st_mode) == 0o600
        assert entry["path"].startswith("/etc/mailforge/tls/")
    assert_clean((tmp_path / "stage" / "tls_files.json").read_text(), bodies, "tls_files.json")
