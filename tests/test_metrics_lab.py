"""Prometheus metrics in the lab: with `monitoring` on, a host of the monitoring network scrapes
HAProxy's exporter on the balancer and the Postfix exporter of every relay and core, and a host
outside it gets no answer from any of them.

Runs when MAILFORGE_LAB=1, on the shared example lab: a copy of the example (same cluster, same
containers) with a `monitoring` section naming the lab's client alone is deployed, verified and
scraped; the example itself is deployed again at the end, and the exporters stopped, so the lab is
as the example says (the exporter package stays installed, unreachable and idle).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import EXAMPLE, in_container, mailforge, rows

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("MAILFORGE_LAB") != "1", reason="lab tests run with MAILFORGE_LAB=1 (they start containers)"),
]

# Each URL fetched once from inside a lab container, with a short timeout: a dropped connection
# (the firewall) or a refused one (HAProxy's ACL) is None; otherwise the page's text.
SCRAPE = """
import json, sys, urllib.request
answers = {}
for url in json.load(sys.stdin):
    try:
        answers[url] = urllib.request.urlopen(url, timeout=3).read().decode()
    except Exception:
        answers[url] = None
print(json.dumps(answers))
"""


def scrape(container: str, urls: list[str]) -> dict[str, str | None]:
    return json.loads(in_container(container, "python3 -c " + shlex.quote(SCRAPE), stdin=json.dumps(urls)))


def monitored_example(tmp_path: Path, client: str) -> Path:
    inventory = tmp_path / "example"
    shutil.copytree(EXAMPLE, inventory, ignore=shutil.ignore_patterns(".mailforge"))
    topology = inventory / "topology.yml"
    topology.write_text(topology.read_text() + f"\nmonitoring:\n  networks: [{client}/32]\n")
    return inventory


def exporter_urls(inventory_dir: Path) -> dict[str, str]:
    """host -> the URL of each of its exporters, as the inventory places them."""
    from mailforge.inventory import load_inventory

    inventory = load_inventory(inventory_dir)
    return {f"{h.name} {what}": f"http://{h.address}:{port}/metrics" for h in inventory.hosts for what, port in h.exporters.items()}


def test_the_monitoring_network_scrapes_every_exporter_and_no_one_else_does(lab, tmp_path):
    from mailforge import lab as lab_module
    from mailforge.inventory import load_inventory

    plan = lab_module.plan(load_inventory(EXAMPLE))
    inventory = monitored_example(tmp_path, plan.by_host("client").address)
    urls = exporter_urls(inventory)
    assert sorted(urls) == ["core /etc/postfix", "lb haproxy", "relay1 /etc/postfix", "relay2 /etc/postfix"]
    try:
        deployed = mailforge("deploy", str(inventory), "--lab")
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr
        # verify sends mail through the balancer and relays, which their exporters then count from the log.
        verified = mailforge("verify", str(inventory), "--lab", "--json")
        checks = {(c["host"], c["name"]): c for c in rows(json.loads(verified.stdout))}
        assert verified.returncode == 0, [c for c in checks.values() if not c["ok"]]
        for host in ("relay1", "relay2", "core"):
            assert checks[(host, "postfix exporters running")]["ok"]
            assert "9154" in checks[(host, "ports listening")]["detail"].split("listening")[0]
        assert "8405" in checks[("lb", "ports listening")]["detail"].split("listening")[0]

        seen = scrape("client", list(urls.values()))
        pages = {name: seen[url] for name, url in urls.items()}
        assert all(pages.values()), {name: page is not None for name, page in pages.items()}
        assert 'haproxy_backend_active_servers{proxy="relays"} 2' in str(pages["lb haproxy"])
        for host in ("relay1", "relay2", "core"):
            page = str(pages[f"{host} /etc/postfix"])
            assert 'postfix_up{path="/var/spool/postfix/public/showq"} 1' in page, host  # it asked the queue
            assert "postfix_showq_message_size_bytes_count" in page, host
        connects = [_value(str(pages[f"{relay} /etc/postfix"]), "postfix_smtpd_connects_total") for relay in ("relay1", "relay2")]
        assert sum(connects) > 0, connects  # it reads the mail log

        assert scrape("spammer", list(urls.values())) == dict.fromkeys(urls.values())  # outside the monitoring network
    finally:
        restored = mailforge("deploy", str(EXAMPLE), "--lab")
        for host in ("relay1", "relay2", "core"):
            in_container(host, "service prometheus-postfix-exporter stop >/dev/null 2>&1 || true")
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr
    assert scrape("client", list(urls.values())) == dict.fromkeys(urls.values())  # without monitoring, closed again


def _value(page: str, metric: str) -> float:
    """The value of an unlabelled metric in a Prometheus text page."""
    return next(float(line.split()[1]) for line in page.splitlines() if line.startswith(metric + " "))
