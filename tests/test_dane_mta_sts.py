"""DANE, MTA-STS and TLS-RPT: `dns zone` prints the records, render makes HAProxy serve the policy, and
`dns check` checks them against real servers, no lab needed:

- a real NSD (as in test_dns.py) serving exactly what `dns zone` prints;
- a real HAProxy running the rendered haproxy.cfg (only its `global` section, which wants a chroot and
  a haproxy user, replaced; the certificate and policy paths pointed at tmp), on loopback addresses of
  its own: its SMTP frontend in front of two SMTP responders that speak STARTTLS with the MX key, its
  443 frontend serving the rendered policy with an mta-sts certificate from a test CA;
- the controller's store under MAILFORGE_STATE_DIR in tmp.

The right set passes; a stale TLSA, a policy naming a host that is not an MX, and a policy changed
under an unchanged id each fail, and the row names the record.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import MAILFORGE
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_dns import Nsd, failures, free_port, row

from mailforge.dns import zone_sections

FIXTURE = Path(__file__).parent / "fixtures" / "tls"
GOLDEN = Path(__file__).parent / "golden-tls"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


# --- a test CA and the store --------------------------------------------------------------------------


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert(subject_key, names: list[str], issuer_key=None, issuer=None, ca: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(issuer_key or subject_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Pki:
    """A CA, the MX key and certificate in the store's mx/, and the mta-sts certificate HAProxy serves."""

    def __init__(self, store: Path, tmp: Path):
        self.ca_key = _key()
        self.ca = _cert(self.ca_key, ["mailforge test CA"], ca=True)
        (store / "mx").mkdir(parents=True, mode=0o700)
        self.mx_key = _key()
        self.mx_cert = _cert(self.mx_key, ["mx.example.com"], self.ca_key, self.ca)
        (store / "mx" / "key.pem").write_bytes(_pem_key(self.mx_key))
        (store / "mx" / "chain.pem").write_bytes(_pem(self.mx_cert) + _pem(self.ca))
        (store / "trust.pem").write_bytes(_pem(self.ca))
        self.mx_pem = tmp / "mx.pem"
        self.mx_pem.write_bytes(_pem_key(self.mx_key) + _pem(self.mx_cert) + _pem(self.ca))
        sts_key = _key()
        self.sts_pem = tmp / "mta-sts.pem"
        self.sts_pem.write_bytes(_pem_key(sts_key) + _pem(_cert(sts_key, ["mta-sts.example.com", "mta-sts.example.org"], self.ca_key, self.ca)) + _pem(self.ca))


# --- a relay stand-in: SMTP with STARTTLS -------------------------------------------------------------


class Smtp(socketserver.ThreadingTCPServer):
    """Greets, answers EHLO offering STARTTLS, takes STARTTLS with `pem` (key + chain), answers QUIT."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, port: int, pem: Path):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pem)
        super().__init__((address, port), SmtpHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class SmtpHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.settimeout(10)
        reader = sock.makefile("rb")
        sock.sendall(b"220 relay ESMTP\r\n")
        while True:
            line = reader.readline()
            if not line:
                return
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb in (b"EHLO", b"HELO"):
                sock.sendall(b"250-relay\r\n250 STARTTLS\r\n" if not isinstance(sock, ssl.SSLSocket) else b"250 relay\r\n")
            elif verb == b"STARTTLS":
                sock.sendall(b"220 go ahead\r\n")
                sock = self.server.context.wrap_socket(sock, server_side=True)  # type: ignore[attr-defined]
                reader = sock.makefile("rb")
            elif verb == b"QUIT":
                sock.sendall(b"221 bye\r\n")
                return
            else:
                sock.sendall(b"250 ok\r\n")


# --- the rendered HAProxy, running ----------------------------------------------------------------


def run_haproxy(cfg_text: str, policy: str, pki: Pki, root: Path) -> subprocess.Popen:
    """The rendered haproxy.cfg with only its `global` section replaced, the certificate and policy in `root`."""
    from mailforge.render.mta_sts import HAPROXY_POLICY
    from mailforge.tls import HOST_MTA_STS

    root.mkdir(parents=True, exist_ok=True)
    (root / "mta-sts.txt").write_text(policy, encoding="utf-8")
    text = re.sub(r"(?s)^global\n.*?\n\ndefaults", "global\n    maxconn 256\n\ndefaults", cfg_text.split("\n", 2)[2] if cfg_text.startswith("#") else cfg_text)
    text = text.replace(HOST_MTA_STS, str(pki.sts_pem)).replace(HAPROXY_POLICY, str(root / "mta-sts.txt"))
    (root / "haproxy.cfg").write_text(text, encoding="utf-8")
    check = subprocess.run([HAPROXY, "-c", "-f", str(root / "haproxy.cfg")], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    log = (root / "haproxy.log").open("wb")
    process = subprocess.Popen([HAPROXY, "-db", "-f", str(root / "haproxy.cfg")], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process


def wait_listening(address: str, port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 15
    while True:
        assert process.poll() is None, "haproxy exited"
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {address}:{port} after 15 s"
            time.sleep(0.05)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# --- the cluster on loopback addresses of its own --------------------------------------------------


@pytest.fixture
def site(tmp_path, monkeypatch):
    """The fixture inventory moved onto 127.N.M.0/24 (a net of its own, so HAProxy can take port 443 there),
    its store under tmp, a test PKI, two relay stand-ins; `start(policy=None, zones=None)` starts NSD and
    HAProxy and returns the nameserver."""
    net = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
    frontend, backend = free_port(), free_port()
    text = (FIXTURE / "topology.yml").read_text(encoding="utf-8").replace("10.232.0.", f"{net}.")
    text = text.replace("backend_port: 10024", f"backend_port: {backend}\n    frontend_port: {frontend}\n    proxy_protocol: none").replace(
        "    proxy_protocol: v2\n", ""
    )
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "topology.yml").write_text(text, encoding="utf-8")
    monkeypatch.setenv("MAILFORGE_STATE_DIR", str(tmp_path / "state"))
    from mailforge.tls import store_of

    store = store_of("tlsdemo")
    pki = Pki(store, tmp_path)
    relays = [Smtp(f"{net}.{n}", backend, pki.mx_pem) for n in (21, 22)]
    started: list = []

    class Site:
        pass

    s = Site()
    s.inventory, s.store, s.pki, s.net, s.frontend = inventory, store, pki, net, frontend

    def zone() -> dict[str, list[str]]:
        code, output = cli("dns", "zone", str(inventory))
        assert code == 0, output
        return zone_sections(output)

    def rendered_cfg() -> str:
        from mailforge.inventory import load_inventory
        from mailforge.render import render

        tree = render(load_inventory(inventory))
        return tree["lb"]["/etc/haproxy/haproxy.cfg"].text

    def start(policy: str | None = None, zones: dict[str, list[str]] | None = None) -> str:
        from mailforge.inventory import load_inventory
        from mailforge.render import render

        for earlier in [p for p in started if isinstance(p, subprocess.Popen) and p.poll() is None]:
            stop(earlier)  # one HAProxy at a time: two would share 443 (SO_REUSEPORT) and answer in turn
        tree = render(load_inventory(inventory))
        served = tree["lb"]["/etc/haproxy/mta-sts.txt"].text if policy is None else policy
        proxy = run_haproxy(tree["lb"]["/etc/haproxy/haproxy.cfg"].text, served, pki, tmp_path / f"haproxy{len(started)}")
        started.append(proxy)
        wait_listening(f"{net}.10", 443, proxy)
        wait_listening(f"{net}.10", frontend, proxy)
        nsd = Nsd(tmp_path / f"nsd{len(started)}", zones if zones is not None else zone())
        started.append(nsd)
        return nsd.nameserver

    s.zone, s.start, s.rendered_cfg = zone, start, rendered_cfg
    yield s
    for thing in started:
        stop(thing) if isinstance(thing, subprocess.Popen) else thing.stop()
    for relay in relays:
        relay.shutdown()
        relay.server_close()


def cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from mailforge.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout


def check(inventory: Path, nameserver: str) -> tuple[int, dict]:
    from conftest import rows

    code, output = cli("dns", "check", str(inventory), "--nameserver", nameserver, "--json", "--timeout", "0.5")
    envelope = json.loads(output)
    checks = [{"subject": r["host"], "check": r["name"], "status": r["status"], "evidence": r["detail"], "ok": r["ok"]} for r in rows(envelope)]
    return code, {"checks": checks}


# --- dns zone and render, pinned ---------------------------------------------------------------------


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MAILFORGE_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden {path}; run with MAILFORGE_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


def test_rendered_policy_haproxy_and_firewall_match_golden():
    from mailforge.inventory import load_inventory
    from mailforge.render import render

    tree = render(load_inventory(FIXTURE))
    golden("lb/etc/haproxy/mta-sts.txt", tree["lb"]["/etc/haproxy/mta-sts.txt"].text)
    golden("lb/etc/haproxy/haproxy.cfg", tree["lb"]["/etc/haproxy/haproxy.cfg"].text)
    golden("lb/etc/iptables/rules.v4", tree["lb"]["/etc/iptables/rules.v4"].text)
    assert tree["lb"]["/etc/haproxy/mta-sts.txt"].text == "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 604800\n"
    assert "--dport 443 " in tree["lb"]["/etc/iptables/rules.v4"].text
    assert "/etc/haproxy/mta-sts.txt" not in tree["relay1"]  # only the balancer serves it


def test_zone_prints_tlsa_for_live_and_next_key_and_the_policy_records(tmp_path, monkeypatch):
    from mailforge.tls import dane, store_of

    monkeypatch.setenv("MAILFORGE_STATE_DIR", str(tmp_path / "state"))
    store = store_of("tlsdemo")
    Pki(store, tmp_path)
    code, output = cli("dns", "zone", str(FIXTURE))
    assert code == 0, output
    next_key = store / "mx" / "next-key.pem"
    assert next_key.is_file() and next_key.stat().st_mode & 0o777 == 0o600, "the next key is made, 0600"
    live = dane.spki_digest((store / "mx" / "chain.pem").read_bytes())
    nxt = dane.spki_digest(next_key.read_bytes())
    assert live == dane.spki_digest((store / "mx" / "key.pem").read_bytes()) != nxt
    assert "PRIVATE" not in output
    # the digests vary from run to run: the golden holds placeholders
    golden("dns-zone.zone", output.replace(live, "<live key's SPKI sha256>").replace(nxt, "<next key's SPKI sha256>"))
    zones = zone_sections(output)
    tlsa = [line.split() for line in zones["example.com"] if " TLSA " in line]
    assert [(t[0], t[4:8]) for t in tlsa] == [("_25._tcp.mx.example.com.", ["3", "1", "1", live]), ("_25._tcp.mx.example.com.", ["3", "1", "1", nxt])]
    # the same next key on the next run: printing twice publishes nothing new
    assert cli("dns", "zone", str(FIXTURE))[1] == output


def test_may_roll_only_after_the_next_record_was_seen_long_enough(tmp_path):
    from mailforge.tls import dane

    now = datetime.datetime(2026, 1, 10, 12, tzinfo=datetime.UTC)
    assert not dane.roll_allowed(None, now, 48)
    assert not dane.roll_allowed(now - datetime.timedelta(hours=47), now, 48)
    assert dane.roll_allowed(now - datetime.timedelta(hours=48), now, 48)
    dane.ensure_next_key(tmp_path)
    digest = dane.spki_digest((tmp_path / dane.NEXT_KEY).read_bytes())
    assert not dane.may_roll(tmp_path, now)
    dane.record_seen(tmp_path, digest, now)
    assert dane.record_seen(tmp_path, digest, now + datetime.timedelta(hours=5)) == now  # the first sighting is kept
    assert not dane.may_roll(tmp_path, now + datetime.timedelta(hours=47))
    assert dane.may_roll(tmp_path, now + datetime.timedelta(hours=48))
    (tmp_path / dane.NEXT_KEY).unlink()
    dane.ensure_next_key(tmp_path)  # a new next key: its record has not been seen yet
    assert not dane.may_roll(tmp_path, now + datetime.timedelta(hours=100))


def test_policy_without_a_managed_balancer_is_printed_for_the_user_to_host(tmp_path):
    text = (Path(__file__).parent / "fixtures" / "contract" / "mx-proxy" / "topology.yml").read_text(encoding="utf-8")
    (tmp_path / "topology.yml").write_text(text + "\ntls:\n  mta_sts:\n    mode: testing\n", encoding="utf-8")
    for extra in ("users.txt", "recipients.txt"):
        if (Path(__file__).parent / "fixtures" / "contract" / "mx-proxy" / extra).exists():
            shutil.copy(Path(__file__).parent / "fixtures" / "contract" / "mx-proxy" / extra, tmp_path / extra)
    code, output = cli("dns", "zone", str(tmp_path))
    assert code == 0, output
    assert ";   https://mta-sts.example.org/.well-known/mta-sts.txt\n" in output
    assert "; version: STSv1\n; mode: testing\n; mx: mx.example.org\n; max_age: 604800\n" in output
    assert re.search(r"_mta-sts\.example\.org\.\s+3600 IN TXT\s+\"v=STSv1; id=[0-9a-f]{20}\"", output)
    assert not re.search(r"^mta-sts\.", output, re.M), "no A record: the user points the name where they host the policy"


# --- dns check against the real servers ---------------------------------------------------------------


def test_the_records_dns_zone_prints_pass(site):
    nameserver = site.start()
    code, report = check(site.inventory, nameserver)
    assert code == 0, failures(report)
    tlsa = row(report, "_25._tcp.mx.example.com", "TLSA (DANE)")
    assert f"{site.net}.10:{site.frontend}" in tlsa["evidence"] and "first seen" in tlsa["evidence"]
    for domain in ("example.com", "example.org"):
        assert row(report, domain, "MTA-STS policy")["status"] == "ok"
        assert row(report, domain, "MTA-STS id")["status"] == "ok"
        assert row(report, domain, "TLS-RPT")["status"] == "ok"
    assert (site.store / "mx" / "next-key.seen").is_file(), "what `certs` asks `may_roll` about"
    seen = json.loads((site.store / "mta-sts" / "seen.json").read_text())
    assert sorted(seen) == ["example.com", "example.org"]


def test_a_stale_tlsa_fails_naming_the_record(site):
    zones = site.zone()
    from mailforge.tls import dane

    live = dane.spki_digest((site.store / "mx" / "chain.pem").read_bytes())
    zones["example.com"] = [line.replace(live, "ab" * 32) for line in zones["example.com"]]
    code, report = check(site.inventory, site.start(zones=zones))
    assert code == 1
    assert [(c["subject"], c["check"]) for c in failures(report)] == [("_25._tcp.mx.example.com", "TLSA (DANE)")]
    evidence = row(report, "_25._tcp.mx.example.com", "TLSA (DANE)")["evidence"]
    assert "stale record _25._tcp.mx.example.com TLSA" in evidence and live in evidence and "ab" * 32 in evidence


def test_a_policy_naming_a_host_that_is_not_an_mx_fails(site):
    from mailforge.render.mta_sts import policy_id

    policy = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmx: backup.example.net\nmax_age: 604800\n"
    zones = site.zone()
    good = re.search(r"id=([0-9a-f]{20})", "\n".join(zones["example.com"])).group(1)  # type: ignore[union-attr]
    zones = {z: [line.replace(good, policy_id(policy)) for line in lines] for z, lines in zones.items()}
    code, report = check(site.inventory, site.start(policy=policy, zones=zones))
    assert code == 1
    assert sorted((c["subject"], c["check"]) for c in failures(report)) == [("example.com", "MTA-STS policy"), ("example.org", "MTA-STS policy")]
    evidence = row(report, "example.com", "MTA-STS policy")["evidence"]
    assert "names backup.example.net, not an MX of example.com (record example.com MX: mx.example.com)" in evidence


def test_a_policy_changed_under_an_unchanged_id_fails(site):
    nameserver = site.start()
    assert check(site.inventory, nameserver)[0] == 0
    changed = site.start(policy="version: STSv1\nmode: testing\nmx: mx.example.com\nmax_age: 604800\n", zones=site.zone())
    code, report = check(site.inventory, changed)
    assert code == 1
    assert sorted((c["subject"], c["check"]) for c in failures(report)) == [("example.com", "MTA-STS id"), ("example.org", "MTA-STS id")]
    evidence = row(report, "example.com", "MTA-STS id")["evidence"]
    assert evidence.startswith("record _mta-sts.example.com TXT id=") and "did not change, but the policy did" in evidence


def test_an_unreadable_key_in_the_store_exits_2_naming_the_file(tmp_path, monkeypatch):
    from mailforge.tls import store_of

    monkeypatch.setenv("MAILFORGE_STATE_DIR", str(tmp_path / "state"))
    chain = store_of("tlsdemo") / "mx" / "chain.pem"
    chain.parent.mkdir(parents=True)
    chain.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    for args in (("dns", "zone", str(FIXTURE)), ("dns", "check", str(FIXTURE), "--nameserver", "127.0.0.1:9", "--timeout", "0.1")):
        result = subprocess.run([str(MAILFORGE), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert f"{chain}: not a PEM key or certificate" in result.stderr and "Traceback" not in result.stderr
