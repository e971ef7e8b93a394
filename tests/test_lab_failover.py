"""A relay dies under a stream of mail through the balancer: every message is accepted and delivered.

Each test breaks relay1 of the example lab while a bounded stream of messages goes through the
balancer at a fixed rate, then repairs it:

- its Postfix stopped: its port refuses connections. HAProxy sends a refused connection on to
  relay2 at once (`retries`, `option redispatch 1`), and its health checks take relay1 out within
  a few seconds. Without redispatch, the messages HAProxy sends relay1 before that are refused.
- its container paused: its kernel still completes the TCP handshake, but nothing answers. No
  balancer can move a connection a relay has accepted; the health checks (no greeting within
  `timeout check`) take it out within seconds, and the few sessions it took wait until it comes
  back and then go on (the client's timeout is longer than the pause).

Needs the lab (MAILFORGE_LAB=1). Each fault is repaired in `finally`, and the test ends only once
HAProxy counts relay1 in its rotation again. `-s` prints each fault's figures.
"""

from __future__ import annotations

import csv
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from conftest import EXAMPLE, engine_env, in_container
from mailstream import MailStream, StreamOutcome

from mailforge import lab as lab_module
from mailforge.inventory import load_inventory
from mailforge.remote import HostShell
from mailforge.rotation import runtime, servers

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they start containers)"),
]

RELAY = "relay1"
COUNT, RATE = 40, 2.0  # 20 s of mail, a message every half second: a fault's first seconds always meet some
FAULT_AFTER = 3.0  # seconds of stream before the fault
FAULT_SECONDS = 15.0  # how long the relay stays broken; longer than HAProxy needs to take a hung relay out
CLIENT_TIMEOUT = 60  # each message's SMTP timeout at the client: longer than the pause


def balancer() -> HostShell:
    return lab_module.reaches(load_inventory(EXAMPLE))["lb"].shell()


def state(lb: HostShell) -> str:
    return servers(lb)[RELAY].state


def counters(lb: HostShell) -> dict[str, str]:
    """RELAY's row of HAProxy's `show stat`: connection errors (econ), retries (wretr), redispatches
    away from it (wredis), its last check (check_status, check_desc), ..."""
    lines = runtime(lb, ["show stat"])[0].strip().splitlines()
    rows = csv.DictReader([lines[0][2:], *lines[1:]])
    return next(row for row in rows if row["pxname"] == "relays" and row["svname"] == RELAY)


def wait_for(lb: HostShell, wanted: str, seconds: float, since: float | None = None) -> float | None:
    """Seconds from `since` (a time.monotonic(), by default now) until HAProxy says RELAY is `wanted`
    (up, down), asked about twice a second; None if not within `seconds` of it."""
    started = time.monotonic() if since is None else since
    for _ in range(int(seconds * 4)):  # bounded; each question takes a round trip over SSH
        if state(lb) == wanted:
            return round(time.monotonic() - started, 1)
        if time.monotonic() - started > seconds:
            return None
        time.sleep(0.25)
    return None


def docker(*args: str) -> None:
    result = subprocess.run(["docker", *args], env=engine_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@dataclass
class Fault:
    """What a stream went through: its outcome, seconds from the command that broke RELAY until
    HAProxy marked it down and from the command that repaired it until HAProxy marked it up, and
    what HAProxy counted for RELAY meanwhile."""

    outcome: StreamOutcome
    down: float | None
    up: float | None
    redispatched: int  # connections RELAY failed that HAProxy sent on to another relay (wredis)
    retried: int  # connections RELAY failed that HAProxy tried on RELAY again (wretr)
    last_check: str  # why the failing check failed, as HAProxy said while RELAY was down

    def report(self, fault: str) -> str:
        return (
            f"{fault}: {self.outcome.summary()}; HAProxy marked {RELAY} down {self.down} s after the fault "
            f"({self.last_check}), up {self.up} s after the repair; {self.redispatched} connection(s) {RELAY} failed sent on "
            f"to another relay, {self.retried} tried on {RELAY} again; {len(self.waited)} session(s) took over 5 s "
            f"(longest {max(self.outcome.seconds.values(), default=0)} s)"
        )

    @property
    def waited(self) -> list[str]:
        """The messages whose session took over 5 s: those a hung relay held until it came back."""
        return sorted(token for token, seconds in self.outcome.seconds.items() if seconds > 5)


def under_fault(break_it: Callable[[], None], repair: Callable[[], None]) -> Fault:
    """A stream through the balancer with RELAY broken for FAULT_SECONDS in its middle."""
    lb = balancer()
    assert wait_for(lb, "up", 30) is not None, f"HAProxy does not count {RELAY} in before the test"
    before = counters(lb)
    last_check = ""
    stream = MailStream(EXAMPLE).start(COUNT, RATE, timeout=CLIENT_TIMEOUT)
    time.sleep(FAULT_AFTER)
    broken = time.monotonic()
    try:
        break_it()
        down = wait_for(lb, "down", FAULT_SECONDS, since=broken)
        row = counters(lb)
        last_check = f"{row['check_status']} {row['check_desc']}".strip()
        time.sleep(max(0.0, broken + FAULT_SECONDS - time.monotonic()))
    finally:
        repaired = time.monotonic()
        repair()
        up = wait_for(lb, "up", 30, since=repaired)
    assert up is not None, f"HAProxy did not count {RELAY} in again within 30 s of its repair"
    after = counters(lb)
    outcome = stream.wait(deliver_within=120)
    return Fault(outcome, down, up, *(int(after[k] or 0) - int(before[k] or 0) for k in ("wredis", "wretr")), last_check)


def test_a_stopped_relay_costs_no_message(lab):
    fault = under_fault(lambda: in_container(RELAY, "postfix stop"), lambda: in_container(RELAY, "postfix status || postfix start"))
    print("\n" + fault.report("Postfix stopped"))
    assert fault.outcome.not_accepted == {}, fault.report("some messages were not accepted")
    assert len(fault.outcome.accepted) == COUNT and fault.outcome.lost == [], fault.report("some messages were not delivered")
    assert fault.down is not None, fault.report(f"HAProxy did not take {RELAY} out within {FAULT_SECONDS} s of its Postfix stopping")
    assert fault.redispatched > 0, fault.report(f"no connection met the stopped {RELAY} before HAProxy took it out, so nothing was shown")


def test_a_hung_relay_costs_no_message(lab):
    container = f"mf-example-{RELAY}"
    paused = []

    def pause() -> None:
        docker("pause", container)
        paused.append(container)

    def unpause() -> None:
        if paused:
            docker("unpause", container)

    fault = under_fault(pause, unpause)
    print("\n" + fault.report("container paused"))
    assert fault.down is not None, fault.report(f"HAProxy did not take the hung {RELAY} out within {FAULT_SECONDS} s")
    assert fault.outcome.not_accepted == {}, fault.report("some messages were not accepted")
    assert len(fault.outcome.accepted) == COUNT and fault.outcome.lost == [], fault.report("some messages were not delivered")
