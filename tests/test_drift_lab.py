"""`mailforge drift` on a live lab cluster: in sync after a deploy, exactly the injected drift after
each hand change, in sync again after `mailforge deploy --lab`, and nothing on any host touched.

Runs when MAILFORGE_LAB=1. The cluster is the example (the session's `lab` fixture), or, when
MAILFORGE_DRIFT_INVENTORY names another inventory (a copy of the example at other addresses and
another cluster name), that inventory's own lab, brought up here with `mailforge lab up` and taken
down at the end (unless MAILFORGE_LAB_KEEP=1). Containers are mf-<cluster>-<host>.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import EXAMPLE, engine_env, mailforge

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they start containers)"),
]

OWN = os.environ.get("MAILFORGE_DRIFT_INVENTORY")
INVENTORY = Path(OWN) if OWN else EXAMPLE


def _topology():
    from mailforge.inventory import load_inventory

    return load_inventory(INVENTORY).topology


T = _topology()
LB, RELAY1, RELAY2, CORE = T.managed_balancers[0].name, T.relays[0].name, T.relays[1].name, T.cores[0].name
BACKEND_PORT = T.backend_port


@pytest.fixture(scope="module")
def cluster(request):
    if not OWN:
        request.getfixturevalue("lab")
        yield INVENTORY
        return
    up = mailforge("lab", "up", str(INVENTORY))
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    yield INVENTORY
    if os.environ.get("MAILFORGE_LAB_KEEP") != "1":
        mailforge("lab", "down", str(INVENTORY))


def on(host: str, script: str, check: bool = True) -> str:
    result = subprocess.run(
        ["docker", "exec", "-i", f"mf-{T.cluster}-{host}", "sh", "-c", script], env=engine_env(), capture_output=True, text=True, timeout=300
    )
    if check:
        assert result.returncode == 0, f"{host}: {script}: {result.stderr}"
    return result.stdout


def drift(*extra: str) -> tuple[int, dict, float]:
    started = time.monotonic()
    result = mailforge("drift", str(INVENTORY), "--lab", "--json", *extra)
    elapsed = time.monotonic() - started
    assert result.returncode in (0, 1), result.stdout[-2000:] + result.stderr[-2000:]
    envelope = json.loads(result.stdout)
    items = [r["data"] for entry in envelope["hosts"].values() for r in entry["results"]]
    return result.returncode, {**envelope, "items": items, "in_sync": envelope["status"] == "ok", **envelope["summary"]}, elapsed


def not_in_sync(report: dict) -> set[tuple[str, str, str, str]]:
    return {(i["host"], i["kind"], i["name"], i["status"]) for i in report["items"] if i["status"] != "in sync"}


def item(report: dict, host: str, kind: str, name: str) -> dict:
    return next(i for i in report["items"] if (i["host"], i["kind"], i["name"]) == (host, kind, name))


def deploy() -> None:
    result = mailforge("deploy", str(INVENTORY), "--lab")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def assert_in_sync() -> dict:
    rc, report, _ = drift()
    assert not_in_sync(report) == set() and rc == 0, not_in_sync(report)
    return report


def test_a_deployed_cluster_is_in_sync(cluster):
    rc, report, elapsed = drift()
    assert rc == 0 and report["in_sync"], not_in_sync(report)
    assert set(report["hosts"]) == {LB, RELAY1, RELAY2, CORE}
    kinds = {i["kind"] for i in report["items"]}
    assert kinds == {"package", "service", "instance", "main.cf", "master.cf", "map", "file", "tls file", "firewall"}
    print(f"drift of {len(report['hosts'])} hosts in sync: {report['seconds']} s in drift, {elapsed:.1f} s wall")
    assert elapsed < 60


# What drift must change on no host: every file's bytes and metadata under the configuration
# directories, the loaded rules, and the long-lived daemons (a reload replaces qmgr; a restart, master).
SNAPSHOT = r"""
for d in /etc/postfix* /etc/haproxy /etc/iptables /var/lib/mailforge; do
  [ -d "$d" ] || continue
  find "$d" -type f -exec sha256sum {} +
  find "$d" -printf '%p %T@ %m %U %G %s\n'
done | sort
iptables-save | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
ip6tables-save | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
ps -e -o pid=,comm= | awk '$2 ~ /^(master|qmgr|haproxy|rsyslogd)$/' | sort -n
"""


def _delete_backend_rule(host: str) -> str:
    """Delete the relay's rule that admits the balancer to postscreen, live; returns the rule."""
    rule = on(host, f"iptables -S INPUT | grep -e '--dport {BACKEND_PORT} '").strip()
    assert rule.startswith("-A INPUT"), rule
    on(host, f"iptables -D {rule[3:]}")  # iptables -S quotes the comment for the shell
    return rule


# Hand changes, each to its own host and item so that several can be made at once and each must be
# reported exactly (one drift run and one repairing deploy per group: every deploy of the lab costs a
# minute). Each: (host, change, what undoes it before deploy or None, the items drift must report).
POSTMULTI_EXTRA = (
    RELAY1,
    "postmulti -e init && postmulti -I postfix-extra -e create",
    "postmulti -i postfix-extra -e destroy",
    {
        (RELAY1, "instance", "/etc/postfix-extra", "unexpected"),
        (RELAY1, "file", "/etc/postfix/main.cf", "drifted"),
        # postmulti registers the instance in the default instance's main.cf
        (RELAY1, "main.cf", "multi_instance_enable", "unexpected"),
        (RELAY1, "main.cf", "multi_instance_wrapper", "unexpected"),
        (RELAY1, "main.cf", "multi_instance_directories", "unexpected"),
    },
)
MAP_WITHOUT_POSTMAP = (
    RELAY1,
    "sed -i '/^abuse@example.com /d' /etc/postfix/relay_recipients",
    None,
    {(RELAY1, "map", "/etc/postfix/relay_recipients", "drifted")},
)
MAIN_CF = (
    RELAY1,
    "postconf -e smtpd_helo_required=no",
    None,
    {(RELAY1, "main.cf", "smtpd_helo_required", "drifted"), (RELAY1, "file", "/etc/postfix/main.cf", "drifted")},
)
MAP_POSTMAPPED = (
    RELAY2,
    "echo 'intruder@example.com OK' >> /etc/postfix/relay_recipients && postmap /etc/postfix/relay_recipients",
    None,
    {(RELAY2, "map", "/etc/postfix/relay_recipients", "drifted")},
)


def _inject(*changes) -> set:
    expected: set = set()
    for host, change, _, items in changes:
        on(host, change)
        expected |= items
    return expected


def _undo(*changes) -> None:
    for host, _, cleanup, _ in changes:
        if cleanup:
            on(host, cleanup)  # deploy puts back what the inventory renders; it removes nothing it did not render


def test_drift_reports_an_extra_instance_and_a_map_without_postmap_and_changes_nothing(cluster):
    """drift reports exactly what was changed by hand, and repairs nothing: every file's bytes and
    metadata, the loaded rules and the long-lived daemons are as before on every host. Then deploy
    (it removes nothing it did not render: the extra instance goes by hand) brings the cluster back."""
    hosts = [LB, RELAY1, RELAY2, CORE]
    changes = (POSTMULTI_EXTRA, MAP_WITHOUT_POSTMAP)
    try:
        expected = _inject(*changes)
        before = {h: on(h, SNAPSHOT) for h in hosts}
        assert all("master" in before[h] for h in (RELAY1, RELAY2, CORE)) and "haproxy" in before[LB]
        rc, report, elapsed = drift()
        assert rc == 1 and not report["in_sync"]
        assert not_in_sync(report) == expected, not_in_sync(report) ^ expected
        print(f"an extra instance and a map without postmap: drift {report['seconds']} s, {elapsed:.1f} s wall")
        assert item(report, RELAY1, "instance", "/etc/postfix-extra")["live"] == "postfix-extra (disabled)"
        found = item(report, RELAY1, "map", "/etc/postfix/relay_recipients")
        assert "+abuse@example.com OK" in found["diff"].splitlines() and "edited without postmap" in found["detail"]
        assert mailforge("drift", str(INVENTORY), "--lab", "--verbose").returncode == 1
        after = {h: on(h, SNAPSHOT) for h in hosts}
        for h in hosts:
            assert after[h] == before[h], h
    finally:
        _undo(*changes)
        deploy()
    assert_in_sync()


def test_a_main_cf_change_a_postmapped_map_and_a_deleted_rule_are_reported_and_put_back(cluster):
    """Three drifts on two relays at once, each reported with its diff. The firewall role compares the
    live filter table with the file, not just the file with the render: a rule deleted by hand is loaded
    again by the next deploy, and drift agrees."""
    changes = (MAIN_CF, MAP_POSTMAPPED)
    try:
        expected = _inject(*changes)
        rule = _delete_backend_rule(RELAY2)
        expected.add((RELAY2, "firewall", "iptables", "drifted"))
        rc, report, elapsed = drift()
        assert rc == 1 and not report["in_sync"]
        assert not_in_sync(report) == expected, not_in_sync(report) ^ expected
        print(f"main.cf, a postmapped map, a deleted rule: drift {report['seconds']} s, {elapsed:.1f} s wall")
        found = item(report, RELAY1, "main.cf", "smtpd_helo_required")
        assert (found["desired"], found["live"], found["instance"]) == ("yes", "no", "/etc/postfix")
        assert "+smtpd_helo_required = yes" in item(report, RELAY1, "file", "/etc/postfix/main.cf")["diff"]
        found = item(report, RELAY2, "map", "/etc/postfix/relay_recipients")
        assert "-intruder@example.com OK" in found["diff"].splitlines() and "postmap" not in found["detail"]
        assert f"+{rule}" in item(report, RELAY2, "firewall", "iptables")["diff"].splitlines()
    finally:
        deploy()
    assert_in_sync()


def test_a_stopped_haproxy_is_reported_and_started_again(cluster):
    """On its own: with haproxy down, a deploy that changed a relay could not take it out of rotation."""
    on(LB, "service haproxy stop")
    try:
        rc, report, _ = drift()
        assert rc == 1 and not_in_sync(report) == {(LB, "service", "haproxy", "drifted")}
        assert item(report, LB, "service", "haproxy")["live"].startswith("stopped")
    finally:
        deploy()
    assert_in_sync()
