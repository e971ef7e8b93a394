"""Relays leave the balancer's rotation while they change: no mail lost during a deploy or a maps run.

In the example lab (managed HAProxy, two relays, one core): a deploy that changes every relay's
main.cf, under a bounded stream of real mail through the balancer, drains each relay in its turn
(seen on HAProxy's own `show stat` while it runs) and loses nothing; a relay that fails its PROXY
probe stays out of the rotation and stops the rollout with exit 1, the other relay untouched and
serving; `maps` drains the relays whose recipients change. Runs when MAILFORGE_LAB=1.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from conftest import EXAMPLE, in_container, mailforge
from mailstream import MailStream

from mailforge import lab as lab_module
from mailforge.inventory import load_inventory
from mailforge.rotation import servers

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they start containers)"),
]

RELAYS = ("relay1", "relay2")


def balancer():
    return lab_module.reaches(load_inventory(EXAMPLE))["lb"].shell()


class StateWatch:
    """HAProxy's view of the relays, sampled every half second while something runs: which relays
    were drained at the same moment."""

    def __init__(self):
        self.shell = balancer()
        self.samples: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.monotonic() + 900  # bounded whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.samples.append({name: s.state for name, s in servers(self.shell).items()})
            except Exception:  # noqa: BLE001 - a sample lost is not a finding
                pass
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)

    def drained(self, relay: str) -> bool:
        return any(sample.get(relay) == "drain" for sample in self.samples)

    def together(self) -> bool:
        return any(all(sample.get(r) == "drain" for r in RELAYS) for sample in self.samples)


def changed_copy(where: Path, size: int) -> Path:
    """The example with another message_size_limit: every relay's main.cf changes."""
    copy = where / "example"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns(".mailforge"))
    topology = copy / "topology.yml"
    text = topology.read_text()
    assert "message_size_limit: 26214400" in text
    topology.write_text(text.replace("message_size_limit: 26214400", f"message_size_limit: {size}"))
    return copy


def deploy(inventory: Path):
    result = mailforge("deploy", str(inventory), "--lab", "--json")
    envelope = json.loads(result.stdout)
    steps = {host: [r["data"].get("rotation", []) for r in entry["results"]][0] for host, entry in envelope["hosts"].items()}
    return result, steps


def wait_in_rotation(relays=RELAYS, seconds: int = 60) -> dict:
    shell = balancer()
    deadline = time.monotonic() + seconds
    while True:
        states = {name: s.state for name, s in servers(shell).items()}
        if all(states.get(r) == "up" for r in relays) or time.monotonic() > deadline:
            return states
        time.sleep(1)


def main_cf_size(relay: str) -> str:
    return in_container(relay, "postconf -h message_size_limit").strip()


def test_a_rolling_deploy_keeps_a_failing_relay_out_and_loses_no_mail(lab, tmp_path):
    """First the balancer cannot reach relay1 once it changed: relay1 stays out of the rotation, the
    deploy exits 1 before relay2 is touched, and relay2 keeps taking the balancer's mail. Then, the
    fault gone, a deploy that changes both relays under a stream of mail loses nothing, each relay
    drained in its turn and never both at once."""
    relay1 = load_inventory(EXAMPLE).topology.relays[0].address
    block = f"iptables -I OUTPUT -d {relay1} -p tcp --dport 10024 -j REJECT --reject-with tcp-reset"
    in_container("lb", block)
    try:
        result, steps = deploy(changed_copy(tmp_path / "first", 26214401))
        assert result.returncode == 1, result.stdout + result.stderr
        assert [s["action"] for s in steps["relay1"]] == ["drained", "kept out"], steps["relay1"]
        assert "PROXY SMTP probe from lb failed" in steps["relay1"][-1]["detail"]
        assert steps.get("relay2", []) == []
        assert main_cf_size("relay1") == "26214401" and main_cf_size("relay2") == "26214400"
        assert servers(balancer())["relay1"].state == "drain"
        outcome = MailStream(EXAMPLE).start(count=5, rate=2).wait(deliver_within=60)
        assert len(outcome.accepted) == 5 and not outcome.lost, outcome.summary()
    finally:
        in_container("lb", block.replace("-I OUTPUT", "-D OUTPUT"), check=False)

    # relay1 runs the first copy's setting; relay2 gets another by hand: the example itself then changes both,
    # and that deploy also leaves the lab as the example says for the tests after this one.
    in_container("relay2", "postconf -e message_size_limit=26214402")
    try:
        stream = MailStream(EXAMPLE)
        with StateWatch() as watch:
            stream.start(count=40, rate=1)
            time.sleep(3)
            result, steps = deploy(EXAMPLE)
            outcome = stream.wait(deliver_within=120)
        assert result.returncode == 0, result.stdout + result.stderr
        for relay in RELAYS:
            assert [s["action"] for s in steps[relay]] == ["drained", "back"], steps[relay]
            assert watch.drained(relay), f"HAProxy never showed {relay} drained"
        assert not watch.together(), "both relays were out of the rotation at once"
        assert main_cf_size("relay1") == main_cf_size("relay2") == "26214400"
        assert outcome.sent == 40 and len(outcome.accepted) == 40, outcome.summary()
        assert not outcome.lost, outcome.summary()
        print("deploy under stream:", outcome.summary(), {r: steps[r] for r in RELAYS})
    except BaseException:
        deploy(EXAMPLE)  # the lab as the example says, for the tests after this one
        raise
    assert wait_in_rotation() == {"relay1": "up", "relay2": "up"}


def test_maps_wait_for_a_relays_sessions_to_end_before_changing_it(lab, tmp_path):
    """A slow sender holds a session through the balancer while `maps` changes the recipients: the
    relay it landed on stays drained until that session has ended, and its message gets through."""
    copy = tmp_path / "example"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns(".mailforge"))
    (copy / "users.txt").write_text((copy / "users.txt").read_text() + "rotation-test-user\n")
    held = MailStream(EXAMPLE)
    try:
        with StateWatch() as watch:
            held.start(count=1, rate=1, hold=8)
            deadline = time.monotonic() + 30
            while not any(s.sessions for s in servers(balancer()).values()) and time.monotonic() < deadline:
                time.sleep(0.2)
            [holder] = [name for name, s in servers(balancer()).items() if s.sessions]
            result = mailforge("maps", str(copy), "--lab", "--json")
            outcome = held.wait(deliver_within=60)
        assert result.returncode == 0, result.stdout + result.stderr
        pushed = json.loads(result.stdout)["summary"]["pushed"]
        for relay in RELAYS:
            assert [s["action"] for s in pushed[relay]["rotation"]] == ["drained", "back"], pushed[relay]
        drained = pushed[holder]["rotation"][0]
        assert drained["seconds"] >= 3 and "no session left" in drained["detail"], drained
        assert watch.drained(holder) and not watch.together()
        assert pushed["core"]["rotation"] == []
        assert len(outcome.accepted) == 1 and not outcome.lost, outcome.summary()
    finally:
        result = mailforge("maps", str(EXAMPLE), "--lab", "--force")
        assert result.returncode == 0, result.stdout + result.stderr
    assert wait_in_rotation() == {"relay1": "up", "relay2": "up"}
