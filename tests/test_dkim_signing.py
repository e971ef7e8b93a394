"""DKIM signing (issue 15, point 1): OpenDKIM on the hosts that send to the Internet, judged by the real
tools. `opendkim -n` reads the rendered opendkim.conf with every dataset it names; postconf shows the
milter on the sending instances only (never on a relay or an MX proxy's inbound instance), with
`milter_default_action = tempfail`, so no message leaves unsigned while the milter is down.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailforge.render.dkim import INTERNAL_HOSTS, KEY_TABLE, OPENDKIM_CONF, OPENDKIM_DIR, OPENDKIM_RELOAD, SIGNING_TABLE

pytestmark = [pytest.mark.tools, pytest.mark.skipif(shutil.which("opendkim") is None, reason="scripts/setup installs opendkim")]

SIGNED = "outbound-tls"  # its topology has dkim (rsa) for two of its three domains
SENDERS = {"filter": "etc/postfix", "mxproxy": "etc/postfix-outbound"}  # host -> the instance that sends to the Internet
MILTER = {"smtpd_milters": "inet:localhost:8891", "non_smtpd_milters": "inet:localhost:8891", "milter_default_action": "tempfail"}


def postconf(config: Path) -> dict[str, str]:
    result = subprocess.run(["postconf", "-c", str(config), "-n"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return dict(line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "") for line in result.stdout.splitlines())


@pytest.mark.parametrize("host,config", sorted(SENDERS.items()))
def test_the_senders_hand_every_message_to_opendkim(host, config, rendered):
    out = rendered(SIGNED)
    settings = postconf(out / host / config)
    assert {name: settings.get(name) for name in MILTER} == MILTER
    files = json.loads((out / "manifest.json").read_text())["hosts"][host]["files"]
    assert {files[path]["action"] for path in (OPENDKIM_CONF, INTERNAL_HOSTS)} == {OPENDKIM_RELOAD}


def test_no_milter_where_mail_is_not_sent_out(inventory_name, rendered):
    """Relays, an MX proxy's inbound and default instances never sign; without dkim nobody does."""
    out = rendered(inventory_name)
    senders = SENDERS if inventory_name == SIGNED else {"core": "etc/postfix"} if inventory_name == "example" else {}  # the example signs too
    for main_cf in sorted(out.rglob("main.cf")):
        sending = any(main_cf.parent == out / host / config for host, config in senders.items())
        if not sending:
            assert not {"smtpd_milters", "non_smtpd_milters"} & set(postconf(main_cf.parent)), main_cf
    manifest = json.loads((out / "manifest.json").read_text())
    with_conf = sorted(host for host, entry in manifest["hosts"].items() if OPENDKIM_CONF in entry["files"])
    assert with_conf == sorted(senders)


def test_internal_hosts_are_the_senders_networks_and_loopback(rendered):
    out = rendered(SIGNED)
    lines = [line for line in (out / "mxproxy" / INTERNAL_HOSTS.lstrip("/")).read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ["127.0.0.1", "::1", "10.231.1.0/24"]  # the outbound instance's trusted_networks


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def opendkim_check(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["opendkim", "-n", "-x", str(conf)], capture_output=True, text=True, timeout=60)


@pytest.fixture
def checkable(rendered, tmp_path):
    """The core's rendered opendkim.conf with its /etc/opendkim paths moved under tmp, beside tables
    and 0600 keys as deploy ships them: what `opendkim -n -x` judges on the host before it goes live."""
    out = rendered(SIGNED)
    base = tmp_path / "opendkim"
    (base / "keys" / "example.org").mkdir(parents=True)
    shutil.copy(out / "filter" / INTERNAL_HOSTS.lstrip("/"), base / "internal-hosts")
    keys = {"mf20260101": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
    table, signing = [], []
    for selector, key in keys.items():
        path = base / "keys" / "example.org" / f"{selector}.private"
        path.write_bytes(_pem(key))
        path.chmod(0o600)
        table.append(f"{selector}._domainkey.example.org example.org:{selector}:{path}\n")
        signing.append(f"*@example.org {selector}._domainkey.example.org\n")
    (base / "key.table").write_text("".join(table))
    (base / "signing.table").write_text("".join(signing))
    conf = tmp_path / "opendkim.conf"
    conf.write_text((out / "filter" / OPENDKIM_CONF.lstrip("/")).read_text().replace(OPENDKIM_DIR + "/", f"{base}/"))
    assert KEY_TABLE.startswith(OPENDKIM_DIR) and SIGNING_TABLE.startswith(OPENDKIM_DIR)
    return conf


def test_opendkim_accepts_the_rendered_config(checkable):
    result = opendkim_check(checkable)
    assert result.returncode == 0, result.stderr


def test_opendkim_check_catches_a_bad_config(checkable):
    """The judge can fail: an unknown parameter is refused."""
    bad = checkable.with_name("bad.conf")
    bad.write_text(checkable.read_text() + "SignWithEverything\tyes\n")
    result = opendkim_check(bad)
    assert result.returncode != 0 and "unrecognized parameter" in result.stderr


def test_the_shipment_carries_the_seen_keys_and_their_tables(tmp_path):
    """deploy ships (mailforge.signing) each signing selector's key, 0600 opendkim, to every core and to the MX proxy with
    an outbound instance, with tables naming exactly those keys; a selector not yet seen in DNS is not shipped."""
    from conftest import INVENTORIES

    from mailforge import dkim, signing
    from mailforge.inventory import load_inventory
    from mailforge.tls import material

    inv = load_inventory(INVENTORIES[SIGNED])
    store = tmp_path / "store"
    material.prepare(inv, store)
    made = dkim.ensure_keys(inv.topology, store)
    assert len(made) == 2  # two domains, an rsa key each
    unseen = signing.dkim_shipment(inv, store)
    assert sorted(unseen) == ["filter", "mxproxy"]
    assert set(unseen["filter"]) == {KEY_TABLE, SIGNING_TABLE} and unseen["filter"][KEY_TABLE].content() == b""  # nothing signs before it is published
    dkim.record_seen(inv.topology, store, {(k.domain, k.selector): "2026-01-01T00:00:00+00:00" for k in dkim.published_keys(inv.topology, store)})
    keys = dkim.signing_keys(inv.topology, store)
    files = signing.shipment(inv, store)["filter"]
    shipped_keys = {path: item for path, item in files.items() if path.endswith(".private")}
    assert len(shipped_keys) == 2 and all((i.mode, i.owner) == ("0600", "opendkim") for i in shipped_keys.values())
    table = files[KEY_TABLE].content().decode()
    for k in keys:
        assert f"{k.domain}:{k.selector}:/etc/opendkim/keys/{k.domain}/{k.selector}.private" in table
    assert files[SIGNING_TABLE].content().decode().count("*@example.org ") == 1  # one signature per message
    entries = material.assemble(signing.shipment(inv, store), tmp_path / "stage", ["filter"])["filter"]
    assert "PRIVATE KEY" not in json.dumps(entries)  # Ansible gets paths, never key material
    staged = {e["path"]: Path(e["src"]) for e in entries}
    assert all(staged[p].stat().st_mode & 0o777 == 0o600 for p in shipped_keys)
