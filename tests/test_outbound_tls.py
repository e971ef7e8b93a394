"""tls.outbound (issue 14, point 6): DANE through a local validating unbound and MTA-STS through
postfix-mta-sts-resolver, for the hosts that deliver to the Internet, judged by the real tools
(postconf, unbound-checkconf, the resolver daemon's own config loader). Without tls.outbound
nothing changes (the goldens of the other inventories pin that byte for byte; checked here too).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import INVENTORIES

from mailforge.render.outbound import MTA_STS_CONF, RESOLV_CONF, ROOT_TRUST_ANCHOR, UNBOUND_CONF

pytestmark = pytest.mark.tools

OUTBOUND = "outbound-tls"
SENDERS = {"filter": "etc/postfix", "mxproxy": "etc/postfix-outbound"}  # host -> the instance that sends to the Internet
DNS_ROOT_KEY = Path("/usr/share/dns/root.key")  # Debian's dns-root-data: what unbound-helper seeds root.key from
DEBIAN_PYTHON = "/usr/bin/python3"  # postfix-mta-sts-resolver is Debian's, for Debian's python3


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def postconf(config: Path, *names: str) -> dict[str, str]:
    result = run("postconf", "-c", str(config), "-n")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    values = dict(line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "") for line in result.stdout.splitlines())
    return {name: values.get(name, "") for name in names}


@pytest.mark.parametrize("name", sorted(set(INVENTORIES) - {OUTBOUND}))
def test_without_outbound_tls_nothing_changes(name, rendered):
    out = rendered(name)
    manifest = json.loads((out / "manifest.json").read_text())
    for host, entry in manifest["hosts"].items():
        assert not {UNBOUND_CONF, RESOLV_CONF, MTA_STS_CONF} & set(entry["files"]), host
    for main_cf in out.rglob("main.cf"):
        settings = postconf(main_cf.parent, "smtp_tls_security_level", "smtp_dns_support_level", "smtp_tls_policy_maps")
        assert settings["smtp_tls_security_level"] in ("may", "") and settings["smtp_dns_support_level"] == "", main_cf  # "": the MX proxy's default instance
        assert "socketmap" not in settings["smtp_tls_policy_maps"], main_cf


@pytest.mark.parametrize("host,config", sorted(SENDERS.items()))
def test_senders_use_dane_and_mta_sts(host, config, rendered):
    out = rendered(OUTBOUND)
    settings = postconf(out / host / config, "smtp_tls_security_level", "smtp_dns_support_level", "smtp_tls_policy_maps")
    assert settings == {
        "smtp_tls_security_level": "dane",
        "smtp_dns_support_level": "dnssec",
        "smtp_tls_policy_maps": "socketmap:inet:127.0.0.1:8461:postfix",
    }
    files = json.loads((out / "manifest.json").read_text())["hosts"][host]["files"]
    assert {path: files[path]["action"] for path in (UNBOUND_CONF, RESOLV_CONF, MTA_STS_CONF)} == {
        UNBOUND_CONF: "unbound reload",
        RESOLV_CONF: "resolver",
        MTA_STS_CONF: "mta-sts-daemon restart",
    }
    resolv = (out / host / RESOLV_CONF.lstrip("/")).read_text()
    assert [line for line in resolv.splitlines() if line.startswith("nameserver")] == ["nameserver 127.0.0.1"]
    assert "options trust-ad" in resolv


def test_relaying_to_the_cores_is_untouched(rendered):
    """The MX proxy's inbound instance hands mail to the core: not an Internet delivery, no DANE/MTA-STS there."""
    settings = postconf(rendered(OUTBOUND) / "mxproxy" / "etc/postfix-inbound", "smtp_tls_security_level", "smtp_tls_policy_maps")
    assert settings["smtp_tls_security_level"] != "dane" and "socketmap" not in settings["smtp_tls_policy_maps"]


def _checkable(unbound_conf: Path, tmp_path: Path, extra: str = "") -> Path:
    """The rendered unbound file with its trust anchor pointed at a copy of Debian's root key (on a
    host, unbound-helper puts it at ROOT_TRUST_ANCHOR before unbound starts; this machine runs no unbound)."""
    anchor = tmp_path / "root.key"
    shutil.copy(DNS_ROOT_KEY, anchor)
    text = unbound_conf.read_text()
    assert f'auto-trust-anchor-file: "{ROOT_TRUST_ANCHOR}"' in text
    checked = tmp_path / "mailforge.conf"
    checked.write_text(text.replace(ROOT_TRUST_ANCHOR, str(anchor)) + extra)
    return checked


@pytest.mark.parametrize("host", sorted(SENDERS))
def test_unbound_checkconf_accepts_the_rendered_file(host, rendered, tmp_path):
    result = run("unbound-checkconf", str(_checkable(rendered(OUTBOUND) / host / UNBOUND_CONF.lstrip("/"), tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no errors" in result.stdout


def test_unbound_checkconf_is_a_real_judge(rendered, tmp_path):
    """The same check fails on a broken file: the test above can fail."""
    broken = _checkable(rendered(OUTBOUND) / "filter" / UNBOUND_CONF.lstrip("/"), tmp_path, "    interfaces: 127.0.0.1\n")
    result = run("unbound-checkconf", str(broken))
    assert result.returncode != 0 and "interfaces" in result.stdout + result.stderr


@pytest.mark.parametrize("host", sorted(SENDERS))
def test_mta_sts_daemon_loads_the_rendered_config(host, rendered):
    """The daemon's own loader (what mta-sts-daemon runs at start) reads the file; it listens where Postfix asks."""
    path = rendered(OUTBOUND) / host / MTA_STS_CONF.lstrip("/")
    loaded = run(
        DEBIAN_PYTHON, "-c", "import json, sys; from postfix_mta_sts_resolver.utils import load_config; print(json.dumps(load_config(sys.argv[1])))", str(path)
    )
    assert loaded.returncode == 0, loaded.stderr
    config = json.loads(loaded.stdout)
    assert (config["host"], config["port"]) == ("127.0.0.1", 8461)
    assert config["default_zone"]["strict_testing"] is False  # RFC 8461: "testing" never refuses delivery
    assert config["cache"]["type"] == "sqlite"


def test_drift_expects_each_package_list_only_where_its_files_are(rendered):
    """drift's package check: unbound on a host with the unbound config, mta-sts-daemon's package with
    its config, neither elsewhere (nor the exporters' with them)."""
    from mailforge.drift.survey import expected_packages

    def files(name: str, host: str) -> dict:
        return json.loads((rendered(name) / "manifest.json").read_text())["hosts"][host]["files"]

    with_tls = expected_packages("cores", files(OUTBOUND, "filter"))
    assert {"unbound", "dns-root-data", "postfix-mta-sts-resolver"} <= set(with_tls)
    assert "prometheus-postfix-exporter" not in with_tls
    without = expected_packages("cores", files("mx-proxy", "filter"))
    assert not {"unbound", "dns-root-data", "postfix-mta-sts-resolver"} & set(without)
    dane_only = {path: meta for path, meta in files(OUTBOUND, "filter").items() if meta["action"] != "mta-sts-daemon restart"}
    assert "postfix-mta-sts-resolver" not in expected_packages("cores", dane_only)
