"""`mailforge certs` against a real ACME server (Debian's pebble) and a real primary that takes TSIG-signed
RFC 2136 updates (Debian's Knot), both on free ports of 127.0.0.1: issue, renew keeping the key, and the
inputs that must stop a run before anything is written (wrong TSIG key, unreachable DNS server)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import INVENTORIES, MAILFORGE
from test_dns import free_port

ZONE = "example.com"


def _binary(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None)
    assert found, f"{name} is not installed: run scripts/setup"
    return found


class Stack:
    """Knot (with the TSIG key) serving example.com, and pebble validating DNS-01 against that Knot."""

    def __init__(self, root: Path):
        from mailforge.dns.knot import knot_conf
        from mailforge.tls import acmelab

        root.mkdir(parents=True, exist_ok=True)
        self.root, self.processes = root, []
        self.key = acmelab.new_tsig()
        self.dns_port = free_port()
        (root / f"{ZONE}.zone").write_text(
            f"$ORIGIN {ZONE}.\n$TTL 60\n@ SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 60\n@ NS ns.{ZONE}.\nns A 127.0.0.1\nmx A 127.0.0.1\n"
        )
        conf = root / "knot.conf"
        conf.write_text(knot_conf([ZONE], str(root), [f"127.0.0.1@{self.dns_port}"], (self.key.name, self.key.algorithm, self.key.secret)))
        subprocess.run([_binary("knotc"), "-c", str(conf), "conf-check"], check=True, capture_output=True)
        self._start([_binary("knotd"), "-c", str(conf)], "knot.log", "server started")
        ca, cert, key = acmelab.listener_ca(["localhost"], ["127.0.0.1"])
        (root / "ca.pem").write_bytes(ca)
        (root / "listener.pem").write_bytes(cert)
        (root / "listener-key.pem").write_bytes(key)
        self.acme_port, management = free_port(), free_port()
        (root / "pebble.json").write_text(
            acmelab.pebble_config(
                f"127.0.0.1:{self.acme_port}", f"127.0.0.1:{management}", str(root / "listener.pem"), str(root / "listener-key.pem"), free_port(), free_port()
            )
        )
        self._start(
            [_binary("pebble"), "-config", str(root / "pebble.json"), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            "pebble.log",
            "ACME directory available",
            env=acmelab.PEBBLE_ENV,
        )
        self.directory = f"https://127.0.0.1:{self.acme_port}/dir"

    def _start(self, argv: list[str], log: str, ready: str, env: dict[str, str] | None = None) -> None:
        handle = (self.root / log).open("wb")
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        self.processes.append((process, handle))
        deadline = time.monotonic() + 20
        while ready not in (self.root / log).read_text(errors="replace"):
            assert process.poll() is None, f"{argv[0]} exited: {(self.root / log).read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"{argv[0]} did not start: {(self.root / log).read_text(errors='replace')}"
            time.sleep(0.05)

    def stop(self) -> None:
        for process, handle in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            handle.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    started = Stack(tmp_path_factory.mktemp("acme-stack"))
    yield started
    started.stop()


def inventory(tmp: Path, stack: Stack, key_text: str | None = None, port: int | None = None, env_name: str | None = None) -> Path:
    """The example inventory with a tls.acme section pointing at the local stack."""
    directory = tmp / "inventory"
    shutil.copytree(INVENTORIES["example"], directory)
    topology = directory / "topology.yml"
    text = topology.read_text()
    text = text[: text.index("\ntls:")] if "\ntls:" in text else text  # the example's own (Let's Encrypt) section is replaced
    key_line = f"tsig_key_env: {env_name}" if env_name else "tsig_key_file: tsig.key"
    text += (
        "\ntls:\n  acme:\n"
        f"    directory: {stack.directory}\n    contact: hostmaster@example.com\n    ca_file: {stack.root / 'ca.pem'}\n"
        f"    dns_update:\n      server: 127.0.0.1\n      port: {port or stack.dns_port}\n      {key_line}\n      propagation_seconds: 5\n"
    )
    topology.write_text(text)
    if not env_name:
        from mailforge.tls import acmelab

        (directory / "tsig.key").write_text(key_text if key_text is not None else acmelab.tsig_text(stack.key))
        (directory / "tsig.key").chmod(0o600)
    return directory


def certs(directory: Path, state: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MAILFORGE), "certs", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MAILFORGE_STATE_DIR": str(state), **(env or {})},
    )


def store(state: Path) -> Path:
    return state / "clusters" / "example" / "tls"


def leaf(state: Path):
    from cryptography import x509

    return x509.load_pem_x509_certificates((store(state) / "mx" / "chain.pem").read_bytes())


def test_issue_then_still_valid_then_renew_keeps_the_key(tmp_path, stack):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    directory, state = inventory(tmp_path, stack), tmp_path / "state"
    first = certs(directory, state, "--json")
    assert first.returncode == 0, first.stderr
    envelope = json.loads(first.stdout)
    assert [r["status"] for r in envelope["hosts"]["mx"]["results"]] == ["issued"]
    chain = leaf(state)
    assert len(chain) >= 2, "the chain holds the leaf and pebble's intermediate"
    names = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == ["mx.example.com"]  # the example's MX name: its balancer's fqdn
    key = serialization.load_pem_private_key((store(state) / "mx" / "key.pem").read_bytes(), None)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert chain[0].public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == spki
    for path in (store(state) / "mx" / "key.pem", store(state) / "mx" / "chain.pem", store(state) / "acme" / "account.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(store(state).stat().st_mode) == 0o700
    secret = stack.key.secret
    assert secret not in first.stdout + first.stderr
    assert "PRIVATE KEY" not in first.stdout + first.stderr

    again = certs(directory, state, "--json")
    assert again.returncode == 0, again.stderr
    assert [(r["status"], r["data"]["reason"]) for r in json.loads(again.stdout)["hosts"]["mx"]["results"]] == [("valid", "not due")]
    assert leaf(state)[0].serial_number == chain[0].serial_number

    renewed = certs(directory, state, "--renew", "--json")
    assert renewed.returncode == 0, renewed.stderr
    assert [r["status"] for r in json.loads(renewed.stdout)["hosts"]["mx"]["results"]] == ["renewed"]
    new = leaf(state)[0]
    assert new.serial_number != chain[0].serial_number
    assert new.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == spki, "renewal keeps the MX key (DANE)"
    # the challenge records are gone once the run is over
    import dns.message
    import dns.query

    answer = dns.query.udp(dns.message.make_query("_acme-challenge.mx.example.com.", "TXT"), "127.0.0.1", port=stack.dns_port, timeout=2)
    assert not answer.answer


def test_roll_key_waits_for_the_next_keys_tlsa_then_makes_it_live(tmp_path, stack):
    """With tls.dane, `certs --roll-key` refuses (exit 1, store untouched) until `dns check` has seen the next
    key's TLSA record published for publish_wait_hours; then the MX certificate is issued for the next key,
    which becomes the live one, and a new next key is made for the records of the roll after."""
    from datetime import datetime, timedelta

    from mailforge.tls import dane

    directory, state = inventory(tmp_path, stack), tmp_path / "state"
    topology = directory / "topology.yml"
    topology.write_text(topology.read_text() + "  dane:\n    publish_wait_hours: 48\n")
    assert certs(directory, state).returncode == 0
    tls = store(state)
    live, _ = dane.live_digest(tls)
    never = certs(directory, state, "--roll-key")
    assert never.returncode == 1 and "no next MX key" in never.stderr, never.stdout + never.stderr
    upcoming = dane.keys(tls, make_next=True).next  # what `dns zone` does: the next key, its record printed
    unseen = certs(directory, state, "--roll-key")
    assert unseen.returncode == 1 and "has not been seen published by `mailforge dns check`" in unseen.stderr, unseen.stderr
    now = datetime.now().astimezone()
    dane.record_seen(tls, upcoming, now - timedelta(hours=47))  # `dns check` saw it published 47 hours ago
    early = certs(directory, state, "--roll-key", "--json")
    assert early.returncode == 1 and "_25._tcp.mx.example.com" in early.stderr and "publish_wait_hours 48" in early.stderr, early.stderr
    assert dane.live_digest(tls)[0] == live and dane.keys(tls, make_next=False).next == upcoming, "a refused roll changes nothing"
    (tls / dane.NEXT_SEEN).unlink()
    dane.record_seen(tls, upcoming, now - timedelta(hours=49))
    rolled = certs(directory, state, "--roll-key", "--json")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert [r["status"] for r in json.loads(rolled.stdout)["hosts"]["mx"]["results"]] == ["rolled"]
    assert dane.live_digest(tls)[0] == upcoming, "the certificate now holds the key whose record was published"
    assert dane.spki_digest((tls / "mx" / "key.pem").read_bytes()) == upcoming
    after = dane.keys(tls, make_next=False).next
    assert after not in (None, live, upcoming) and not (tls / dane.NEXT_SEEN).exists()
    assert stat.S_IMODE((tls / dane.NEXT_KEY).stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in rolled.stdout + rolled.stderr


def test_a_stored_account_the_ca_does_not_know_is_opened_again(tmp_path, stack):
    """A CA that lost its state (the lab's pebble after `lab down`/`lab up`) does not know the stored
    account: `certs` opens a new one instead of failing every order with accountDoesNotExist."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from josepy import JWKEC

    directory, state = inventory(tmp_path, stack), tmp_path / "state"
    assert certs(directory, state).returncode == 0
    account = store(state) / "acme" / "account.json"
    saved = json.loads(account.read_text())
    saved["key"] = JWKEC(key=ec.generate_private_key(ec.SECP256R1())).to_json()  # a key this CA never saw
    account.write_text(json.dumps(saved))
    renewed = certs(directory, state, "--renew", "--json")
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert [r["status"] for r in json.loads(renewed.stdout)["hosts"]["mx"]["results"]] == ["renewed"]
    assert json.loads(account.read_text())["uri"] != saved["uri"], "the new account is stored"


def test_key_from_the_environment(tmp_path, stack):
    directory, state = inventory(tmp_path, stack, env_name="MAILFORGE_TEST_TSIG"), tmp_path / "state"
    key = f"{stack.key.algorithm}:{stack.key.name}:{stack.key.secret}"
    result = certs(directory, state, env={"MAILFORGE_TEST_TSIG": key})
    assert result.returncode == 0, result.stderr
    assert (store(tmp_path / "state") / "mx" / "chain.pem").exists()
    unset = certs(directory, tmp_path / "state2")
    assert unset.returncode == 2
    assert "tls.acme.dns_update.tsig_key_env: environment variable MAILFORGE_TEST_TSIG is not set" in unset.stderr
    assert not (tmp_path / "state2").exists()


def test_wrong_tsig_key_exits_2_and_writes_nothing(tmp_path, stack):
    from mailforge.tls import acmelab

    wrong = acmelab.tsig_text(acmelab.new_tsig())  # same name, another secret
    directory, state = inventory(tmp_path, stack, key_text=wrong), tmp_path / "state"
    result = certs(directory, state)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{directory / 'topology.yml'}:" in result.stderr
    assert "tls.acme.dns_update.tsig_key_file: DNS server 127.0.0.1 refused TSIG key mailforge-acme." in result.stderr
    assert "nothing was written" in result.stderr
    assert "Traceback" not in result.stderr
    assert stack.key.secret not in result.stderr and wrong.split('"')[-2] not in result.stderr
    assert not state.exists()


def test_unreadable_or_malformed_key_file_exits_2(tmp_path, stack):
    directory, state = inventory(tmp_path, stack, key_text="not a key"), tmp_path / "state"
    result = certs(directory, state)
    assert result.returncode == 2
    assert "tls.acme.dns_update.tsig_key_file: TSIG key file" in result.stderr and "not a TSIG key" in result.stderr
    (directory / "tsig.key").unlink()
    result = certs(directory, state)
    assert result.returncode == 2
    assert "cannot read TSIG key file" in result.stderr
    assert not state.exists()


def test_unreachable_dns_server_exits_2(tmp_path, stack):
    directory, state = inventory(tmp_path, stack, port=free_port()), tmp_path / "state"
    result = certs(directory, state)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "tls.acme.dns_update.server: DNS server 127.0.0.1 port" in result.stderr and "did not answer" in result.stderr
    assert not state.exists()


def test_unreachable_acme_server_exits_2(tmp_path, stack):
    directory, state = inventory(tmp_path, stack), tmp_path / "state"
    topology = directory / "topology.yml"
    topology.write_text(topology.read_text().replace(stack.directory, f"https://127.0.0.1:{free_port()}/dir"))
    result = certs(directory, state)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "tls.acme.directory: the ACME server at https://127.0.0.1:" in result.stderr and "cannot be reached" in result.stderr
    assert not state.exists()
