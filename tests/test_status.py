"""`status` and `queue` without containers: what hosts answered, as captured from real Postfix and HAProxy.

The answers in tests/fixtures/status/ are the exact output of the scripts `mailforge/status.py` and
`mailforge/queues.py` send, run against real Postfix: 3.7.11 (Debian 12) on a private instance of
this machine's Postfix (mail deferred by a closed port and by a server answering 450 greylisted, one
message held, then Postfix stopped with a message in maildrop), and 3.10 (Debian 13) on the example
lab's relay while its core was stopped; `show-stat-*.csv` is HAProxy's `show stat` from the lab's
balancer with relay1 drained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import INVENTORIES, mailforge, rows, unreachable_example

from mailforge import queues, status
from mailforge.inventory import load_topology
from mailforge.rotation import ServerState, parse_stat

FIXTURES = Path(__file__).parent / "fixtures" / "status"


def answer(name: str) -> str:
    return (FIXTURES / name).read_text()


GREYLISTED = (
    "host 127.0.0.1[127.0.0.1] said: 450 4.2.0 <…>: Recipient address rejected: Greylisted, "
    "see http://postgrey.schweikert.ch/help/two.example.html (in reply to RCPT TO command)"
)


def test_postqueue_json_of_postfix_3_7_becomes_counts_ages_and_reasons():
    host = status.parse_survey("relay1", "relay", answer("bookworm-3.7-running.txt"))
    [i] = host.instances
    assert (i.directory, i.running, i.error, i.said) == ("/etc/postfix", True, None, [])
    assert i.queue.counts == {"maildrop": 0, "incoming": 0, "active": 0, "deferred": 7, "hold": 1}
    assert i.queue.oldest == {"deferred": 184, "hold": 184}  # the host's clock: 1796534900 - 1796534716
    # Four recipients greylisted with their own address in the reply: one reason, four messages.
    assert i.queue.reasons == [(GREYLISTED, 4), ("connect to 127.0.0.1[127.0.0.1]:9: Connection refused", 3)]


def test_a_stopped_instance_is_read_from_the_queue_directly():
    [i] = status.parse_survey("core", "core", answer("bookworm-3.7-stopped.txt")).instances
    assert not i.running and i.error is None
    assert i.queue.counts["maildrop"] == 1 and i.queue.counts["deferred"] == 7
    assert i.said == ["postqueue: warning: Mail system is down -- accessing queue directly (Connect to the Postfix showq service: Connection refused)"]
    assert status.instance_problems(i, None) == ["postfix not running (/etc/postfix)"]


def test_postqueue_json_of_postfix_3_10_on_a_relay_whose_core_is_down():
    [i] = status.parse_survey("relay1", "relay", answer("trixie-3.10-core-down.txt")).instances
    assert i.running and i.queue.counts["deferred"] >= 1
    assert i.queue.reasons[0][0].startswith("connect to 10.232.0.30[10.232.0.30]:25: Connection refused")


def test_an_instance_that_cannot_be_listed_says_why():
    text = (
        "@@mailforge-status@@ now 100\n@@mailforge-status@@ instance /etc/postfix-inbound\n@@mailforge-status@@ running no\n"
        "postqueue: fatal: open /etc/postfix-inbound/main.cf: No such file or directory\n@@mailforge-status@@ postqueue-exit 69\n"
    )
    [i] = status.parse_survey("mxproxy", "mxproxy", text).instances
    assert i.error == "postqueue -c /etc/postfix-inbound -j failed: postqueue: fatal: open /etc/postfix-inbound/main.cf: No such file or directory"
    with pytest.raises(status.StatusError, match="stops within"):
        status.parse_survey("x", "relay", text.rsplit("@@mailforge-status@@ postqueue-exit", 1)[0])


def test_max_age_takes_postfix_time_units_and_leaves_held_mail_alone():
    assert [status.parse_age(t) for t in ("0", "90", "90s", "30m", "1h", "2d", "1w")] == [0, 90, 90, 1800, 3600, 172800, 604800]
    with pytest.raises(status.StatusError, match="--max-age '1 hour'"):
        status.parse_age("1 hour")
    only_held = status.summarize([{"queue_name": "hold", "queue_id": "A1B2C3D4E5", "arrival_time": 0, "recipients": []}], now=86400)
    assert only_held.oldest == {"hold": 86400} and only_held.oldest_aged() is None
    [i] = status.parse_survey("relay1", "relay", answer("bookworm-3.7-running.txt")).instances
    assert [status.age_text(s) for s in (0, 59, 60, 184, 3600, 3660, 86400, 97200)] == ["0s", "59s", "1m", "3m 4s", "1h", "1h 1m", "1d", "1d 3h"]
    assert status.instance_problems(i, 184) == []
    assert status.instance_problems(i, 183) == ["oldest message in deferred (/etc/postfix) is 3m 4s old, over --max-age 3m 3s"]


def test_the_envelope_exits_1_for_findings_and_2_when_a_host_does_not_answer():
    inventory = load_topology(INVENTORIES["example"])
    running = status.parse_survey("relay1", "relay", answer("bookworm-3.7-running.txt"))
    stopped = status.parse_survey("core", "core", answer("bookworm-3.7-stopped.txt"))
    balancer = status.HostStatus("lb", "balancer", servers=parse_stat(answer("show-stat-relay1-drained.csv")))
    run = status.results_of(inventory, [balancer, running, stopped], max_age=3600)
    assert run.exit_code == 1
    assert run.summary["problems"] == ["relay1 is out of rotation on lb: DRAIN", "core: postfix not running (/etc/postfix)"]
    by_name = {(r.host, r.name): r for r in run.results}
    assert by_name["lb", "relay relay1"].status == "drain" and not by_name["lb", "relay relay1"].ok
    assert by_name["lb", "relay relay2"].status == "up" and by_name["lb", "relay relay2"].ok
    assert by_name["relay1", "postfix (/etc/postfix)"].data["oldest_deferred_seconds"] == 184
    assert by_name["relay1", "postfix (/etc/postfix)"].data["reasons"][0] == {"reason": GREYLISTED, "messages": 4}

    gone = status.HostStatus("relay2", "relay", unreachable="cannot reach relay2: no answer")
    run = status.results_of(inventory, [running, gone], max_age=None)
    assert run.exit_code == 2 and run.error == "cannot reach relay2: no answer"
    assert set(run.envelope()["hosts"]) == {"relay1", "relay2"}  # the host that answered is still reported


def test_a_relay_missing_from_the_backend_and_a_silent_balancer_are_findings():
    inventory = load_topology(INVENTORIES["example"])
    servers = parse_stat(answer("show-stat-relay1-drained.csv"))
    del servers["relay2"]
    problems = status.relay_problems(inventory, status.HostStatus("lb", "balancer", servers=servers))
    assert problems == ["relay1 is out of rotation on lb: DRAIN", "relay2 is not in lb's backend"]
    drained_and_down = {"relay1": ServerState("relay1", "drain", 0, "L4CON", "DOWN", healthy=False), "relay2": servers["relay1"]}
    drained_and_down["relay2"].relay = "relay2"
    assert status.relay_problems(inventory, status.HostStatus("lb", "balancer", servers=drained_and_down)) == [
        "relay1 is out of rotation on lb: drain (HAProxy: DOWN)",
        "relay2 is out of rotation on lb: DRAIN",
    ]
    silent = status.HostStatus("lb", "balancer", balancer_error="lb: no HAProxy answers on /run/haproxy/admin.sock")
    run = status.results_of(inventory, [silent], max_age=None)
    assert run.exit_code == 1 and [r.status for r in run.results] == ["not answering"]


# --- queue actions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action, message",
    [
        (queues.Action("delete", all=True), "add --yes"),
        (queues.Action("hold"), "name the messages"),
        (queues.Action("release", ids=("ABCDEF123",), all=True), "not both"),
        (queues.Action("delete", ids=("ALL",)), "not a Postfix queue id"),  # postsuper would read it as every message
        (queues.Action("delete", ids=("all",)), "not a Postfix queue id"),
        (queues.Action("delete", ids=("B2A20;rm",)), "not a Postfix queue id"),
        (queues.Action("hold", all=True, queue="bogus"), "--queue 'bogus'"),
        (queues.Action("delete", all=True, queue="maildrop", confirmed=True), "--queue .maildrop.: expected one of incoming, active, deferred, hold"),
        (queues.Action("release", all=True, queue="hold"), "for hold and delete only"),
        (queues.Action("hold", ids=("ABCDEF123",), wait=5), "--wait is for flush"),
    ],
)
def test_queue_actions_that_could_act_on_more_than_meant_are_refused(action, message):
    with pytest.raises(queues.QueueError, match=message):
        action.check()


def test_hold_all_deferred_says_which_messages_it_held():
    [a] = queues.parse_answer("relay1", queues.Action("hold", all=True, queue="deferred"), answer("queue-hold-all-deferred-3.7.txt"))
    assert a.error is None and a.count == 8
    assert (a.before["deferred"], a.after["deferred"], a.before["hold"], a.after["hold"]) == (8, 0, 1, 9)
    assert len(a.ids) == 8 and a.said == ["postsuper: Placed on hold: 8 messages"]
    assert queues.describe(a) == "held 8 messages; deferred 8 -> 0, hold 1 -> 9"


def test_release_and_delete_by_id():
    [a] = queues.parse_answer("relay1", queues.Action("release", ids=("B488B20C054",)), answer("queue-release-one-3.7.txt"))
    assert (a.ids, a.count, a.found) == (["B488B20C054"], 1, ["B488B20C054"])
    action = queues.Action("delete", ids=("B2A2020D015", "9C1F320C382", "NOSUCH1234"))
    [a] = queues.parse_answer("relay1", action, answer("queue-delete-two-3.7.txt"))
    assert (sorted(a.ids), a.count) == (["9C1F320C382", "B2A2020D015"], 2)
    run = queues.results_of(load_topology(INVENTORIES["example"]), action, [a], ["relay1"])
    assert run.exit_code == 1 and run.summary["not_found"] == ["NOSUCH1234"]


def test_flush_with_wait_says_what_is_still_queued():
    [a] = queues.parse_answer("relay1", queues.Action("flush", wait=2), answer("queue-flush-wait-3.7.txt"))
    assert (a.count, a.delivered, a.waited) == (1, [], 2)  # its next hop still refused: deferred again
    assert queues.describe(a) == "flushed 1 message, 0 of them no longer queued after 2 s; deferred 1 -> 1, hold 8 -> 8"


def test_the_scripts_name_only_checked_ids():
    text = queues.script(queues.Action("delete", ids=("B2A2020D015",)), ["/etc/postfix-inbound"])
    assert "postsuper -c /etc/postfix-inbound -d B2A2020D015\n" in text
    assert "postsuper -c /etc/postfix -d ALL deferred" in queues.script(queues.Action("delete", all=True, queue="deferred", confirmed=True), ["/etc/postfix"])


# --- the command line -------------------------------------------------------------------------------


def test_status_reports_every_host_it_cannot_reach_and_exits_2(tmp_path):
    result = mailforge("status", str(unreachable_example(tmp_path)), "--json", timeout=120)
    assert result.returncode == 2, result.stderr
    envelope = json.loads(result.stdout)
    assert envelope["status"] == "error" and envelope["summary"]["unreachable"] == ["lb", "relay1", "relay2", "core"]
    assert {r["host"]: r["status"] for r in rows(envelope)} == dict.fromkeys(["lb", "relay1", "relay2", "core"], "unreachable")
    table = mailforge("status", str(unreachable_example(tmp_path / "again")), timeout=120)
    assert table.returncode == 2 and "4 problems:" in table.stdout and "cannot reach core: nothing accepts SSH" in table.stdout


def test_queue_delete_all_without_yes_asks_no_host(tmp_path):
    result = mailforge("queue", "delete", str(unreachable_example(tmp_path)), "--all", timeout=120)
    assert result.returncode == 2
    assert "add --yes to confirm" in result.stderr and "cannot reach" not in result.stderr  # refused before any host was asked
    result = mailforge("queue", "flush", str(unreachable_example(tmp_path / "again")), "--limit", "lb", timeout=120)
    assert result.returncode == 2 and "lb runs no Postfix" in result.stderr
