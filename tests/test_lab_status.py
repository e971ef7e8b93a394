"""`mailforge status` and `mailforge queue` on the example cluster in the lab: what an operator sees
when a relay is drained or the core is down, and the queue commands acting on real deferred mail.

Runs when MAILFORGE_LAB=1 (needs the container lab). Every test puts back what it breaks (the core's
Postfix, relay1's place in the balancer's rotation) in a `finally`.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import EXAMPLE, in_container, mailforge, rows
from mailstream import MailStream, StreamOutcome

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they start containers)"),
]

RELAYS = ("relay1", "relay2")


def status(*args: str) -> tuple[int, dict]:
    result = mailforge("status", str(EXAMPLE), "--lab", "--json", *args, timeout=300)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def queue(verb: str, *args: str) -> dict:
    result = mailforge("queue", verb, str(EXAMPLE), "--lab", "--json", *args, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def by_row(envelope: dict) -> dict[tuple[str, str], dict]:
    return {(r["host"], r["name"]): r for r in rows(envelope)}


def relays_deferred() -> int:
    """Messages in the relays' deferred queues, as Postfix lists them (not as mailforge counts them)."""
    return sum(in_container(relay, "postqueue -j").count('"queue_name": "deferred"') for relay in RELAYS)


def balancer(command: str) -> str:
    script = (
        f"import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/haproxy/admin.sock'); s.sendall(b'{command}\\n'); print(s.recv(65536).decode())"
    )
    return in_container("lb", f'python3 -c "{script}"')


def test_a_healthy_cluster_is_all_well_once_and_watched(lab):
    code, envelope = status()
    assert code == 0 and envelope["summary"]["problems"] == []
    found = by_row(envelope)
    assert {k for k in found if k[1].startswith("postfix")} == {(h, "postfix (/etc/postfix)") for h in ("relay1", "relay2", "core")}
    assert found["lb", "relay relay1"]["state"] == "up" and found["lb", "relay relay2"]["state"] == "up"
    watched = mailforge("status", str(EXAMPLE), "--lab", "--watch", "--count", "2", "--interval", "0.5", timeout=300)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert watched.stdout.count("all well: 3 Postfix instances running") == 2, watched.stdout  # into a pipe, each refresh follows the last
    assert "refresh 1 of 2" in watched.stdout and "refresh 2 of 2" in watched.stdout


def test_a_drained_relay_is_out_of_rotation(lab):
    try:
        assert balancer("set server relays/relay1 state drain").strip() == ""
        code, envelope = status()
        assert code == 1
        assert envelope["summary"]["problems"] == ["relay1 is out of rotation on lb: DRAIN"]
        relay1 = by_row(envelope)["lb", "relay relay1"]
        assert (relay1["status"], relay1["ok"]) == ("drain", False)
        table = mailforge("status", str(EXAMPLE), "--lab", timeout=300)
        assert table.returncode == 1 and "relays as balancer lb sees them" in table.stdout and "drain" in table.stdout
    finally:
        balancer("set server relays/relay1 state ready")
    assert status()[0] == 0


def delivered(stream: MailStream, accepted: list[str], expected: int, seconds: int = 60) -> set[str]:
    """The accepted messages found in the core's Maildir, once `expected` of them are there (or `seconds` pass)."""
    outcome = StreamOutcome(len(accepted), accepted, {})
    deadline = time.monotonic() + seconds
    while True:
        outcome = stream.delivered_within(outcome, 0)
        if len(outcome.delivered) >= expected or time.monotonic() >= deadline:
            return outcome.delivered
        time.sleep(1)


def test_mail_deferred_while_the_core_is_down_then_held_released_deleted_and_flushed(lab):
    """Three messages through the front door while the core's Postfix is stopped: status shows the core
    down and the mail deferred on the relays with the reason, old only for --max-age 0; held while the
    core is down, it stays held (and is not aged) once the core is back; delete one by id, release and
    flush deliver the other two."""
    stream = MailStream(EXAMPLE)
    assert relays_deferred() == 0
    try:
        in_container("core", "postfix stop")
        sent = stream.start(3, 5).wait(deliver_within=0)
        assert len(sent.accepted) == 3, sent.summary()
        for _ in range(30):  # the relays defer each message at its first attempt at the core
            if relays_deferred() == 3:
                break
            time.sleep(1)
        code, envelope = status()
        assert code == 1
        found = by_row(envelope)
        assert found["core", "postfix (/etc/postfix)"]["status"] == "stopped"
        assert "core: postfix not running (/etc/postfix)" in envelope["summary"]["problems"]
        assert envelope["summary"]["queued"]["deferred"] == 3
        reasons = [r["reason"] for relay in RELAYS for r in found[relay, "postfix (/etc/postfix)"]["reasons"]]
        assert reasons and all(r.startswith("connect to 10.232.0.30[10.232.0.30]:25: Connection refused") for r in reasons), reasons

        # Aged by --max-age: the problems name the oldest deferred message only when it is older.
        code, envelope = status("--max-age", "1h")
        assert code == 1 and not any("oldest message" in p for p in envelope["summary"]["problems"])  # young; the core's stop is the problem
        code, envelope = status("--max-age", "0")
        assert code == 1 and any(
            p.startswith(("relay1: oldest message in deferred", "relay2: oldest message in deferred")) for p in envelope["summary"]["problems"]
        )

        # Held while the core is still down (the relays retry a private next hop within seconds).
        held = queue("hold", "--all", "--queue", "deferred")
        assert held["summary"]["count"] == 3 and len(held["summary"]["ids"]) == 3
        in_container("core", "postfix start")
        code, envelope = status("--max-age", "0")
        assert code == 0 and envelope["summary"]["queued"]["hold"] == 3, envelope["summary"]  # held mail is never aged

        victim = held["summary"]["ids"][0]
        deleted = queue("delete", victim)
        assert deleted["summary"]["ids"] == [victim] and deleted["summary"]["count"] == 1

        released = queue("release", "--all")
        assert released["summary"]["count"] == 2 and sorted(released["summary"]["ids"]) == sorted(held["summary"]["ids"][1:])

        flushed = queue("flush", "--wait", "30")
        assert flushed["summary"]["count"] == 2
        assert sum(len(r["delivered"]) for r in rows(flushed)) == 2, flushed
        assert len(delivered(stream, sent.accepted, 2)) == 2  # the two kept reach the core, the deleted one never does
        assert status()[1]["summary"]["queued"] == {"maildrop": 0, "incoming": 0, "active": 0, "deferred": 0, "hold": 0}
    finally:
        in_container("core", "postfix status >/dev/null 2>&1 || postfix start")
        for relay in RELAYS:
            in_container(relay, "postsuper -H ALL >/dev/null 2>&1; postqueue -f")
