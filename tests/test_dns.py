"""`mailforge dns zone` and `mailforge dns check`, against a real authoritative server.

Each zone set is served by its own NSD (Debian's package, installed by scripts/setup) on
127.0.0.1 at a free port, with its config and zone files under tmp; started with bounded
waits and stopped afterwards. The right set is the `dns zone` output itself (plus SOA/NS, and
test DNS lists that list 127.0.0.2 and not 127.0.0.1): it passes. Every wrong set breaks one
thing, and the check names it. A closed port, a socket that never answers and a zone that does
not load (SERVFAIL) are reported as what they are, never as a missing record.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import pytest
from conftest import INVENTORIES as SHIPPED
from conftest import MAILFORGE, rows

from mailforge.dns import zone_sections  # the reader of `dns zone` output the lab uses too

GOLDEN = Path(__file__).parent / "golden-dns"  # beside golden/, which holds one directory per inventory
TLS_RECORD_SECTIONS = ("dane", "mta_sts", "tls_rpt")


def without_tls_records(inventory: Path) -> Path:
    """A copy of `inventory` without the tls sections whose rows need the live cluster (TLSA against the key a relay
    presents, the policy over HTTPS): those rows are judged by tests/test_dane_mta_sts.py and, for the example, in
    the lab (tests/test_lab_cluster.py). Here the other rows, against NSD on loopback."""
    import atexit
    import tempfile

    import yaml

    copy = Path(tempfile.mkdtemp(prefix="mailforge-dns-")) / inventory.name
    atexit.register(shutil.rmtree, copy.parent, True)
    shutil.copytree(inventory, copy)
    topology = yaml.safe_load((copy / "topology.yml").read_text(encoding="utf-8"))
    for section in TLS_RECORD_SECTIONS:
        topology.get("tls", {}).pop(section, None)
    (copy / "topology.yml").write_text(yaml.safe_dump(topology, sort_keys=False), encoding="utf-8")
    return copy


INVENTORIES = {**SHIPPED, "example": without_tls_records(SHIPPED["example"])}
EXAMPLE = INVENTORIES["example"]


def mailforge(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(MAILFORGE), *args], capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise AssertionError("no free port")


# --- zone sets --------------------------------------------------------------------------------


def dnsbl_sections(inventory_dir: Path) -> dict[str, list[str]]:
    from mailforge import dns
    from mailforge.inventory import load_inventory

    topology = load_inventory(inventory_dir).topology
    records = dns.dnsbl_records(topology)
    return {
        zone: [line for line in dns.zone_file(zone, records, "ns.test").splitlines() if line.split()[0].endswith(zone + ".")]
        for zone in dict.fromkeys(r.zone for r in records)
    }


@pytest.fixture(scope="module", autouse=True)
def fresh_store(tmp_path_factory):
    """This module's own controller store, made fresh: `dns zone` prints each DKIM record with its state
    (new until `dns check` sees it), so the golden output must not depend on what earlier runs left in the
    home store (the lab's `dns check` marks the example's keys seen there)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAILFORGE_STATE_DIR", str(tmp_path_factory.mktemp("dns-state")))
        yield


@pytest.fixture(scope="module")
def zone_output():
    cache: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in cache:
            result = mailforge("dns", "zone", str(INVENTORIES[name]))
            # exit 1: printed, but without MX (balancers without fqdn; see test_a_balancer_without_fqdn_gets_no_mx)
            assert result.returncode == (1 if name in NAMELESS_BALANCER else 0), result.stderr
            cache[name] = result.stdout
        return cache[name]

    return get


# The layouts whose balancer has no fqdn, and what their admin publishes after reading `dns zone`'s note:
# a name of their choosing for the balancer, as the MX of every domain. For the external balancer, a
# name resolving to an address of the provider's (a documentation address here).
NAMELESS_BALANCER = {"lb-relays-core": ("mail.example.com", "10.231.0.10"), "elb-relays": ("elb.mail.example.io", "198.51.100.25")}
# An external balancer with a name but no address: `dns zone` prints the MX, and its name is the
# admin's to point at the provider's addresses (a documentation address here).
EXTERNAL_BALANCER_NAME = {"elb": ("mx.example.net", "198.51.100.26")}


def right_set(zone_output, name: str) -> dict[str, list[str]]:
    zones = {**zone_sections(zone_output(name)), **dnsbl_sections(INVENTORIES[name])}
    if name in NAMELESS_BALANCER:
        from mailforge.inventory import load_topology

        mx, address = NAMELESS_BALANCER[name]
        domains = load_topology(INVENTORIES[name]).topology.domains
        for domain in domains:
            zones[domain] = [f"{domain}. 300 IN MX 10 {mx}.", *zones[domain]]
        zones[domains[0]].append(f"{mx}. 300 IN A {address}")
    if name in EXTERNAL_BALANCER_NAME:
        mx, address = EXTERNAL_BALANCER_NAME[name]
        zones[mx.split(".", 1)[1]].append(f"{mx}. 300 IN A {address}")
    return zones


# --- a real NSD --------------------------------------------------------------------------------


class NameServer:
    """A DNS server process the test started (`process`, its `log`): stop() ends it, killing it if it hangs."""

    process: subprocess.Popen
    log: IO

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


class Nsd(NameServer):
    """NSD serving `zones` ({zone: record lines}) on 127.0.0.1:port from its own directory; stop() ends it."""

    def __init__(self, root: Path, zones: dict[str, list[str]], broken: set[str] = frozenset(), zone_files: dict[str, str] | None = None):
        """`zones` are record lines under a test SOA/NS; `zone_files` ({zone: text}) are served exactly as given."""
        from mailforge import dns

        binary = shutil.which("nsd") or ("/usr/sbin/nsd" if Path("/usr/sbin/nsd").exists() else None)
        assert binary, "NSD is not installed: run scripts/setup"
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port = root, free_port()
        for zone, lines in zones.items():
            head = [f"$ORIGIN {zone}.", "$TTL 300", "@ IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60", "@ IN NS ns.test."]
            body = "this is not a zone file\n" if zone in broken else "\n".join(head + lines) + "\n"
            (root / dns.zone_file_name(zone)).write_text(body, encoding="utf-8")
        for zone, text in (zone_files or {}).items():
            (root / dns.zone_file_name(zone)).write_text(text, encoding="utf-8")
        served = sorted({*zones, *(zone_files or {})})
        (root / "nsd.conf").write_text(dns.nsd_conf(served, str(root), [f"127.0.0.1@{self.port}"]), encoding="utf-8")
        self.log = (root / "stderr.log").open("wb")
        self.process = subprocess.Popen([binary, "-d", "-c", str(root / "nsd.conf")], stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            log = (root / "nsd.log").read_text(errors="replace") if (root / "nsd.log").exists() else ""
            assert self.process.poll() is None, f"nsd exited: {log}{(root / 'stderr.log').read_text(errors='replace')}"
            if "nsd started" in log:
                break
            assert time.monotonic() < deadline, f"nsd did not start within 15 s: {log}"
            time.sleep(0.05)
        if not broken:
            assert "error" not in log, log
        self.nameserver = f"127.0.0.1:{self.port}"


@pytest.fixture
def serve(tmp_path):
    started: list[Nsd] = []

    def start(zones: dict[str, list[str]], broken: set[str] = frozenset(), zone_files: dict[str, str] | None = None) -> str:
        server = Nsd(tmp_path / f"nsd{len(started)}", zones, broken, zone_files)
        started.append(server)
        return server.nameserver

    yield start
    for server in started:
        server.stop()


def check(inventory: Path, nameserver: str, *extra: str) -> tuple[int, dict]:
    """`mailforge dns check --json` in this process (the installed script is run by the tests of the table and exit 2)."""
    from typer.testing import CliRunner

    from mailforge.cli import app

    result = CliRunner().invoke(app, ["dns", "check", str(inventory), "--nameserver", nameserver, "--json", "--timeout", "0.5", *extra])
    assert result.stdout, result.output
    envelope = json.loads(result.stdout)
    checks = [{"subject": r["host"], "check": r["name"], "status": r["status"], "evidence": r["detail"], "ok": r["ok"]} for r in rows(envelope)]
    return result.exit_code, {**envelope, "ok": envelope["status"] == "ok", "checks": checks}


def row(report: dict, subject: str, name: str) -> dict:
    found = [c for c in report["checks"] if c["subject"] == subject and c["check"] == name]
    assert len(found) == 1, f"no single {name!r} row for {subject}: {report['checks']}"
    return found[0]


def failures(report: dict) -> list[dict]:
    return [c for c in report["checks"] if c["status"] != "ok"]


def without(lines: list[str], pattern: str) -> list[str]:
    kept = [line for line in lines if not re.search(pattern, line)]
    assert len(kept) < len(lines), f"{pattern!r} matched nothing"
    return kept


def replaced(lines: list[str], pattern: str, new: str) -> list[str]:
    out = [re.sub(pattern, new, line) for line in lines]
    assert out != lines, f"{pattern!r} matched nothing"
    return out


# --- dns zone ----------------------------------------------------------------------------------


def masked(output: str) -> str:
    """`dns zone` output with each DKIM record's key and date masked: a signing inventory's keys are the store's, random and dated."""
    output = re.sub(r'(\._domainkey\.\S+\s+\d+ IN TXT\s+)"v=DKIM1;.*?"(\s+;)', r'\1"v=DKIM1; ..."\2', output)
    return re.sub(r"\bmf\d{8}(e?)\b", r"mfYYYYMMDD\1", output)


@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_zone_output_matches_golden(name, zone_output):
    golden = GOLDEN / f"{name}.zone"
    if os.environ.get("MAILFORGE_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(masked(zone_output(name)), encoding="utf-8")
    assert golden.exists(), f"no golden zone output for {name}; run with MAILFORGE_UPDATE_GOLDEN=1"
    assert masked(zone_output(name)) == golden.read_text(encoding="utf-8")


def test_zone_output_is_deterministic_and_takes_a_ttl(zone_output):
    assert mailforge("dns", "zone", str(EXAMPLE)).stdout == zone_output("example")
    short = mailforge("dns", "zone", str(EXAMPLE), "--ttl", "300").stdout
    records = [line for line in short.splitlines() if line and not line.startswith(";")]
    assert records and all(line.split()[1] == "300" for line in records)


def test_zone_output_says_what_the_design_needs(zone_output):
    zones = zone_sections(zone_output("example"))
    assert sorted(zones) == ["0.232.10.in-addr.arpa", "example.com", "example.org"]
    for domain in ("example.com", "example.org"):
        mx = [line.split() for line in zones[domain] if " MX " in line]
        assert [(m[0], m[4], m[5]) for m in mx] == [(f"{domain}.", "10", "mx.example.com.")]  # the balancer only, no backup
        assert any(f"{domain}." in line and '"v=spf1 ip4:10.232.0.30 -all"' in line for line in zones[domain])  # the core sends
    assert not any("core" in line for domain in ("example.com", "example.org") for line in zones[domain] if " MX " in line)
    ptrs = {line.split()[0]: line.split()[4] for line in zones["0.232.10.in-addr.arpa"]}
    assert ptrs == {
        "21.0.232.10.in-addr.arpa.": "relay1.example.com.",
        "22.0.232.10.in-addr.arpa.": "relay2.example.com.",
        "30.0.232.10.in-addr.arpa.": "core.internal.example.com.",
    }
    assert "ask whoever owns 10.232.0.0/24" in zone_output("example")
    # the MX proxy sends through its outbound instance: SPF names it, not the filter behind it
    proxy = zone_sections(zone_output("mx-proxy"))
    assert any('"v=spf1 ip4:10.231.1.25 -all"' in line for line in proxy["example.org"])
    # behind a balancer without a name, no MX: the relays take mail only from the balancer
    for name in NAMELESS_BALANCER:
        assert not [line for lines in zone_sections(zone_output(name)).values() for line in lines if " MX " in line], name
    # no balancer: the relay is the MX
    assert [line.split()[5] for line in proxy["example.org"] if line.split()[3] == "MX"] == ["mx.example.org."]


def test_the_shipped_example_adds_its_tls_records_to_the_same_zone(zone_output, tmp_path):
    """The shipped example (with tls.dane, mta_sts, tls_rpt) prints every record of the copy without them, plus per
    hosted domain the MTA-STS and TLS-RPT TXT records and the policy host's A record, and a TLSA record for the MX name
    from a fresh store: the next key only, with a note saying the live key's record comes after `certs` or `deploy`."""
    state = tmp_path / "state"
    result = subprocess.run(
        [str(MAILFORGE), "dns", "zone", str(SHIPPED["example"])],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MAILFORGE_STATE_DIR": str(state)},
    )
    assert result.returncode == 0, result.stderr
    # column widths follow the longest name, so lines are compared word by word
    # and DKIM keys are the store's (each run's own: random), so their records are left out here (test_dkim_dns.py)
    full = {zone: [" ".join(line.split()) for line in lines if "._domainkey." not in line] for zone, lines in zone_sections(result.stdout).items()}
    plain = {zone: [" ".join(line.split()) for line in lines if "._domainkey." not in line] for zone, lines in zone_sections(zone_output("example")).items()}
    assert sorted(full) == sorted(plain)
    for zone, lines in plain.items():
        assert set(lines) <= set(full[zone]), zone
    added = {zone: [line.split(" ; ")[0].split() for line in full[zone] if line not in plain[zone]] for zone in full}
    assert added["0.232.10.in-addr.arpa"] == []
    for domain in ("example.com", "example.org"):
        got = {(r[0], r[3]): " ".join(r[4:]) for r in added[domain]}
        assert got.pop((f"_mta-sts.{domain}.", "TXT")).startswith('"v=STSv1; id=')
        assert got.pop((f"_smtp._tls.{domain}.", "TXT")) == '"v=TLSRPTv1; rua=mailto:tlsrpt@example.com"'
        assert got.pop((f"mta-sts.{domain}.", "A")) == "10.232.0.10"
        if domain == "example.com":
            assert re.fullmatch(r"3 1 1 [0-9a-f]{64}", got.pop(("_25._tcp.mx.example.com.", "TLSA")))
        assert got == {}, domain
    assert "no live MX key" in result.stdout
    assert (state / "clusters" / "example" / "tls" / "mx" / "next-key.pem").stat().st_mode & 0o777 == 0o600


def bad_inventory(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLE / "users.txt", tmp_path / "users.txt")
    text = (EXAMPLE / "topology.yml").read_text().replace("address: 10.232.0.21", "address: 10.232.0.321")
    (tmp_path / "topology.yml").write_text(text)
    return tmp_path


def test_zone_of_a_bad_inventory_exits_2(tmp_path):
    result = mailforge("dns", "zone", str(bad_inventory(tmp_path)))
    assert result.returncode == 2 and "'10.232.0.321' is not an IPv4 or IPv6 address" in result.stderr and not result.stdout


# --- dns check: the right zone set passes --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_the_right_zone_set_passes(name, zone_output, serve):
    code, report = check(INVENTORIES[name], serve(right_set(zone_output, name)))
    assert code == 0 and report["ok"], failures(report)
    kinds = {c["check"] for c in report["checks"]}
    assert {"MX", "no core in MX", "SPF", "MX host addresses", "FCrDNS (relay)"} <= kinds
    assert ("DNSBL (IP list)" in kinds) == (name != "elb-relays")  # the ELB inventory names no DNS list


def test_the_table_shows_every_check(zone_output, serve):
    nameserver = serve(right_set(zone_output, "example"))
    result = mailforge("dns", "check", str(EXAMPLE), "--nameserver", nameserver)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DNS of cluster example" in result.stdout and f"asked {nameserver}" in result.stdout
    assert re.search(r"(\d+) of \1 checks passed", result.stdout)
    for text in ("example.com", "no core in MX", "FCrDNS (relay)", "relay1.example.com", "zen.spamhaus.org", "dbl.spamhaus.org"):
        assert text in result.stdout


def test_spf_mechanisms_are_evaluated(zone_output, serve):
    zones = right_set(zone_output, "example")
    spf = r'"v=spf1 [^"]*"'
    # a: and include: reach the core as well as ip4: does; ~all also refuses others
    zones["example.com"] = replaced(zones["example.com"], spf, '"v=spf1 mx a:core.internal.example.com ~all"')
    zones["example.org"] = replaced(zones["example.org"], spf, '"v=spf1 include:_spf.example.com -all"')
    zones["example.com"] += ['_spf.example.com. 300 IN TXT "v=spf1 ip4:10.232.0.0/27 -all"']
    code, report = check(EXAMPLE, serve(zones))
    assert code == 0, failures(report)
    assert "others get softfail" in row(report, "example.com", "SPF")["evidence"]
    # redirect= hands the whole decision to another record
    zones["example.com"] = replaced(
        zones["example.com"], '"v=spf1 mx a:core.internal.example.com ~all"', '"v=spf1 ip6:2001:db8::/32 redirect=_spf.example.com"'
    )
    code, report = check(EXAMPLE, serve(zones))
    assert code == 0, failures(report)
    # +all authorises everyone; a record naming only the MX forgets the core, which sends
    zones["example.com"] = replaced(zones["example.com"], '"v=spf1 ip6:[^"]*"', '"v=spf1 mx +all"')
    zones["example.org"] = replaced(zones["example.org"], spf, '"v=spf1 mx -all"')
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1
    assert "authorises any host: 192.0.2.1 gets pass" in row(report, "example.com", "SPF")["evidence"]
    assert "does not authorise core core (10.232.0.30): fail" in row(report, "example.org", "SPF")["evidence"]


# --- dns check: each wrong set is caught with the right message -----------------------------------


def test_backup_mx_at_a_higher_preference(zone_output, serve):
    zones = right_set(zone_output, "example")
    zones["example.com"] += ["example.com. 300 IN MX 20 backup.example.com.", "backup.example.com. 300 IN A 192.0.2.50"]
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1
    mx = row(report, "example.com", "MX")
    assert mx["status"] == "fail"
    assert "backup MX backup.example.com at preference 20, not 10 like the others" in mx["evidence"]
    assert "MX 20 backup.example.com is outside the topology" in mx["evidence"]
    target = row(report, "backup.example.com", "MX host addresses")
    assert target["status"] == "fail" and "192.0.2.50, not a balancer of the topology" in target["evidence"]
    assert {(c["subject"], c["check"]) for c in failures(report)} == {("example.com", "MX"), ("backup.example.com", "MX host addresses")}


def test_a_topology_host_as_backup_mx(zone_output, serve):
    zones = right_set(zone_output, "example")
    zones["example.com"] += ["example.com. 300 IN MX 30 smtp.example.com.", "smtp.example.com. 300 IN A 10.232.0.10"]  # the balancer again
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1
    assert "backup MX smtp.example.com at preference 30, not 10 like the others" in row(report, "example.com", "MX")["evidence"]


# --- a balancer without a name: MX targets are hosts that take mail on port 25 ----------------------


def test_a_balancer_without_fqdn_gets_no_mx_but_the_name_to_give_it(tmp_path):
    """lb-relays-core: the relays listen on 10024 for the balancer only. `dns zone` prints no MX naming them;
    it says, located, which name to give the balancer and what it will print then, and exits 1 (incomplete)."""
    lb_relays_core = INVENTORIES["lb-relays-core"]
    result = mailforge("dns", "zone", str(lb_relays_core))
    assert result.returncode == 1
    assert not [line for lines in zone_sections(result.stdout).values() for line in lines if " MX " in line]
    assert f"{lb_relays_core / 'topology.yml'}:19:5: load_balancers[0]: balancer 'lb1' has no fqdn" in result.stderr
    assert "the relays take mail only from the balancer (port 10024, PROXY v1), so they cannot be MX" in result.stderr
    assert "give it one, e.g. fqdn: mx.example.com" in result.stderr
    note = [line[4:] for line in result.stdout.splitlines() if line.startswith(";   ")]
    assert note == ["example.com.  3600 IN MX  10 mx.example.com.", "mx.example.com.  3600 IN A  10.231.0.10"]
    envelope = json.loads(mailforge("dns", "zone", str(lb_relays_core), "--json").stdout)
    assert envelope["status"] == "problem" and envelope["exit_code"] == 1
    assert {(r["host"], r["status"]) for r in rows(envelope) if not r["ok"]} == {(d, "missing") for d in ("example.com", "example.net", "example.org")}
    # Doing what the note says gives exactly what it promised, and exit 0.
    named = tmp_path / "named"
    shutil.copytree(lb_relays_core, named)
    topology = named / "topology.yml"
    topology.write_text(topology.read_text().replace("  - name: lb1\n", "  - name: lb1\n    fqdn: mx.example.com\n"))
    result = mailforge("dns", "zone", str(named))
    assert result.returncode == 0, result.stderr
    zones = zone_sections(result.stdout)
    records = [line.split(";")[0].split()[3:] for line in zones["example.com"] if line.startswith(("example.com. ", "mx.example.com. "))]
    assert records == [["MX", "10", "mx.example.com."], ["TXT", '"v=spf1', "ip4:10.231.0.30", '-all"'], ["A", "10.231.0.10"]]


@pytest.mark.parametrize(
    ("name", "relay", "how"), [("lb-relays-core", "mx1.example.com", "port 10024, PROXY v1"), ("elb-relays", "ingest1.example.io", "port 25, PROXY v1")]
)
def test_relays_behind_a_balancer_as_mx_fail(name, relay, how, zone_output, serve):
    """What `dns zone` used to print for these layouts (the relays as MX) would lose mail: the check says why."""
    from mailforge.inventory import load_topology

    zones = right_set(zone_output, name)
    domain = load_topology(INVENTORIES[name]).topology.domains[0]
    zones[domain] = replaced(zones[domain], r"MX 10 \S+", f"MX 10 {relay}.")
    code, report = check(INVENTORIES[name], serve(zones))
    assert code == 1
    assert f"MX 10 {relay}: relay {relay} takes mail only from the balancer ({how}), so mail sent to it fails" in row(report, domain, "MX")["evidence"]
    target = row(report, relay, "MX host addresses")
    assert target["status"] == "fail" and f"relay {relay} takes mail only from the balancer ({how}): not an MX host" in target["evidence"]


def test_any_name_resolving_to_the_balancer_is_an_mx(zone_output, serve):
    """The balancer's name is the admin's to choose: lb-relays-core's mail.example.com (right_set) passes, and so does
    the example published under another name than its fqdn; a name also resolving elsewhere does not."""
    code, report = check(INVENTORIES["lb-relays-core"], serve(right_set(zone_output, "lb-relays-core")))
    assert code == 0, failures(report)
    assert row(report, "example.net", "MX")["evidence"] == "MX 10 mail.example.com: only mail.example.com (balancer lb1), equal preference"
    assert row(report, "mail.example.com", "MX host addresses")["evidence"] == "mail.example.com -> 10.231.0.10 (balancer lb1)"
    zones = right_set(zone_output, "example")
    for domain in ("example.com", "example.org"):
        zones[domain] = replaced(zones[domain], r"MX\s+10 mx\.example\.com\.", "MX 10 smtp.example.com.")
    zones["example.com"].append("smtp.example.com. 300 IN A 10.232.0.10")
    code, report = check(EXAMPLE, serve(zones))
    assert code == 0, failures(report)
    zones["example.com"].append("smtp.example.com. 300 IN A 192.0.2.60")
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1
    assert "MX 10 smtp.example.com is outside the topology (expected only mx.example.com)" in row(report, "example.com", "MX")["evidence"]


def test_no_mx_for_a_nameless_balancer_fails_saying_what_is_expected(zone_output, serve):
    zones = {**zone_sections(zone_output("lb-relays-core")), **dnsbl_sections(INVENTORIES["lb-relays-core"])}  # printed as is: no MX
    code, report = check(INVENTORIES["lb-relays-core"], serve(zones))
    assert code == 1
    evidence = row(report, "example.com", "MX")["evidence"]
    assert evidence.startswith("no MX records") and "expected an MX naming a name of balancer lb1 (it has no fqdn in the topology)" in evidence


def test_a_core_in_an_mx(zone_output, serve):
    zones = right_set(zone_output, "example")
    zones["example.org"] += ["example.org. 300 IN MX 10 core.internal.example.com."]
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1
    core = row(report, "example.org", "no core in MX")
    assert core["status"] == "fail"
    assert "core core.internal.example.com is an MX" in core["evidence"]
    assert "resolves to core core.internal.example.com's address 10.232.0.30" in core["evidence"]
    assert "MX 10 core core.internal.example.com is outside the topology" in row(report, "example.org", "MX")["evidence"]
    assert row(report, "example.com", "no core in MX")["status"] == "ok"


def test_an_mx_name_resolving_to_a_core_address(zone_output, serve):
    zones = right_set(zone_output, "example")
    zones["example.com"] = replaced(zones["example.com"], r"^mx\.example\.com\.(\s+\d+ IN A\s+)10\.232\.0\.10", r"mx.example.com.\g<1>10.232.0.30")
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1
    assert "MX mx.example.com resolves to core core.internal.example.com's address 10.232.0.30" in row(report, "example.com", "no core in MX")["evidence"]
    target = row(report, "mx.example.com", "MX host addresses")["evidence"]
    assert "10.232.0.30, not a balancer of the topology" in target and "does not resolve to its address 10.232.0.10" in target


def test_a_missing_ptr(zone_output, serve):
    zones = right_set(zone_output, "example")
    zones["0.232.10.in-addr.arpa"] = without(zones["0.232.10.in-addr.arpa"], r"^22\.0\.232\.10")
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1
    fcrdns = row(report, "relay2.example.com", "FCrDNS (relay)")
    assert fcrdns["status"] == "fail" and "no PTR for 10.232.0.22" in fcrdns["evidence"] and "NXDOMAIN" in fcrdns["evidence"]
    assert [c["subject"] for c in failures(report)] == ["relay2.example.com"]


def test_a_ptr_not_matching_the_fqdn(zone_output, serve):
    zones = right_set(zone_output, "example")
    zones["0.232.10.in-addr.arpa"] = replaced(zones["0.232.10.in-addr.arpa"], r"relay1\.example\.com\.", "host-21.provider.example.")
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1
    evidence = row(report, "relay1.example.com", "FCrDNS (relay)")["evidence"]
    assert "PTR of 10.232.0.21 is host-21.provider.example, not relay1.example.com" in evidence


def test_a_ptr_whose_name_does_not_resolve_back(zone_output, serve):
    zones = right_set(zone_output, "example")
    zones["example.com"] = replaced(zones["example.com"], r"^(relay2\.example\.com\.\s+\d+ IN A\s+)10\.232\.0\.22", r"\g<1>10.232.0.99")
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1
    evidence = row(report, "relay2.example.com", "FCrDNS (relay)")["evidence"]
    assert "relay2.example.com does not resolve back to 10.232.0.22 (10.232.0.99)" in evidence


def test_no_spf(zone_output, serve):
    zones = right_set(zone_output, "example")
    zones["example.org"] = without(zones["example.org"], r"v=spf1")
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1
    spf = row(report, "example.org", "SPF")
    assert spf["status"] == "fail" and spf["evidence"].startswith("no SPF record")
    assert row(report, "example.com", "SPF")["status"] == "ok"


def test_two_spf_records(zone_output, serve):
    zones = right_set(zone_output, "example")
    zones["example.org"] += ['example.org. 300 IN TXT "v=spf1 -all"']
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1 and "2 SPF records, which is a permerror" in row(report, "example.org", "SPF")["evidence"]


def test_a_dead_rbl(zone_output, serve):
    zones = right_set(zone_output, "example")
    zones["zen.spamhaus.org"] = without(zones["zen.spamhaus.org"], r"^2\.0\.0\.127\.")
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1
    rbl = row(report, "zen.spamhaus.org", "DNSBL (IP list)")
    assert rbl["status"] == "fail"
    assert "lists nothing: dead or blocking your resolver" in rbl["evidence"] and "2.0.0.127.zen.spamhaus.org" in rbl["evidence"]


def test_an_rbl_that_lists_everything(zone_output, serve):
    zones = right_set(zone_output, "example")
    zones["zen.spamhaus.org"] += ["*.0.0.127.zen.spamhaus.org. 300 IN A 127.0.0.2"]  # what a wildcarded list answers
    zones["dbl.spamhaus.org"] += ["invalid.dbl.spamhaus.org. 300 IN A 127.0.1.2"]
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1
    rbl = row(report, "zen.spamhaus.org", "DNSBL (IP list)")
    assert rbl["status"] == "fail" and "lists everything: 1.0.0.127.zen.spamhaus.org must not be listed but is" in rbl["evidence"]
    assert "lists everything: invalid.dbl.spamhaus.org" in row(report, "dbl.spamhaus.org", "RHSBL (domain list)")["evidence"]


def test_an_rbl_blocking_the_resolver(zone_output, serve):
    zones = right_set(zone_output, "example")
    zones["zen.spamhaus.org"] = replaced(zones["zen.spamhaus.org"], r"A\s+127\.0\.0\.2\b", "A 127.255.255.254")
    code, report = check(EXAMPLE, serve(zones))
    assert code == 1
    assert "blocking your resolver" in row(report, "zen.spamhaus.org", "DNSBL (IP list)")["evidence"]


def test_servfail_is_reported_as_servfail(zone_output, serve):
    zones = right_set(zone_output, "example")
    code, report = check(EXAMPLE, serve(zones, broken={"example.org", "zen.spamhaus.org"}))
    assert code == 1
    for subject, name in (("example.org", "MX"), ("example.org", "SPF"), ("zen.spamhaus.org", "DNSBL (IP list)")):
        found = row(report, subject, name)
        assert found["status"] == "servfail" and "SERVFAIL" in found["evidence"], found
    assert row(report, "example.com", "MX")["status"] == "ok"


def test_a_closed_port_is_a_timeout_and_exit_2():
    port = free_port()  # nothing listens there
    result = mailforge("dns", "check", str(EXAMPLE), "--nameserver", f"127.0.0.1:{port}", "--timeout", "0.3")
    assert result.returncode == 2
    assert f"no nameserver answered: 127.0.0.1:{port}: timeout" in result.stderr
    assert "missing" not in result.stderr and "no MX" not in result.stderr


def test_a_socket_that_never_answers_is_a_timeout_and_exit_2():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        code, report = check(EXAMPLE, f"127.0.0.1:{port}")
    assert code == 2 and not report["ok"] and report["checks"] == []
    assert report["error"].startswith(f"no nameserver answered: 127.0.0.1:{port}: timeout")


class DroppingProxy:
    """Forwards UDP queries to a real server, except those for names under `drop`, which never get an answer."""

    def __init__(self, upstream: str, drop: bytes):
        host, port = upstream.split(":")
        self.upstream, self.drop = (host, int(port)), drop
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.nameserver = f"127.0.0.1:{self.socket.getsockname()[1]}"
        self.running = True
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        deadline = time.monotonic() + 120  # bounded, whatever happens to the test
        while self.running and time.monotonic() < deadline:
            try:
                query, client = self.socket.recvfrom(4096)
            except OSError:
                continue
            if self.drop in query.lower():
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                up.settimeout(2)
                up.sendto(query, self.upstream)
                try:
                    self.socket.sendto(up.recvfrom(65535)[0], client)
                except OSError:
                    pass

    def stop(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        self.socket.close()


def test_a_zone_that_times_out_is_a_timeout_not_missing(zone_output, serve):
    proxy = DroppingProxy(serve(right_set(zone_output, "example")), drop=b"\x03zen\x08spamhaus")
    try:
        code, report = check(EXAMPLE, proxy.nameserver)
    finally:
        proxy.stop()
    assert code == 1
    rbl = row(report, "zen.spamhaus.org", "DNSBL (IP list)")
    assert rbl["status"] == "timeout" and "did not answer within 0.5 s" in rbl["evidence"]
    assert [c["subject"] for c in failures(report)] == ["zen.spamhaus.org"]


def test_bad_inventory_and_bad_nameserver_exit_2(tmp_path):
    assert mailforge("dns", "check", str(bad_inventory(tmp_path)), "--nameserver", "127.0.0.1").returncode == 2
    result = mailforge("dns", "check", str(EXAMPLE), "--nameserver", "127.0.0.1:99999")
    assert result.returncode == 2 and "is not a port" in result.stderr
    result = mailforge("dns", "check", str(EXAMPLE), "--nameserver", "ns..example.com")
    assert result.returncode == 2 and "--nameserver 'ns..example.com': cannot resolve" in result.stderr, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


# --- the planning functions ----------------------------------------------------------------------


def test_rbl_test_entries():
    from mailforge import dns

    assert dns.rhsbl_test_name("dbl.spamhaus.org") == "dbltest.com"
    assert dns.rhsbl_test_name("rhsbl.example.net") == "test"
    assert dns.parse_nameserver("10.232.0.53") == ("10.232.0.53", 53)
    assert dns.parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert dns.parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert dns.parse_nameserver("2001:db8::53") == ("2001:db8::53", 53)
    assert dns.reverse_zone("2001:db8::25") == ("0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "2001:db8::/64")
    assert dns.reverse_network("0.232.10.in-addr.arpa") == "10.232.0.0/24"


# --- the lab's DNS: `dns zone` output, served -------------------------------------------------------


def lab_zone_files(name: str) -> dict[str, str]:
    from mailforge import lab
    from mailforge.inventory import load_inventory

    inventory = load_inventory(INVENTORIES[name])
    files = lab.dns_files(inventory, lab.plan(inventory), tlsa=lab.published_dkim(inventory))  # the example signs: its DKIM records, as `dns zone` prints them
    assert f"{lab.DNS_DIRECTORY}/knot.conf" in files
    return {Path(path).name[: -len(".zone")]: text for path, text in files.items() if path.endswith(".zone")}


def dkim_state_left_out(line: str) -> str:
    return line.split("  ; DKIM ")[0] if "._domainkey." in line else line


def test_lab_dns_files_are_the_zone_output_plus_the_lab(zone_output):
    """Every zone section of `mailforge dns zone` is pasted, whole and in order, right under its zone's SOA and NS;
    what follows is only the lab's own: its sender domain, names and PTRs of containers the topology does not
    name, and the test DNS lists."""
    from mailforge import dns, lab
    from mailforge.inventory import load_inventory

    inventory = load_inventory(EXAMPLE)
    plan = lab.plan(inventory)
    # a DKIM record's comment says its state, which a `dns check` run by another test in between may move
    published = {zone: [dkim_state_left_out(line) for line in lines] for zone, lines in zone_sections(zone_output("example")).items()}
    files = {zone: "\n".join(dkim_state_left_out(line) for line in text.splitlines()) for zone, text in lab_zone_files("example").items()}
    assert set(published) <= set(files)
    lab_names = {c.hostname + "." for c in plan.containers} | {dns.reverse_name(c.address) + "." for c in plan.containers}
    for zone, text in files.items():
        lines = text.splitlines()
        assert lines[3].startswith("@ IN SOA ") and lines[4].startswith("@ IN NS "), text
        body = lines[5:]
        pasted = published.get(zone, [])
        assert body[: len(pasted)] == pasted, f"zone {zone}: the `dns zone` section is not pasted as printed"
        for line in body[len(pasted) :]:
            owner = line.split()[0]
            lab_only = (
                zone == lab.SENDER_DOMAIN
                or zone in inventory.topology.policy.rbl_clients
                or zone in inventory.topology.policy.rhsbl_senders
                or owner in lab_names
            )
            assert lab_only, f"zone {zone}: {line!r} is neither `dns zone` output nor the lab's own"
            assert owner not in {p.split()[0] for p in pasted if p.split()[3] == line.split()[3]}, f"{line!r} repeats a published record"
    # The lab lists its "spammer" client in every IP list, besides the RFC 5782 test entry.
    spammer = ".".join(reversed(plan.by_host("spammer").address.split(".")))
    for zone in inventory.topology.policy.rbl_clients:
        assert re.search(rf"^{re.escape(spammer)}\.{re.escape(zone)}\.\s+\d+ IN A\s+127\.0\.0\.2", files[zone], re.M), files[zone]


def test_the_lab_zones_pass_dns_check_on_a_real_nsd(serve):
    """The lab's zone files, verbatim, on a real NSD: NSD loads them, and `dns check` finds nothing wrong."""
    code, report = check(EXAMPLE, serve({}, zone_files=lab_zone_files("example")))
    assert code == 0 and report["ok"], failures(report)
    assert len(report["checks"]) >= 10


def test_the_lab_names_a_balancer_without_fqdn_and_passes_dns_check(serve):
    """Where `dns zone` prints no MX (lb-relays-core), the lab publishes one naming the balancer's lab hostname,
    so its probes reach the balancer; on a real NSD those zones pass `dns check`."""
    files = lab_zone_files("lb-relays-core")
    assert "example.org.  3600 IN MX   10 lb1.lab.  ; the lab's name for a balancer without fqdn" in files["example.org"]
    code, report = check(INVENTORIES["lb-relays-core"], serve({}, zone_files=files))
    assert code == 0 and report["ok"], failures(report)
    assert "lb1.lab (balancer lb1)" in row(report, "example.org", "MX")["evidence"]


# --- IPv6 hosts ---------------------------------------------------------------------------------


def ipv6_inventory(tmp_path: Path) -> Path:
    """The example with relay1 and the core on IPv6 addresses (the balancer and relay2 stay on IPv4)."""
    shutil.copy(EXAMPLE / "users.txt", tmp_path / "users.txt")
    text = (EXAMPLE / "topology.yml").read_text()
    text = text.replace("address: 10.232.0.21", "address: 2001:db8:232::21").replace("address: 10.232.0.30", "address: 2001:db8:232::30")
    (tmp_path / "topology.yml").write_text(text)
    return tmp_path


def test_ipv6_hosts_get_aaaa_ip6_ptrs_and_ip6_spf(tmp_path, serve):
    inventory = ipv6_inventory(tmp_path)
    result = mailforge("dns", "zone", str(inventory))
    assert result.returncode == 0, result.stderr
    zones = zone_sections(result.stdout)
    reverse6 = "0.0.0.0.2.3.2.0.8.b.d.0.1.0.0.2.ip6.arpa"
    assert "2001:db8:232::/64" in result.stdout
    assert [line.split()[3:5] for line in zones["example.com"] if line.startswith("relay1.")] == [["AAAA", "2001:db8:232::21"]]
    assert any('"v=spf1 ip6:2001:db8:232::30 -all"' in line for line in zones["example.org"])
    ptrs = {line.split()[0]: line.split()[4] for line in zones[reverse6]}
    assert ptrs == {"1.2." + "0." * 14 + reverse6 + ".": "relay1.example.com.", "0.3." + "0." * 14 + reverse6 + ".": "core.internal.example.com."}
    right = {**zones, **dnsbl_sections(inventory)}
    code, report = check(inventory, serve(right))
    assert code == 0 and report["ok"], failures(report)
    assert "2001:db8:232::21" in row(report, "relay1.example.com", "FCrDNS (relay)")["evidence"]
    # the relay's ip6.arpa PTR missing: FCrDNS fails for that relay only
    code, report = check(inventory, serve({**right, reverse6: without(right[reverse6], "relay1")}))
    assert code == 1
    assert [(c["subject"], c["check"]) for c in failures(report)] == [("relay1.example.com", "FCrDNS (relay)")]
