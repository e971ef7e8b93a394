"""`mailforge validate` / `render` on bad inventories, run through the installed console script.

Every directory under fixtures/invalid/ is one case: a `topology.yml` (plus the
users.txt / recipients.txt it names) that must be refused, and `expected.txt`,
whose non-empty lines are substrings that must all appear in stderr.  Each
expected line names the position (`topology.yml:LINE:COL`, `users.txt:LINE` or `export.csv:LINE`)
and the key path, so a wrong line number or key fails the test.

The contract inventories and the shipped example must stay valid, and a failed
render must leave the output directory exactly as it was.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
INVALID = HERE / "fixtures" / "invalid"
EXAMPLE = ROOT / "inventories" / "example"
CONTRACT = HERE / "fixtures" / "contract"
CONTRACT_CASES = ["elb-relays", "lb-relays-core", "mx-proxy"]
MAILFORGE = Path(sys.executable).parent / "mailforge"

CASES = sorted(p.name for p in INVALID.iterdir() if p.is_dir())

SUMMARY = re.compile(r"^(\d+) problems? found; nothing was written\.$", re.M)
# error: FILE:LINE[:COL]: ...  -- every error must say where it is.
ERROR_AT = re.compile(r"^error: (?P<file>.+?):(?P<line>\d+)(?::(?P<col>\d+))?: ")
POSITION = re.compile(r"(topology\.yml|users\.txt|recipients\.txt|[\w.-]+\.csv):\d+")

ENV = {k: v for k, v in os.environ.items() if k not in ("MAILFORGE_DEBUG", "FORCE_COLOR")}
ENV.update(NO_COLOR="1", COLUMNS="500", TERM="dumb")


def run(*args) -> subprocess.CompletedProcess:
    """Run the installed `mailforge` console script; never hangs the suite."""
    return subprocess.run(
        [str(MAILFORGE), *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=ENV,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def expected_lines(case: str) -> list[str]:
    text = (INVALID / case / "expected.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def test_mailforge_script_is_installed():
    assert MAILFORGE.is_file(), f"console script not found at {MAILFORGE}; pip install -e . in this venv"
    assert len(CASES) >= 40, f"only {len(CASES)} invalid fixtures found under {INVALID}"


# --- the table of invalid inventories -----------------------------------------


@pytest.fixture(scope="module")
def validate_runs(request) -> dict[str, subprocess.CompletedProcess]:
    """`mailforge validate` of every selected case, run a few at a time to keep the suite fast."""
    wanted = sorted(
        {
            item.callspec.params["case"]
            for item in request.session.items
            if getattr(item, "originalname", None) == "test_invalid_inventory" and hasattr(item, "callspec")
        }
    )
    workers = max(2, min(8, 2 * (os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(wanted, pool.map(lambda case: run("validate", INVALID / case), wanted), strict=True))


def test_fixtures_are_well_formed():
    bad = []
    for case in CASES:
        directory = INVALID / case
        if not (directory / "topology.yml").is_file():
            bad.append(f"{case}: no topology.yml")
        if not (directory / "expected.txt").is_file():
            bad.append(f"{case}: no expected.txt")
            continue
        lines = expected_lines(case)
        if not any(POSITION.search(line) for line in lines):
            bad.append(f"{case}: expected.txt names no topology.yml:LINE / users.txt:LINE position")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("case", CASES)
def test_invalid_inventory(case, validate_runs):
    result = validate_runs.get(case) or run("validate", INVALID / case)
    out, err = result.stdout, result.stderr
    failures = []
    if result.returncode != 2:
        failures.append(f"exit code {result.returncode}, expected 2")
    if "Traceback" in out + err:
        failures.append("a traceback was printed")
    if "internal error" in err:
        failures.append("an internal error was reported instead of a problem with file:line")
    if "valid:" in out:
        failures.append("stdout claims the inventory is valid")
    for line in expected_lines(case):
        if line not in err:
            failures.append(f"missing from stderr: {line}")
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    summary = SUMMARY.findall(err)
    if len(summary) != 1:
        failures.append("no single 'N problems found; nothing was written.' line")
    elif int(summary[0]) != len(errors):
        failures.append(f"summary counts {summary[0]} problems but {len(errors)} 'error:' lines were printed")
    for line in errors:
        match = ERROR_AT.match(line)
        if not match:
            failures.append(f"error without FILE:LINE: {line}")
        elif Path(match["file"]).resolve().parent != INVALID / case:
            failures.append(f"error names a file outside the inventory: {line}")
    assert not failures, "\n".join(failures) + f"\n--- stdout:\n{out}\n--- stderr:\n{err}"


# --- inventories that must stay valid -------------------------------------------


VALID = [pytest.param(EXAMPLE, id="example")] + [pytest.param(CONTRACT / name, id=f"contract-{name}") for name in CONTRACT_CASES]


@pytest.mark.parametrize("inventory", VALID)
def test_valid_inventory(inventory: Path):
    assert (inventory / "topology.yml").is_file(), f"{inventory} is missing"
    result = run("validate", inventory)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"valid: {inventory / 'topology.yml'} ("), result.stdout
    assert "error:" not in result.stderr and "Traceback" not in result.stderr + result.stdout
    backscatter = [line for line in result.stderr.splitlines() if "backscatter" in line]
    if inventory.name == "mx-proxy":  # no recipients: the relays would accept anything and bounce later
        assert len(backscatter) == 1, result.stderr
        assert backscatter[0].startswith(f"warning: {inventory / 'topology.yml'}:"), backscatter[0]
    else:
        assert not backscatter, result.stderr


IDN_TOPOLOGY = """\
cluster: idn
domains:
  - bücher.example
  - Example.COM.
recipients:
  addresses: [info@BÜCHER.example, postmaster@example.com]
relays:
  - name: relay1
    fqdn: MX1.Bücher.Example
    address: 10.0.0.21
cores:
  - name: core1
    fqdn: core1.example.com
    address: 10.0.0.30
firewall:
  admin_networks: [10.0.0.0/24]
"""


def test_valid_edge_cases_are_accepted_and_normalised(tmp_path):
    """IDN, upper case and a trailing dot are fine: they are folded to the one form Postfix looks up."""
    from mailforge.inventory import load_inventory

    inventory = tmp_path / "idn"
    inventory.mkdir()
    (inventory / "topology.yml").write_text(IDN_TOPOLOGY, encoding="utf-8")

    loaded = load_inventory(inventory)
    assert list(loaded.topology.domains) == ["xn--bcher-kva.example", "example.com"]
    assert loaded.topology.relays[0].fqdn == "mx1.xn--bcher-kva.example"
    assert loaded.recipients.local_parts_at("xn--bcher-kva.example") == ("info",)
    assert loaded.recipients.local_parts_at("example.com") == ("postmaster",)

    result = run("validate", inventory)
    assert result.returncode == 0, result.stderr
    assert "valid:" in result.stdout

    out = tmp_path / "out"
    result = run("render", inventory, "-o", out)
    assert result.returncode == 0, result.stderr
    relay = out / "relay1" / "etc" / "postfix"
    assert "\nxn--bcher-kva.example OK\n" in (relay / "relay_domains").read_text(encoding="utf-8")
    assert "\ninfo@xn--bcher-kva.example OK\n" in (relay / "relay_recipients").read_text(encoding="utf-8")
    assert "mx1.xn--bcher-kva.example" in (relay / "main.cf").read_text(encoding="utf-8")
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8").lower()
            assert "bücher" not in text and "example.com." not in text, path


# --- --json ---------------------------------------------------------------------


def test_validate_json_reports_every_error_with_file_line_and_key():
    case = INVALID / "multiple_problems_semantic"
    result = run("validate", "--json", case)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "error" and data["command"] == "validate"
    errors = data["problems"]
    assert len(errors) == 8, errors
    for error in errors:
        assert set(error) >= {"file", "line", "column", "key", "message", "expected"}, error
        assert Path(error["file"]).resolve().parent == case, error
        assert isinstance(error["line"], int) and error["line"] >= 1, error
        assert error["key"] and error["message"], error
    where = {(Path(e["file"]).name, e["line"], e["column"], e["key"]) for e in errors}
    assert ("users.txt", 3, 1, "recipients.local_parts_file") in where
    assert ("topology.yml", 4, 5, "domains[1]") in where
    assert ("topology.yml", 22, 5, "policy.main_cf.smtpd_helo_requried") in where
    assert ("topology.yml", 20, 7, "policy.header_checks[0].action") in where


def test_validate_json_reports_yaml_errors():
    result = run("validate", "--json", INVALID / "yaml_syntax_error")
    assert result.returncode == 2, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "error"
    assert [(Path(e["file"]).name, e["line"]) for e in data["problems"]] == [("topology.yml", 3)]


def test_validate_json_on_a_valid_inventory():
    result = run("validate", "--json", EXAMPLE)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "ok" and data["problems"] == [] and data["cluster"] == "example"


# --- render must not write anything for a bad inventory -------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its type, mode, and for files the bytes and mtime."""
    tree = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            st = path.lstat()
            key = path.relative_to(root).as_posix()
            if path.is_file():
                tree[key] = ("file", st.st_mode, st.st_mtime_ns, path.read_bytes())
            else:
                tree[key] = ("dir", st.st_mode)
    return tree


RENDER_CASES = ["multiple_problems_semantic", "users_txt_missing", "yaml_syntax_error"]


def test_render_of_bad_inventory_leaves_output_untouched(tmp_path):
    out = tmp_path / "out"
    good = run("render", EXAMPLE, "-o", out)
    assert good.returncode == 0, good.stderr
    assert (out / "manifest.json").is_file()
    before, siblings = snapshot(out), sorted(os.listdir(tmp_path))
    assert len(before) > 10

    for case in RENDER_CASES:
        bad = run("render", INVALID / case, "-o", out)
        assert bad.returncode == 2, f"{case}: {bad.stdout}{bad.stderr}"
        assert "nothing was written" in bad.stderr, case
        assert "Traceback" not in bad.stdout + bad.stderr, case
        assert snapshot(out) == before, f"{case}: a failed render changed the existing output"
        assert sorted(os.listdir(tmp_path)) == siblings, f"{case}: a failed render left files beside the output"

        fresh = tmp_path / "new" / case
        bad = run("render", INVALID / case, "-o", fresh)
        assert bad.returncode == 2, f"{case}: {bad.stdout}{bad.stderr}"
        assert not fresh.exists() and not fresh.parent.exists(), f"{case}: a failed render created the output directory"


@pytest.mark.parametrize(
    "command",
    [
        ["validate"],
        ["render", "-o", "{out}"],
        ["deploy"],
        ["verify", "--lab"],
        ["maps"],
        ["drift"],
        ["dns", "check"],
        ["dns", "zone"],
        ["lab", "up"],
        ["lab", "down"],
        ["lab", "status"],
    ],
)
def test_every_command_answers_bad_input_in_the_json_envelope(command, tmp_path):
    """The same envelope for every command: status error, exit 2, every problem with its place; nothing written.
    The commands that need no recipients (dns, lab down/status) do not read the recipient sources, so they
    report the six problems of the topology and not the two of its recipients (inline and users.txt)."""
    case = INVALID / "multiple_problems_semantic"
    out = tmp_path / "out"
    result = run(*[part.format(out=out) for part in command], "--json", case)
    assert result.returncode == 2, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert (data["command"], data["status"], data["exit_code"]) == (" ".join(c for c in command if not c.startswith(("-", "{"))), "error", 2)
    keys = [p["key"] for p in data["problems"]]
    reads_recipients = command[0] not in ("dns",) and command[-1] not in ("down", "status")
    assert len([k for k in keys if not k.startswith("recipients.")]) == 6, keys
    assert len([k for k in keys if k.startswith("recipients.")]) == (2 if reads_recipients else 0), keys
    assert all(p["line"] for p in data["problems"])
    assert not out.exists()
