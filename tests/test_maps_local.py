"""`maps` survey, guard and push against a real Postfix config directory on this machine.

The "host" is this machine through a local shell (the `local` connection), and the maps live in
a temporary directory with the rendered main.cf: the same scripts, postmap and renames as on a
relay, without containers. The lab tests (test_maps_lab.py) do the same on live relays.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mailforge import maps
from mailforge.remote import HostShell
from mailforge.render.files import POSTFIX_RELOAD, POSTMAP, RenderedFile

pytestmark = pytest.mark.tools


def table(directory: Path, text: str, name: str = "relay_recipients", action: str = POSTMAP, kind: str = "hash") -> dict:
    return {str(directory / name): RenderedFile(text, action, config_directory=str(directory), table_type=kind)}


@pytest.fixture
def host(tmp_path) -> tuple[dict[str, HostShell], Path]:
    conf = tmp_path / "postfix"
    conf.mkdir()
    (conf / "main.cf").write_text("compatibility_level = 3.6\n")
    return {"relay": HostShell("relay", ["env"])}, conf


def lines(n: int, start: int = 0) -> str:
    return "# header\n" + "".join(f"user{i:05d}@example.com OK\n" for i in range(start, start + n))


def lookup(conf: Path, key: str, kind: str = "hash") -> str:
    result = subprocess.run(["postmap", "-c", str(conf), "-q", key, f"{kind}:{conf / 'relay_recipients'}"], capture_output=True, text=True)
    return result.stdout.strip()


def test_push_compiles_renames_and_counts(host, tmp_path):
    shells, conf = host
    first = {"relay": table(conf, lines(100))}
    changes = maps.survey(shells, first)
    [change] = changes
    assert change.live_sha256 is None and change.changed and change.added == 100
    results = maps.push(shells, changes, [["relay"]])
    assert results[0].error is None and results[0].pushed == [str(conf / "relay_recipients")]
    assert lookup(conf, "user00042@example.com") == "OK"
    assert not list(conf.glob("*.mailforge-new*"))  # nothing staged is left behind

    # Same sources again: nothing changes, nothing is written.
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in conf.iterdir()}
    again = maps.survey(shells, first)
    assert not any(c.changed for c in again)
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in conf.iterdir()} == before

    # Five go, five come: counted against the live map, pushed whole, the removed ones gone.
    second = {"relay": table(conf, lines(100, start=5))}
    [change] = maps.survey(shells, second)
    assert (change.live_entries, change.entries, change.added, change.removed) == (100, 100, 5, 5)
    assert change.removed_examples[0] == "user00000@example.com OK"
    assert maps.guard([change], 0.10) == []
    maps.push(shells, [change], [["relay"]])
    assert lookup(conf, "user00104@example.com") == "OK" and lookup(conf, "user00000@example.com") == ""


def test_guard_refuses_a_shrinking_or_empty_recipients_map(host):
    shells, conf = host
    maps.push(shells, maps.survey(shells, {"relay": table(conf, lines(100))}), [["relay"]])
    [truncated] = maps.survey(shells, {"relay": table(conf, lines(80))})
    [refusal] = maps.guard([truncated], 0.10)
    assert "would lose 20 of 100 entries (20.0%" in refusal.reason
    assert maps.guard([truncated], 0.25) == []
    [empty] = maps.survey(shells, {"relay": table(conf, "# header\n")})
    assert "would become empty" in maps.guard([empty], 0.10)[0].reason
    # Not a recipients map: no guard.
    [domains] = maps.survey(shells, {"relay": table(conf, "# header\n", name="relay_domains")})
    assert maps.guard([domains], 0.10) == []


def test_a_map_that_fails_its_check_never_goes_live(host):
    shells, conf = host
    maps.push(shells, maps.survey(shells, {"relay": table(conf, lines(10))}), [["relay"]])
    good = (conf / "relay_recipients").read_bytes()
    # A cidr table with a bad network: postmap warns, so nothing may replace the live files.
    (conf / "access.cidr").write_text("10.0.0.0/8 OK\n")
    bad = {"relay": {**table(conf, lines(12)), **table(conf, "10.0.0.0/33 OK\n", name="access.cidr", action=POSTFIX_RELOAD, kind="cidr")}}
    results = maps.push(shells, maps.survey(shells, bad), [["relay"]])
    assert results[0].error and "access.cidr" in results[0].error
    assert (conf / "relay_recipients").read_bytes() == good  # the good map did not go live either
    assert (conf / "access.cidr").read_text() == "10.0.0.0/8 OK\n"
    assert not list(conf.glob("*.mailforge-new*"))


def test_lmdb_maps_are_staged_and_renamed_with_their_suffix(host):
    shells, conf = host
    changes = maps.survey(shells, {"relay": table(conf, lines(50), kind="lmdb")})
    assert maps.push(shells, changes, [["relay"]])[0].error is None
    assert (conf / "relay_recipients.lmdb").is_file() and not (conf / "relay_recipients.db").exists()
    assert lookup(conf, "user00007@example.com", kind="lmdb") == "OK"
