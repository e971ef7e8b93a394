"""The ELB layout live (inventories/elb): relays behind an external balancer, two cores.

Its lab has no host for the cloud's balancer, so `lab up` gives it a stand-in (HAProxy in a
container of its own at an address in `source_networks`, PROXY v2 as the inventory says, plain TCP
health checks); `verify --lab` sends its mail through it. On that lab: a stopped core's mail goes to
the other core; after both cores were down, the relays deliver their backlog within the bound their
rendered retry settings give, with nobody flushing; and a deploy under the inventory's rotation
hooks (the stand-in's own `mailforge-standin drain|ready`, as the AWS CLI would be) drains each
relay in its turn while a stream of mail loses nothing. One lab for all of it, brought up once and
removed at the end (MAILFORGE_LAB_KEEP=1 keeps it). Runs when MAILFORGE_LAB=1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import MAILFORGE, REPO, engine_env, rows
from mailstream import MailStream

from mailforge import lab as lab_module
from mailforge.inventory import load_inventory
from mailforge.remote import shell_from_spec
from mailforge.render.postfix import backlog_bound
from mailforge.rotation import servers

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they start containers)"),
]

ELB = REPO / "inventories" / "elb"
RELAYS = ("relay1", "relay2")
CORES = ("core1", "core2")


def mailforge(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    """This checkout's mailforge, with the engine's environment (the rotation hooks run `docker exec`)."""
    return subprocess.run([str(MAILFORGE), *args], capture_output=True, text=True, timeout=timeout, env=engine_env())


def in_elb(host: str, script: str, check: bool = True) -> str:
    """A shell script in one of the ELB lab's containers (relay1, core1, elb: the stand-in, ...)."""
    result = subprocess.run(["docker", "exec", f"mf-elb-{host}", "sh", "-c", script], env=engine_env(), capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result.stdout


def stand_in():
    return shell_from_spec("docker://mf-elb-elb", "elb", env=engine_env())


def states() -> dict[str, str]:
    return {name: s.state for name, s in servers(stand_in(), lab_module.STAND_IN_SOCKET).items()}


def delivered_on(core: str, token: str) -> int:
    return int(in_elb(core, f"grep -rl {token} /var/mail/vhosts/ 2>/dev/null | wc -l"))


@pytest.fixture(scope="module")
def elb_lab():
    started = time.monotonic()
    up = mailforge("lab", "up", str(ELB), timeout=1800)
    assert up.returncode == 0, up.stdout + up.stderr
    print(f"lab up of the ELB layout: {time.monotonic() - started:.0f} s")
    yield ELB
    if os.environ.get("MAILFORGE_LAB_KEEP") != "1":
        down = mailforge("lab", "down", str(ELB), "--json")
        assert down.returncode == 0, down.stdout + down.stderr
        assert "mf-elb-elb" in json.loads(down.stdout)["summary"]["removed"]  # the stand-in is the lab's, and goes with it


def test_verify_passes_through_the_stand_in_balancer(elb_lab):
    """The stand-in sits inside the balancer's source_networks and checks the relays with a plain TCP
    connect (L4OK, not an SMTP dialogue); every check of verify passes, the mail through it: the
    relays saw the client's own address in its PROXY header, and refused the listed spammer for it."""
    inventory = load_inventory(ELB)
    [lb] = inventory.topology.load_balancers
    address, port = lab_module.front_door(inventory)
    assert any(ipaddress.ip_address(address) in ipaddress.ip_network(n) for n in lb.source_networks)
    deadline = time.monotonic() + 60  # a fresh stand-in's checks mark the relays up within a few seconds
    while (health := {n: s.check for n, s in servers(stand_in(), lab_module.STAND_IN_SOCKET).items()}) != {r: "L4OK" for r in RELAYS}:
        assert time.monotonic() < deadline, health
        time.sleep(1)

    result = mailforge("verify", str(ELB), "--lab", "--json", "--wait", "30")
    checks = {c["name"]: c for c in rows(json.loads(result.stdout))}
    assert result.returncode == 0, [c for c in checks.values() if not c["ok"]]
    assert checks["relay logs show the client's own address"]["ok"]
    assert checks["DNSBL-listed client is refused"]["ok"]
    assert checks["message arrives in the core's mailbox of abuse@example.net"]["detail"] == "found on core1"  # the first of the failover list
    assert f"to [{address}]:{port}" in in_elb("relay1", "grep CONNECT /var/log/mail.log") + in_elb("relay2", "grep CONNECT /var/log/mail.log")


def test_a_stopped_core_s_mail_goes_to_the_other_core(elb_lab):
    in_elb("core1", "postfix stop")
    try:
        stream = MailStream(ELB)
        outcome = stream.start(count=10, rate=4).wait(deliver_within=60)
    finally:
        in_elb("core1", "postfix start")
    print("core1 stopped:", outcome.summary())
    assert len(outcome.accepted) == 10 and not outcome.lost, outcome.summary()
    assert (delivered_on("core1", stream.token), delivered_on("core2", stream.token)) == (0, 10)


def test_the_relays_deliver_their_backlog_soon_after_the_cores_return(elb_lab):
    """Both cores down: the relays accept the mail and queue it. Once the cores answer again, the
    relays deliver all of it within the bound of their rendered retry settings (`backlog_bound`),
    nobody flushing a queue. With Postfix's defaults the same backlog took 447 s (docs/rendered-files.md)."""
    bound = backlog_bound()
    stream = MailStream(ELB)
    for core in CORES:
        in_elb(core, "postfix stop")
    try:
        outcome = stream.start(count=10, rate=5).wait(deliver_within=0)
        assert len(outcome.accepted) == 10 and not outcome.delivered, outcome.summary()
        time.sleep(20)  # an outage long enough for every message to be tried, deferred and aged
        queued = {relay: int(in_elb(relay, f"grep -rl {stream.token} /var/spool/postfix/deferred /var/spool/postfix/active | wc -l")) for relay in RELAYS}
        assert sum(queued.values()) == 10, queued  # every message waits in a relay's queue
    finally:
        for core in CORES:
            in_elb(core, "postfix start")
    outcome = stream.delivered_within(outcome, bound + 60)  # looks past the bound, to tell by how much it was missed
    print(f"cores back: {outcome.summary()}, queued on the relays {queued}, last delivery {outcome.last_delivery_seconds} s after (bound {bound} s)")
    assert not outcome.lost, outcome.summary()
    assert outcome.last_delivery_seconds is not None and outcome.last_delivery_seconds <= bound + 5, outcome.last_delivery_seconds


def with_lab_hooks(where: Path) -> Path:
    """The ELB inventory with its lab rotation hooks on, and another message_size_limit: a deploy
    changes every relay, each taken out of the stand-in's rotation by the hooks."""
    copy = where / "elb"
    shutil.copytree(ELB, copy, ignore=shutil.ignore_patterns(".mailforge"))
    topology = copy / "topology.yml"
    text = topology.read_text()
    hooks = "    # rotation:\n    #   take_out: docker exec mf-elb-elb mailforge-standin drain {relay}\n    #   put_back: docker exec mf-elb-elb mailforge-standin ready {relay}\n"
    assert hooks in text and "policy:\n" in text
    text = text.replace(hooks, hooks.replace("    # ", "    ")).replace("policy:\n", "policy:\n  message_size_limit: 20480001\n")
    topology.write_text(text)
    return copy


class StandInWatch:
    """The stand-in's view of the relays, sampled every half second while something runs."""

    def __init__(self):
        self.samples: list[dict[str, str]] = []
        self.times: list[float] = []  # time.monotonic() of each sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.monotonic() + 900  # bounded whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                sample = states()
                self.samples.append(sample)
                self.times.append(time.monotonic())
            except Exception:  # noqa: BLE001 - a sample lost is not a finding
                pass
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)

    def drained_at(self, relay: str) -> list[float]:
        return [t for t, sample in zip(self.times, self.samples, strict=True) if sample.get(relay) == "drain"]


def test_a_deploy_under_the_rotation_hooks_drains_each_relay_in_the_stand_in(elb_lab, tmp_path):
    """The hooks take each relay out of the stand-in's rotation (HAProxy says DRAIN), one at a time,
    while a stream of mail goes through the stand-in; deploy proves each relay with a PROXY probe
    from the relay itself before the put_back hook readies it; the stream loses nothing."""
    copy = with_lab_hooks(tmp_path)
    stream = MailStream(ELB)
    count, rate = 80, 0.8  # a stream longer than the deploy (65 to 75 s), so mail flows while each relay is out
    try:
        with StandInWatch() as watch:
            streaming = time.monotonic()
            stream.start(count=count, rate=rate)
            time.sleep(3)
            started = time.monotonic()
            result = mailforge("deploy", str(copy), "--lab", "--json")
            took = time.monotonic() - started
            outcome = stream.wait(deliver_within=120)
        assert result.returncode == 0, result.stdout + result.stderr
        envelope = json.loads(result.stdout)
        steps = {host: entry["results"][0]["data"].get("rotation", []) for host, entry in envelope["hosts"].items()}
        drained = {relay: [round(t - started, 1) for t in watch.drained_at(relay)] for relay in RELAYS}
        print(
            f"deploy under the hooks ({took:.0f} s; stream sent until {streaming + count / rate - started:.0f} s):",
            outcome.summary(),
            {r: [(s["action"], s["seconds"]) for s in steps[r]] for r in RELAYS},
            {r: (times[0], times[-1]) if times else None for r, times in drained.items()},
        )
        for relay in RELAYS:
            assert [s["action"] for s in steps[relay]] == ["drained", "back"], steps[relay]
            assert f"mailforge-standin drain {relay}" in steps[relay][0]["detail"]
            assert "takes mail" in steps[relay][1]["detail"] and "back in rotation on elb" in steps[relay][1]["detail"]
            assert drained[relay], f"the stand-in never showed {relay} drained"
            assert started + drained[relay][0] < streaming + count / rate, f"{relay} was drained only after the stream had ended"
            assert in_elb(relay, "postconf -h message_size_limit").strip() == "20480001"
        assert not any(all(sample.get(r) == "drain" for r in RELAYS) for sample in watch.samples), "both relays were out of the rotation at once"
        assert outcome.sent == count and len(outcome.accepted) == count and not outcome.lost, outcome.summary()
    finally:
        for relay in RELAYS:
            in_elb("elb", f"mailforge-standin ready {relay}")
        if os.environ.get("MAILFORGE_LAB_KEEP") == "1":  # a lab kept for later is left as its inventory says
            result = mailforge("deploy", str(ELB), "--lab")
            assert result.returncode == 0, result.stdout + result.stderr
    assert states() == {"relay1": "up", "relay2": "up"}
