"""`mailforge maps` on the example cluster in the lab: what a user-list change does to live relays.

Runs when MAILFORGE_LAB=1 (needs the container lab). Each test starts from the example's own
recipients and puts them back at the end, so the lab stays as the example says.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import EXAMPLE, MAILFORGE, engine_env, in_container, mailforge

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they start containers)"),
]

RELAYS = ("relay1", "relay2")
MAPS = {"relay1": "/etc/postfix/relay_recipients", "relay2": "/etc/postfix/relay_recipients", "core": "/etc/postfix/virtual_mailboxes"}


def maps_report(stdout: str) -> dict:
    """`mailforge maps --json`'s envelope as the tests read it: the summary (changed, pushed per host),
    and every map compared (the `data` of each result)."""
    envelope = json.loads(stdout)
    maps = [r["data"] for entry in envelope["hosts"].values() for r in entry["results"] if r["name"] != "push"]
    return {**envelope["summary"], "hosts": envelope["summary"]["pushed"], "maps": maps}


def variant(tmp_path: Path, name: str, users: list[str] | None = None, addresses: list[str] | None = None) -> Path:
    """A copy of the example inventory (same cluster, same lab) with other recipients."""
    target = tmp_path / name
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".mailforge"))
    if users is not None:
        (target / "users.txt").write_text("".join(f"{u}\n" for u in users))
    if addresses is not None:
        text = (target / "topology.yml").read_text()
        start = text.index("  addresses:\n")
        end = text.index("\n\n", start)
        listed = "".join(f"    - {a}\n" for a in addresses) if addresses else ""
        text = text[:start] + ("  addresses:\n" + listed if addresses else "  addresses: []\n") + text[end + 1 :]
        (target / "topology.yml").write_text(text)
    return target


def example_users() -> list[str]:
    return [line.strip() for line in (EXAMPLE / "users.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]


def live_state() -> dict[str, str]:
    """Per host: sha256 and mtime of the recipients map and of its database."""
    return {host: in_container(host, f"sha256sum {path} {path}.db; stat -c '%Y.%i' {path} {path}.db") for host, path in MAPS.items()}


def lookup(host: str, address: str) -> str:
    return in_container(host, f"postmap -q {address} hash:{MAPS[host]} || true").strip()


def rcpt_code(address: str) -> int:
    """The reply to RCPT TO for `address`, through the balancer from the lab's client."""
    script = (
        "import smtplib\n"
        "c = smtplib.SMTP('10.232.0.10', 25, timeout=30); c.ehlo('client.lab-sender.test')\n"
        f"c.mail('probe@lab-sender.test'); print(c.rcpt({address!r})[0]); c.quit()\n"
    )
    return int(in_container("client", "python3 -", stdin=script).strip())


@pytest.fixture
def restore(lab):
    yield
    result = mailforge("maps", str(EXAMPLE), "--lab", "--force")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_change_touches_no_host(lab, restore):
    assert mailforge("maps", str(EXAMPLE), "--lab", "--force").returncode == 0  # start from the example
    before = live_state()
    result = mailforge("maps", str(EXAMPLE), "--lab", "--json")
    assert result.returncode == 0, result.stderr
    report = maps_report(result.stdout)
    assert report["changed"] is False and report["hosts"] == {}
    assert live_state() == before  # same bytes, same mtimes, same inodes
    text = mailforge("maps", str(EXAMPLE), "--lab")
    assert "no map changed" in text.stdout and "no host was touched" in text.stdout


def test_added_and_removed_recipients_follow_the_sources(lab, restore, tmp_path):
    inline = ["abuse@example.com", "dmarc@example.org", "tlsrpt@example.com"]  # postmaster@example.com leaves the sources
    changed = variant(tmp_path, "changed", users=[*example_users(), "newbie"], addresses=inline)

    check = mailforge("maps", str(changed), "--lab", "--check", "--json")
    assert check.returncode == 0, check.stderr
    rows = {(m["host"], m["map"]): m for m in maps_report(check.stdout)["maps"] if m["changed"]}
    assert set(rows) == {(h, p) for h, p in MAPS.items()}  # only the recipient maps, on every host that uses them
    relay_row = rows[("relay1", MAPS["relay1"])]
    assert (relay_row["added"], relay_row["removed"]) == (2, 1)
    assert "newbie@example.com OK" in relay_row["added_examples"] and relay_row["removed_examples"] == ["postmaster@example.com OK"]
    assert lookup("relay1", "newbie@example.com") == ""  # --check pushed nothing

    push = mailforge("maps", str(changed), "--lab", "--json")
    assert push.returncode == 0, push.stdout + push.stderr
    pushed = maps_report(push.stdout)["hosts"]
    assert {h: v["pushed"] for h, v in pushed.items()} == {h: [p] for h, p in MAPS.items()}
    for relay in RELAYS:
        assert lookup(relay, "newbie@example.org") == "OK"
        assert lookup(relay, "postmaster@example.com") == ""  # gone from every relay, no stale entry
    assert lookup("core", "newbie@example.com") == "example.com/newbie/"
    assert rcpt_code("newbie@example.org") == 250
    assert rcpt_code("postmaster@example.com") == 550

    again = mailforge("maps", str(changed), "--lab", "--json")
    assert maps_report(again.stdout)["changed"] is False


def test_a_truncated_export_is_refused_without_force(lab, restore, tmp_path):
    assert mailforge("maps", str(EXAMPLE), "--lab", "--force").returncode == 0
    truncated = variant(tmp_path, "truncated", users=example_users()[:2])
    before = live_state()
    refused = mailforge("maps", str(truncated), "--lab")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "refused:" in refused.stderr and "would lose" in refused.stderr and "--force" in refused.stderr
    assert "for example" in refused.stderr and "@example." in refused.stderr
    assert live_state() == before  # nothing pushed anywhere

    empty = variant(tmp_path, "empty", users=[], addresses=[])
    result = mailforge("maps", str(empty), "--lab")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "would become empty" in result.stderr
    assert live_state() == before

    forced = mailforge("maps", str(truncated), "--lab", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert lookup("relay1", f"{example_users()[-1]}@example.com") == ""


STREAM = r"""
import json, smtplib, sys, time
count, recipients, token = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
results = []
deadline = time.monotonic() + 240
for i in range(count):
    if time.monotonic() > deadline:
        break
    rcpt = recipients[i % len(recipients)]
    codes = []
    sent_at = time.monotonic()  # the same clock as the host's: containers share its kernel
    try:
        c = smtplib.SMTP("10.232.0.10", 25, timeout=30)
        c.ehlo("client.lab-sender.test")
        codes.append(c.mail("probe@lab-sender.test")[0])
        codes.append(c.rcpt(rcpt)[0])
        codes.append(c.data(f"From: <probe@lab-sender.test>\r\nTo: <{rcpt}>\r\nSubject: stream {token} {i}\r\n\r\n{token} {i}\r\n".encode())[0])
        c.quit()
    except smtplib.SMTPResponseException as exc:
        codes.append(exc.smtp_code)
    except Exception as exc:
        codes.append(str(exc))
    results.append([sent_at, codes])
    time.sleep(0.05)
print(json.dumps(results))
"""


def test_no_mail_lost_while_maps_are_pushed(lab, restore, tmp_path):
    """A bounded stream of mail through the balancer while the recipients maps are swapped back and forth."""
    grown = variant(tmp_path, "grown", users=[*example_users(), *(f"temp{i:03d}" for i in range(200))])
    listed = ["alice@example.com", "carol@example.org", "abuse@example.com"]
    token = uuid.uuid4().hex[:12]
    count = 200
    in_container("client", "cat > /tmp/mailforge-stream.py", stdin=STREAM)
    stream = subprocess.Popen(
        ["docker", "exec", "mf-example-client", "python3", "/tmp/mailforge-stream.py", str(count), ",".join(listed), token],
        env=engine_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pushes, windows = [], []
    time.sleep(2)  # let the stream get going
    for target in (grown, EXAMPLE, grown, EXAMPLE):
        begun = time.monotonic()
        result = subprocess.run([str(MAILFORGE), "maps", str(target), "--lab", "--force", "--json"], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        pushes.append(sum(len(h["pushed"]) for h in maps_report(result.stdout)["hosts"].values()))
        windows.append((begun, time.monotonic()))
    output, errors = stream.communicate(timeout=300)
    results = json.loads(output)
    assert pushes == [3, 3, 3, 3]  # every push swapped the maps on both relays and the core
    assert len(results) == count
    bad = [(i, codes) for i, (_, codes) in enumerate(results) if codes != [250, 250, 250]]
    assert not bad, f"{len(bad)} of {count} messages were not accepted: {bad[:5]}"
    during = sum(1 for sent_at, _ in results if any(a <= sent_at <= b for a, b in windows))
    assert during >= 20, f"only {during} messages were sent while a push ran: the test proved nothing"

    # Every accepted message reaches the core's Maildirs (bounded wait).
    delivered = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        delivered = int(in_container("core", f"grep -rl 'stream {token} ' /var/mail/vhosts | wc -l").strip())
        if delivered >= count:
            break
        time.sleep(2)
    assert delivered == count, f"sent {count}, delivered {delivered}"
