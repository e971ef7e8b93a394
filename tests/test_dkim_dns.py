"""DKIM, DMARC and the SPF lookup limit against a real authoritative server: `mailforge dns zone` prints the
records, a local Knot (Debian's knotd, as in test_acme.py) on a free port of 127.0.0.1 serves them, and
`mailforge dns check --nameserver 127.0.0.1:PORT` judges them. A key changed in DNS, an SPF record over
10 lookups, a DMARC record that says something else: each fails its row. Rotation: a new selector signs
only once `dns check` has seen its record. `mailforge dkim rotate|status` and their bad input (exit 2,
nothing written). Every test has its own MAILFORGE_STATE_DIR under tmp_path."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import INVENTORIES
from test_acme import _binary
from test_dns import NameServer, dnsbl_sections, free_port

SECTIONS = """
dkim:
  algorithms: [rsa]
  retire_after_hours: 24
dmarc:
  policy: quarantine
  percentage: 50
  aggregate_reports: [mailto:dmarc@example.org]
"""


class Knot(NameServer):
    """knotd serving `zones` ({zone: record lines}) under a test SOA/NS on 127.0.0.1:port; stop() ends it. With
    `updatable`, it takes RFC 2136 updates signed with its own TSIG key (`update`), as a list operator's would."""

    def __init__(self, root: Path, zones: dict[str, list[str]], updatable: bool = False):
        from mailforge.dns import zone_file_name
        from mailforge.dns.knot import knot_conf
        from mailforge.tls import acmelab

        root.mkdir(parents=True)
        self.root, self.port = root, free_port()
        for zone, lines in zones.items():
            head = [f"$ORIGIN {zone}.", "$TTL 300", "@ IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60", "@ IN NS ns.test."]
            (root / zone_file_name(zone)).write_text("\n".join(head + lines) + "\n", encoding="utf-8")
        conf = root / "knot.conf"
        self.key = acmelab.new_tsig() if updatable else None
        tsig = (self.key.name, self.key.algorithm, self.key.secret) if self.key else None
        conf.write_text(knot_conf(sorted(zones), str(root), [f"127.0.0.1@{self.port}"], tsig))
        self.log = (root / "knot.log").open("wb")
        self.process = subprocess.Popen([_binary("knotd"), "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            text = (root / "knot.log").read_text(errors="replace")
            assert self.process.poll() is None, f"knotd exited: {text}"
            if "server started" in text and all(f"[{zone}.] loaded" in text for zone in zones):
                break
            assert time.monotonic() < deadline, f"knotd did not start or load every zone: {text}"
            time.sleep(0.05)
        self.nameserver = f"127.0.0.1:{self.port}"

    def update(self, zone: str, change: str, name: str, rtype: str, value: str) -> None:
        """One TSIG-signed RFC 2136 update: add or delete one record."""
        import dns.query
        import dns.update

        assert self.key is not None, "started without updatable=True"
        update = dns.update.UpdateMessage(zone, keyring=self.key.dnspython())
        if change == "add":
            update.add(name, 300, rtype, value)
        else:
            update.delete(name, rtype, value)
        assert dns.query.tcp(update, "127.0.0.1", port=self.port, timeout=5).rcode() == 0


@pytest.fixture
def serve(tmp_path):
    started: list[Knot] = []

    def start(zones: dict[str, list[str]]) -> str:
        server = Knot(tmp_path / f"knot{len(started)}", zones)
        started.append(server)
        return server.nameserver

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def state(tmp_path, monkeypatch) -> Path:
    """This test's controller store (never the home one), for the commands run here and in subprocesses."""
    directory = tmp_path / "state"
    monkeypatch.setenv("MAILFORGE_STATE_DIR", str(directory))
    return directory


def inventory(tmp: Path, sections: str = SECTIONS) -> Path:
    """The example without the tls records whose rows need the live cluster (TLSA against a relay, MTA-STS over HTTPS), with dkim and dmarc."""
    import yaml

    directory = tmp / "inventory"
    shutil.copytree(INVENTORIES["example"], directory)
    topology = yaml.safe_load((directory / "topology.yml").read_text(encoding="utf-8"))
    for own in ("tls", "dkim", "dmarc"):  # the example signs: its own dkim and dmarc give way to `sections`
        topology.pop(own, None)
    (directory / "topology.yml").write_text(yaml.safe_dump(topology, sort_keys=False) + sections, encoding="utf-8")
    return directory


def mailforge(*args: str) -> subprocess.CompletedProcess:
    """The command line in this process (Typer's runner), with this test's MAILFORGE_STATE_DIR: a second
    saved on each of the many runs here, against starting the installed script each time."""
    from typer.testing import CliRunner

    from mailforge.cli import app

    result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(["mailforge", *args], result.exit_code, result.stdout, result.stderr)


def zones_of(directory: Path) -> dict[str, list[str]]:
    """What an admin publishes after `mailforge dns zone`: every section as printed, and test DNS lists."""
    from mailforge.dns import zone_sections

    result = mailforge("dns", "zone", str(directory))
    assert result.returncode == 0, result.stderr
    return {**zone_sections(result.stdout), **dnsbl_sections(directory)}


def check(directory: Path, nameserver: str) -> tuple[int, dict[tuple[str, str], dict]]:
    result = mailforge("dns", "check", str(directory), "--nameserver", nameserver, "--timeout", "0.5", "--json")
    assert result.stdout, result.stderr
    envelope = json.loads(result.stdout)
    assert result.returncode != 2, result.stderr
    found = {(r["host"], r["name"]): r for host in envelope["hosts"].values() for r in host["results"]}
    return result.returncode, found


def status(directory: Path) -> dict[tuple[str, str], dict]:
    result = mailforge("dkim", "status", str(directory), "--json")
    assert result.returncode == 0, result.stderr
    return {(r["host"], r["name"]): r["data"] for host in json.loads(result.stdout)["hosts"].values() for r in host["results"]}


def signing(directory: Path, store: Path) -> set[tuple[str, str]]:
    from mailforge import dkim
    from mailforge.inventory import load_topology

    return {(k.domain, k.selector) for k in dkim.signing_keys(load_topology(directory).topology, store)}


def store_of(state: Path) -> Path:
    return state / "clusters" / "example" / "tls"


def snapshot(state: Path) -> dict[str, bytes]:
    return {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file()} if state.exists() else {}


def test_published_keys_pass_then_a_rotation_signs_only_once_its_record_is_seen(tmp_path, state, serve):
    directory = inventory(tmp_path)
    zones = zones_of(directory)  # makes each domain's first keys
    first = status(directory)
    assert {v["state"] for v in first.values()} == {"made"} and len(first) == 2
    assert signing(directory, store_of(state)) == set(), "nothing signs before its record is seen"

    code, rows = check(directory, serve(zones))
    assert code == 0, [r for r in rows.values() if not r["ok"]]
    for domain, selector in first:
        assert rows[(domain, f"DKIM {selector}")]["status"] == "ok"
        assert "the store's key" in rows[(domain, f"DKIM {selector}")]["detail"]
    assert rows[("example.com", "DMARC")]["status"] == "ok" and "p=quarantine; pct=50" in rows[("example.com", "DMARC")]["detail"]
    assert re.search(r"; \d+ DNS lookups \(limit 10\)", rows[("example.com", "SPF")]["detail"])
    assert signing(directory, store_of(state)) == set(first), "seen: they sign"
    assert {v["state"] for v in status(directory).values()} == {"signing"}

    rotated = mailforge("dkim", "rotate", str(directory), "--domain", "example.org", "--selector", "next1")
    assert rotated.returncode == 0, rotated.stderr
    assert "made selector next1 (rsa)" in rotated.stdout
    after = status(directory)
    assert after[("example.org", "next1")]["state"] == "made"
    code, rows = check(directory, serve(zones))  # the new records are not published yet
    assert code == 1 and rows[("example.org", "DKIM next1")]["status"] == "fail"
    assert "no record at next1._domainkey.example.org" in rows[("example.org", "DKIM next1")]["detail"]
    assert signing(directory, store_of(state)) == set(first), "the old selectors sign on while the new record is missing"

    code, rows = check(directory, serve(zones_of(directory)))  # published: seen, signing switches
    assert code == 0, [r for r in rows.values() if not r["ok"]]
    now = signing(directory, store_of(state))
    assert ("example.org", "next1") in now
    assert not {s for s in first if s[0] == "example.org"} & now
    old = status(directory)
    for domain, selector in first:
        if domain == "example.org":
            assert old[(domain, selector)]["state"] == "published", "superseded: its record stays for retire_after_hours"
            assert old[(domain, selector)]["remove_after"]


def test_a_domain_without_a_key_fails_its_dkim_row(tmp_path, state, serve):
    """dns check makes no key (dns zone does): before any, the DKIM row says what to run."""
    directory = inventory(tmp_path)
    zones = zones_of(directory)
    shutil.rmtree(store_of(state) / "dkim")
    code, rows = check(directory, serve(zones))
    assert code == 1 and not (store_of(state) / "dkim").exists()
    for domain in ("example.com", "example.org"):
        assert rows[(domain, "DKIM")]["status"] == "fail" and "`mailforge dns zone` makes it" in rows[(domain, "DKIM")]["detail"]


def test_a_key_changed_in_dns_fails_its_row_naming_both_digests(tmp_path, state, serve):
    from mailforge import dkim
    from mailforge.inventory import load_topology

    directory = inventory(tmp_path)
    zones = zones_of(directory)
    t = load_topology(directory).topology
    key = next(k for k in dkim.published_keys(t, store_of(state)) if k.domain == "example.com" and k.algorithm == "rsa")
    other = dkim.keys.public_p(dkim.keys.new_private_key("rsa"))
    from mailforge.dns.records import txt_value

    # the record's strings as published (255 bytes each), so the whole p= is replaced, not a piece of it
    ours, theirs = txt_value(key.public_txt()), txt_value(key.public_txt().replace(key.public_p(), other))
    assert sum(ours in line for line in zones["example.com"]) == 1
    zones["example.com"] = [line.replace(ours, theirs) for line in zones["example.com"]]
    code, rows = check(directory, serve(zones))
    assert code == 1
    row = rows[("example.com", f"DKIM {key.selector}")]
    from mailforge.dns.mail_auth import digest

    assert row["status"] == "fail" and f"p= is key {digest(other)}, not the store's key {digest(key.public_p())}" in row["detail"], row
    assert (key.domain, key.selector) not in signing(directory, store_of(state)), "a key not published as it is never signs"
    assert all(r["status"] == "ok" for (subject, name), r in rows.items() if name.startswith("DKIM") and name != f"DKIM {key.selector}")


def test_spf_over_ten_lookups_fails_naming_the_count(tmp_path, state, serve):
    """a, mx, exists, include and redirect each cost a lookup: ten pass, eleven fail, even for a sender the first term matches."""
    directory = inventory(tmp_path)
    zones = zones_of(directory)
    chain = [f's{i}.example.com. 300 IN TXT "v=spf1 include:s{i + 1}.example.com -all"' for i in range(1, 7)]
    chain += ['s7.example.com. 300 IN TXT "v=spf1 -all"', 's8.example.com. 300 IN TXT "v=spf1 -all"']
    ten = "v=spf1 ip4:10.232.0.30 a:core.internal.example.com mx exists:nx.example.com include:s1.example.com"
    zones["example.com"] = [re.sub(r'"v=spf1 [^"]*"', f'"{ten} -all"', line) for line in zones["example.com"]] + chain
    code, rows = check(directory, serve(zones))
    assert code == 0 and "10 DNS lookups (limit 10)" in rows[("example.com", "SPF")]["detail"], [r["detail"] for r in rows.values() if not r["ok"]]
    zones["example.com"] = [line.replace(f'"{ten} -all"', f'"{ten} redirect=s8.example.com"') for line in zones["example.com"]]
    code, rows = check(directory, serve(zones))
    row = rows[("example.com", "SPF")]
    assert code == 1 and row["status"] == "fail", row
    assert row["detail"].startswith("11 DNS lookups (limit 10): a:core.internal.example.com, mx, exists:nx.example.com, include:s1.example.com, ")
    assert "include:s2.example.com (in s1.example.com)" in row["detail"] and "redirect=s8.example.com" in row["detail"]
    # three lookups that find nothing: over the void limit of 2
    voids = "v=spf1 ip4:10.232.0.30 a:nx1.example.org a:nx2.example.org a:nx3.example.org -all"
    zones["example.org"] = [re.sub(r'"v=spf1 [^"]*"', f'"{voids}"', line) for line in zones["example.org"]]
    code, rows = check(directory, serve(zones))
    assert "3 void lookups (limit 2): a:nx1.example.org, a:nx2.example.org, a:nx3.example.org" in rows[("example.org", "SPF")]["detail"]


def test_a_wrong_missing_or_doubled_dmarc_record_fails(tmp_path, state, serve):
    directory = inventory(tmp_path)
    zones = zones_of(directory)
    zones["example.com"] = [line.replace("p=quarantine; pct=50", "p=none") for line in zones["example.com"]]
    zones["example.org"] = [line for line in zones["example.org"] if not line.startswith("_dmarc.")]
    code, rows = check(directory, serve(zones))
    assert code == 1
    wrong = rows[("example.com", "DMARC")]
    assert wrong["status"] == "fail" and "p=none, not quarantine" in wrong["detail"] and "pct=100, not 50" in wrong["detail"], wrong
    missing = rows[("example.org", "DMARC")]
    assert missing["status"] == "fail" and "no DMARC record at _dmarc.example.org" in missing["detail"]
    assert '"v=DMARC1; p=quarantine; pct=50; rua=mailto:dmarc@example.org"' in missing["detail"], "says what to publish"
    zones["example.org"].append('_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject"')
    zones["example.org"].append('_dmarc.example.org. 300 IN TXT "v=DMARC1; p=quarantine; pct=50; rua=mailto:dmarc@example.org"')
    code, rows = check(directory, serve(zones))
    assert "2 DMARC records at _dmarc.example.org, so receivers apply none" in rows[("example.org", "DMARC")]["detail"]


def test_retired_selectors_are_listed_for_removal(tmp_path, state):
    """A state.json with old times (no sleeps): switched 30 hours ago, retire_after_hours 24."""
    from mailforge import dkim
    from mailforge.inventory import load_topology

    directory = inventory(tmp_path)
    t, store = load_topology(directory).topology, store_of(state)
    dkim.ensure_keys(t, store)
    old = {(k.domain, k.selector) for k in dkim.published_keys(t, store)}
    long_ago = (datetime.now().astimezone() - timedelta(days=10)).isoformat(timespec="seconds")
    dkim.record_seen(t, store, dict.fromkeys(old, long_ago))
    made = dkim.rotate(t, store, domain="example.com", selector="fresh")
    switched = datetime.now().astimezone() - timedelta(hours=30)
    dkim.record_seen(t, store, {(k.domain, k.selector): switched.isoformat(timespec="seconds") for k in made})
    rows = status(directory)
    retired = [(d, s) for (d, s) in old if d == "example.com"]
    for key in retired:
        assert rows[key]["state"] == "retired" and rows[key]["next"].startswith(f"remove the TXT record {key[1]}._domainkey.example.com")
        assert datetime.fromisoformat(rows[key]["remove_after"]) == switched.replace(microsecond=0) + timedelta(hours=24)
    zone = mailforge("dns", "zone", str(directory))
    assert zone.returncode == 0, zone.stderr
    for domain, selector in retired:
        assert f"; DKIM: remove the TXT record {selector}._domainkey.{domain}" in zone.stdout
        assert not re.search(rf"^{selector}\._domainkey\.{domain}\.", zone.stdout, re.M), "a retired record is not printed to publish"
    assert re.search(r"^fresh\._domainkey\.example\.com\. .* TXT ", zone.stdout, re.M)
    table = mailforge("dkim", "status", str(directory))
    assert table.returncode == 0 and "retired" in table.stdout and "signing" in table.stdout


def test_no_private_key_in_any_output_or_rendered_file(tmp_path, state, serve):
    directory = inventory(tmp_path)
    outputs = [mailforge("dns", "zone", str(directory)), mailforge("dkim", "rotate", str(directory)), mailforge("dkim", "status", str(directory))]
    outputs.append(mailforge("dkim", "status", str(directory), "--json"))
    outputs.append(mailforge("dns", "zone", str(directory), "--json"))
    outputs.append(mailforge("dns", "check", str(directory), "--nameserver", serve(zones_of(directory)), "--timeout", "0.5"))
    rendered = tmp_path / "render"
    outputs.append(mailforge("render", str(directory), "-o", str(rendered)))
    assert all(o.returncode == 0 for o in outputs[:5]) and outputs[6].returncode == 0, [(o.args, o.stderr) for o in outputs]
    keys = list(store_of(state).glob("dkim/*/*.key"))
    assert len(keys) == 4  # two domains, the first key each and the rotated one
    secrets = []
    for path in keys:
        body = "".join(line for line in path.read_text().splitlines() if not line.startswith("-----"))
        secrets += [body[i : i + 24] for i in range(0, len(body) - 24, 24)]
    texts = [o.stdout + o.stderr for o in outputs] + [p.read_text(errors="replace") for p in rendered.rglob("*") if p.is_file()]
    for text in texts:
        assert "PRIVATE KEY" not in text
        assert not [s for s in secrets if s in text], "a piece of a private key was printed or rendered"


# --- bad input: a clear message, exit 2, nothing written -------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--selector", "Bad_Sel"], "--selector 'Bad_Sel': 'Bad_Sel' is not a DNS label: lowercase letters a-z, digits and inner hyphens"),
        (["--selector", "a.b"], "--selector 'a.b': 'a.b' is not a DNS label"),
        (["--domain", "elsewhere.net"], "--domain elsewhere.net: is not a hosted domain; signed domains: example.com, example.org"),
    ],
)
def test_rotate_refuses_bad_input(tmp_path, state, args, message):
    directory = inventory(tmp_path)
    assert mailforge("dns", "zone", str(directory)).returncode == 0
    before = snapshot(state)
    result = mailforge("dkim", "rotate", str(directory), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert snapshot(state) == before


def test_a_hosted_domain_outside_dkim_domains_is_refused(tmp_path, state):
    directory = inventory(tmp_path, SECTIONS.replace("dkim:\n", "dkim:\n  domains: [example.com]\n"))
    result = mailforge("dkim", "rotate", str(directory), "--domain", "example.org")
    assert result.returncode == 2
    assert "--domain example.org: is hosted, but not in dkim.domains; signed domains: example.com (add it to dkim.domains" in result.stderr
    assert snapshot(state) == {}


@pytest.mark.parametrize("damage", ["corrupt", "unreadable", "missing"])
def test_a_bad_key_file_stops_every_command(tmp_path, state, serve, damage):
    """Every command that reads the store (all four for a corrupt key; `dkim status` for the other damages)."""
    directory = inventory(tmp_path)
    zones = zones_of(directory)
    path = sorted(store_of(state).glob("dkim/example.org/*.key"))[0]
    if damage == "corrupt":
        path.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
        expected = f"{path}: not an unencrypted PEM private key: restore it from a backup"
    elif damage == "unreadable":  # as root a mode does not stop reading: a directory in its place does
        path.unlink()
        path.mkdir()
        expected = f"cannot read the key file {path}: Is a directory"
    else:
        path.unlink()
        expected = f"{path}: the key file is missing: restore it from a backup"
    before = snapshot(state)
    commands = [["dkim", "status"]]
    if damage == "corrupt":
        commands += [["dkim", "rotate"], ["dns", "zone"], ["dns", "check", "--nameserver", serve(zones)]]
    for args in commands:
        result = mailforge(*args[:2], str(directory), *args[2:])
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert snapshot(state) == before, args


def test_without_a_dkim_section_the_commands_say_what_to_add(tmp_path, state):
    directory = inventory(tmp_path, sections="")
    for command in ("rotate", "status"):
        result = mailforge("dkim", command, str(directory))
        assert result.returncode == 2
        assert f"{directory / 'topology.yml'}: dkim: the topology has no dkim section" in result.stderr
        assert "e.g. `dkim: {algorithms: [rsa], retire_after_hours: 168}`" in result.stderr
    assert not state.exists()


def test_ed25519_is_refused_with_the_reason_and_nothing_is_made(tmp_path, state):
    """Debian's OpenDKIM (2.11.0~beta2) signs every key with one algorithm: beside RSA an Ed25519 key would make the
    milter tempfail every message of the domain. So the inventory may not ask for it (exit 2, located, no key made)."""
    directory = inventory(tmp_path, SECTIONS.replace("algorithms: [rsa]", "algorithms: [rsa, ed25519]"))
    for args in (["validate"], ["dkim", "rotate"], ["dns", "zone"]):
        result = mailforge(*args, str(directory))
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert re.search(r"topology\.yml:\d+:\d+: dkim\.algorithms\[1\]: OpenDKIM as Debian 12 and 13 ship it \(2\.11\.0~beta2\)", result.stderr), result.stderr
        assert "algorithms: [rsa]" in result.stderr and "Traceback" not in result.stderr
    assert not list(state.rglob("*.key"))
