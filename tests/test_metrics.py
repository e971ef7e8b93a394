"""Prometheus metrics without containers: what `monitoring` renders, judged by the real tools.

The example and the shipped MX proxy with a `monitoring` section: HAProxy's exporter frontend passes
`haproxy -c` and admits the monitoring networks only; every Postfix instance gets an exporter on
its own port and showq; the rules pass `iptables-restore --test` and open each exporter's port to
the monitoring networks alone; drift expects the exporter package and running exporters only where
they are rendered. Without `monitoring` nothing of this is rendered (the golden files pin that).
The lab test (test_metrics_lab.py) scrapes them live.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import INVENTORIES, REPO
from test_drift import in_sync_sections
from test_real_tools import accepted

from mailforge import drift
from mailforge.inventory import load_inventory
from mailforge.render import render
from mailforge.verify import wanted_ports
from mailforge.write import write_tree

pytestmark = pytest.mark.tools

MONITORING = "\nmonitoring:\n  networks: [{network}]\n"


def with_monitoring(source: Path, tmp_path: Path, network: str) -> Path:
    inventory = tmp_path / source.name
    shutil.copytree(source, inventory, ignore=shutil.ignore_patterns(".mailforge"))
    topology = inventory / "topology.yml"
    topology.write_text(topology.read_text() + MONITORING.format(network=network))
    return inventory


def rendered(inventory_dir: Path, out: Path):
    inventory = load_inventory(inventory_dir)
    manifest = write_tree(render(inventory), inventory.topology.cluster, out)
    return inventory, out, manifest


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    return rendered(with_monitoring(INVENTORIES["example"], tmp, "10.232.0.200/32"), tmp / "out")


@pytest.fixture(scope="module")
def mx_proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    return rendered(with_monitoring(REPO / "inventories" / "mx-proxy", tmp, "10.233.0.0/24"), tmp / "out")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_haproxy_serves_its_exporter_to_the_monitoring_networks_only(example, tmp_path):
    from tlsserver import checkable_haproxy_cfg

    _, out, _ = example
    cfg = out / "lb/etc/haproxy/haproxy.cfg"
    result = run("haproxy", "-c", "-f", str(checkable_haproxy_cfg(cfg, tmp_path)))
    assert result.returncode == 0 and "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr
    frontend = cfg.read_text().split("frontend prometheus\n", 1)[1]
    assert "    bind 10.232.0.10:8405\n" in frontend
    assert "    tcp-request connection reject unless { src 10.232.0.200/32 }\n" in frontend
    assert "    http-request use-service prometheus-exporter if { path /metrics }\n" in frontend


def test_every_postfix_instance_gets_an_exporter_on_its_own_port_and_queue(example, mx_proxy):
    _, out, _ = example
    for host, address in (("relay1", "10.232.0.21"), ("core", "10.232.0.30")):
        args = (out / host / "etc/default/prometheus-postfix-exporter").read_text().splitlines()[-1]
        assert args == (
            f'ARGS="--web.listen-address={address}:9154 --postfix.showq_path=/var/spool/postfix/public/showq --postfix.logfile_path=/var/log/mail.log"'
        )
    assert not list((out / "lb").rglob("prometheus-postfix-exporter*"))

    _, out, _ = mx_proxy
    defaults = sorted(p.name for p in (out / "mxproxy/etc/default").iterdir())
    assert defaults == ["prometheus-postfix-exporter", "prometheus-postfix-exporter-postfix-inbound", "prometheus-postfix-exporter-postfix-outbound"]
    for name, port, queue, log in (
        ("prometheus-postfix-exporter", 9154, "/var/spool/postfix", "/var/log/mail.log"),
        ("prometheus-postfix-exporter-postfix-inbound", 9155, "/var/spool/postfix-inbound", "/dev/null"),
        ("prometheus-postfix-exporter-postfix-outbound", 9156, "/var/spool/postfix-outbound", "/dev/null"),
    ):
        args = (out / "mxproxy/etc/default" / name).read_text().splitlines()[-1]
        assert args == f'ARGS="--web.listen-address=10.233.0.25:{port} --postfix.showq_path={queue}/public/showq --postfix.logfile_path={log}"'
        # postconf names the same queue directory for the instance as the exporter's showq path
        instance = "postfix" if name == "prometheus-postfix-exporter" else name.removeprefix("prometheus-postfix-exporter-")
        assert run("postconf", "-c", str(out / "mxproxy/etc" / instance), "-h", "queue_directory").stdout.strip() == queue
    scripts = sorted((out / "mxproxy/etc/init.d").iterdir())
    assert [p.name for p in scripts] == ["prometheus-postfix-exporter-postfix-inbound", "prometheus-postfix-exporter-postfix-outbound"]
    for script in scripts:
        assert script.stat().st_mode & 0o777 == 0o755 and script.read_text().startswith("#!/bin/sh\n")
        assert run("sh", "-n", str(script)).returncode == 0


def test_the_firewalls_open_each_exporter_port_to_the_monitoring_networks_alone(example, mx_proxy):
    for _, out, _ in (example, mx_proxy):
        for rules in out.rglob("rules.v*"):
            result = run("iptables-restore" if rules.name == "rules.v4" else "ip6tables-restore", "--test", str(rules))
            assert result.returncode == 0, f"{rules}: {result.stderr}"
    _, out, _ = example
    assert accepted(out / "lb/etc/iptables/rules.v4", 8405) == ["10.232.0.200/32"]
    for host in ("relay1", "relay2", "core"):
        assert accepted(out / host / "etc/iptables/rules.v4", 9154) == ["10.232.0.200/32"]
        assert accepted(out / host / "etc/iptables/rules.v6", 9154) == []  # the monitoring network is IPv4 only
    _, out, _ = mx_proxy
    for port in (9154, 9155, 9156):
        assert accepted(out / "mxproxy/etc/iptables/rules.v4", port) == ["10.233.0.0/24"]


def test_verify_wants_the_exporter_ports_listening(example):
    inventory, _, _ = example
    assert wanted_ports(inventory, "lb") == {25, 8405}
    assert wanted_ports(inventory, "relay1") == {10024, 9154}
    assert wanted_ports(load_inventory(INVENTORIES["example"]), "relay1") == {10024}


def test_drift_expects_the_exporters_only_where_they_are_rendered(example):
    inventory, out, manifest = example
    relay = drift.desired_state(inventory, out, manifest, ["relay1"])["relay1"]
    assert "prometheus-postfix-exporter" in relay.packages
    assert "prometheus-postfix-exporter" not in drift.desired_state(inventory, out, manifest, ["lb"])["lb"].packages
    plain = load_inventory(INVENTORIES["example"])
    plain_out = out.parent / "plain"
    plain_manifest = write_tree(render(plain), plain.topology.cluster, plain_out)
    assert "prometheus-postfix-exporter" not in drift.desired_state(plain, plain_out, plain_manifest, ["relay1"])["relay1"].packages
    assert "--web.listen-address=10.232.0.21:9154" in drift.survey_script(relay)

    sections = in_sync_sections(relay) | {"exporter prometheus-postfix-exporter": ("1234", 0)}
    items, _ = drift.compare_host(relay, sections)
    assert {(i.kind, i.name, i.status) for i in items if i.status != drift.IN_SYNC} == set()
    assert ("service", "prometheus-postfix-exporter", drift.IN_SYNC) in {(i.kind, i.name, i.status) for i in items}

    sections["exporter prometheus-postfix-exporter"] = ("", 1)
    items, _ = drift.compare_host(relay, sections)
    [item] = [i for i in items if i.status != drift.IN_SYNC]
    assert (item.kind, item.name, item.live) == ("service", "prometheus-postfix-exporter", "not running on 10.232.0.21:9154, enabled: n/a (no systemd)")
