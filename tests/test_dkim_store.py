"""The DKIM key store (mailforge.dkim): keys made with `cryptography`, 0600 files in 0700 directories, the
selector lifecycle in state.json (made, signing once its record is seen, published then retired after the
switch), and the records `dns zone` prints. No DNS here: see test_dkim_dns.py for the checks against Knot."""

from __future__ import annotations

import base64
import json
import re
import shutil
import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import INVENTORIES
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DKIM = "\ndkim:\n  algorithms: [rsa]\n  retire_after_hours: 24\n"


def example(tmp: Path, extra: str = DKIM) -> Path:
    """A copy of the example with `extra` in place of its own dkim and dmarc sections (the example signs)."""
    directory = tmp / "inventory"
    shutil.copytree(INVENTORIES["example"], directory)
    topology = directory / "topology.yml"
    own = re.sub(r"(?ms)^(dkim|dmarc):.*?(?=^\S|\Z)", "", topology.read_text())
    topology.write_text(own + extra)
    return directory


def topology_of(directory: Path):
    from mailforge.inventory import load_topology

    return load_topology(directory).topology


def test_first_keys_are_made_once_private_and_atomic(tmp_path):
    from mailforge import dkim

    t, store = topology_of(example(tmp_path)), tmp_path / "store"
    written = dkim.ensure_keys(t, store)
    assert sorted(p.parent.name for p in written) == ["example.com", "example.org"]
    assert dkim.ensure_keys(t, store) == [], "a domain that has keys gets none more"
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE((path.parent / "state.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((store / "dkim").stat().st_mode) == 0o700
    assert not list(store.rglob(".*")), "no temporary file is left behind"
    keys = {(k.domain, k.algorithm): k for k in dkim.published_keys(t, store)}
    rsa_key = serialization.load_pem_private_key(keys[("example.com", "rsa")].key_path.read_bytes(), None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048
    today = datetime.now().astimezone().strftime("%Y%m%d")
    assert keys[("example.com", "rsa")].selector == f"mf{today}"
    txt = keys[("example.com", "rsa")].public_txt()
    public = serialization.load_der_public_key(base64.b64decode(txt.split("p=")[1]))
    assert txt.startswith("v=DKIM1; k=rsa; p=") and public.public_numbers() == rsa_key.public_key().public_numbers()
    assert "PRIVATE" not in keys[("example.com", "rsa")].public_txt()
    assert dkim.signing_keys(t, store) == [], "nothing signs before its record is seen"


def test_no_dkim_section_makes_nothing(tmp_path):
    from mailforge import dkim

    t, store = topology_of(example(tmp_path, extra="")), tmp_path / "store"
    assert dkim.ensure_keys(t, store) == [] and not store.exists()
    assert dkim.dkim_records(t, store) == []


def test_records_are_split_into_255_byte_strings(tmp_path):
    from mailforge import dkim

    t, store = topology_of(example(tmp_path)), tmp_path / "store"
    dkim.ensure_keys(t, store)
    records = {r.name: r for r in dkim.dkim_records(t, store)}
    key = next(k for k in dkim.published_keys(t, store) if k.domain == "example.org" and k.algorithm == "rsa")
    record = records[f"{key.selector}._domainkey.example.org"]
    assert record.zone == "example.org" and record.rtype == "TXT"
    strings = record.value[1:-1].split('" "')
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings) and len(strings[0]) == 255
    assert "".join(strings) == key.public_txt()


def test_rotation_lifecycle_switches_only_once_seen_then_retires(tmp_path):
    from mailforge import dkim

    t, store = topology_of(example(tmp_path)), tmp_path / "store"
    dkim.ensure_keys(t, store)
    first = {(k.domain, k.algorithm): k.selector for k in dkim.published_keys(t, store)}
    long_ago = (datetime.now().astimezone() - timedelta(days=30)).isoformat(timespec="seconds")
    dkim.record_seen(t, store, {key: long_ago for key in [(d, s) for (d, _), s in first.items()]})
    assert {(k.domain, k.algorithm): k.selector for k in dkim.signing_keys(t, store)} == first
    made = dkim.rotate(t, store, domain="example.com", at=datetime.now().astimezone() + timedelta(days=1))
    tomorrow = (datetime.now().astimezone() + timedelta(days=1)).strftime("%Y%m%d")
    assert [(k.domain, k.selector, k.algorithm) for k in made] == [("example.com", f"mf{tomorrow}", "rsa")]
    assert {k.selector for k in dkim.signing_keys(t, store) if k.domain == "example.com"} == {first[("example.com", "rsa")]}
    assert len(dkim.published_keys(t, store)) == 3
    # its record is seen 25 hours ago: it signs, the old one stops and is past retire_after_hours (24)
    seen = (datetime.now().astimezone() - timedelta(hours=25)).isoformat(timespec="seconds")
    dkim.record_seen(t, store, {("example.com", k.selector): seen for k in made})
    assert {k.selector for k in dkim.signing_keys(t, store) if k.domain == "example.com"} == {k.selector for k in made}
    states = {(s.domain, s.selector): s for s in dkim.status(t, store)}
    old = states[("example.com", first[("example.com", "rsa")])]
    assert old.state == dkim.RETIRED and "remove the TXT record" in old.next_step
    assert old.retired_since == datetime.fromisoformat(seen)
    assert ("example.com", old.selector) not in {(k.domain, k.selector) for k in dkim.published_keys(t, store)}
    assert any(old.selector in line and "remove" in line for line in dkim.zone_notes(t, store))
    # a newer seen time does not move the first one
    dkim.record_seen(t, store, {("example.com", made[0].selector): datetime.now().astimezone().isoformat()})
    data = json.loads((store / "dkim" / "example.com" / "state.json").read_text())
    assert next(s for s in data["selectors"] if s["name"] == made[0].selector)["seen"] == seen


def test_superseded_within_the_window_stays_published(tmp_path):
    from mailforge import dkim

    t, store = topology_of(example(tmp_path)), tmp_path / "store"
    dkim.ensure_keys(t, store)
    first = dkim.published_keys(t, store)
    dkim.record_seen(t, store, {(k.domain, k.selector): "2026-01-01T00:00:00+00:00" for k in first})
    made = dkim.rotate(t, store, domain="example.org", selector="second")
    assert [k.selector for k in made] == ["second"]
    dkim.record_seen(t, store, {("example.org", "second"): datetime.now().astimezone().isoformat()})
    states = {(s.domain, s.selector): s.state for s in dkim.status(t, store)}
    old_rsa = next(k.selector for k in first if k.domain == "example.org" and k.algorithm == "rsa")
    assert states[("example.org", old_rsa)] == dkim.PUBLISHED
    assert states[("example.org", "second")] == dkim.SIGNING
    assert ("example.org", old_rsa) in {(k.domain, k.selector) for k in dkim.published_keys(t, store)}


@pytest.mark.parametrize("selector", ["Bad", "has_underscore", "-lead", "trail-", "a.b", "x" * 64])
def test_bad_selector_names_write_nothing(tmp_path, selector):
    from mailforge import dkim

    t, store = topology_of(example(tmp_path)), tmp_path / "store"
    with pytest.raises(dkim.DkimError, match="is not a DNS label"):
        dkim.rotate(t, store, selector=selector)
    assert not store.exists()


def test_bad_store_files_are_named(tmp_path):
    from mailforge import dkim

    t, store = topology_of(example(tmp_path)), tmp_path / "store"
    dkim.ensure_keys(t, store)
    key = dkim.published_keys(t, store)[0]
    key.key_path.write_text("garbage")
    with pytest.raises(dkim.DkimError, match=f"{key.key_path}: not an unencrypted PEM private key"):
        dkim.rotate(t, store)
    key.key_path.unlink()
    with pytest.raises(dkim.DkimError, match="the key file is missing"):
        dkim.ensure_keys(t, store)
    state = store / "dkim" / "example.com" / "state.json"
    state.write_text("{not json")
    with pytest.raises(dkim.DkimError, match="state.json: not JSON"):
        dkim.status(t, store)
