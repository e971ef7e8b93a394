"""Every rendered artifact judged by the real tool that reads it in production.

postconf and `postfix check` for every Postfix instance, postmap for every
map (compiled, then queried for the answers the inventory implies),
`haproxy -c` and `iptables-restore --test`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.tools

HASH_MAPS = ("relay_domains", "relay_recipients", "transport", "helo_access", "sender_access", "virtual_mailboxes")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, input=stdin, timeout=120)


def postfix_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.rglob("main.cf"))


def host_dir(out: Path, host: str, config: str = "etc/postfix") -> Path:
    return out / host / config


def compiled_copy(src: Path, tmp_path: Path) -> Path:
    """A copy of a config directory with every hash map compiled by postmap."""
    dst = tmp_path / "maps"
    shutil.copytree(src, dst)
    for name in HASH_MAPS:
        if (dst / name).exists():
            result = run("postmap", "-c", str(dst), f"hash:{dst / name}")
            assert result.returncode == 0 and not result.stderr, result.stderr
    return dst


def query(table: str, key: str) -> str | None:
    # -c: the table's own rendered main.cf, so no /etc/postfix/main.cf is needed on this machine.
    result = run("postmap", "-c", str(Path(table.split(":", 1)[1]).parent), "-q", key, table)
    assert result.returncode in (0, 1), result.stderr
    assert not result.stderr, result.stderr
    return result.stdout.strip() if result.returncode == 0 else None


def test_postconf_accepts_every_instance_without_warning(inventory_name, rendered):
    dirs = postfix_dirs(rendered(inventory_name))
    assert dirs
    for config in dirs:
        for flag in ("-n", "-M", "-P"):
            result = run("postconf", "-c", str(config), flag)
            assert result.returncode == 0, f"{config} postconf {flag}: {result.stderr}"
            assert result.stderr == "", f"{config} postconf {flag} warned: {result.stderr}"


def test_postconf_would_catch_a_misspelt_parameter(rendered, tmp_path):
    """The check above can fail: an unknown parameter makes postconf warn."""
    config = tmp_path / "typo"
    shutil.copytree(host_dir(rendered("example"), "relay1"), config)
    with (config / "main.cf").open("a") as handle:
        handle.write("smtpd_helo_requried = yes\n")
    assert "unused parameter: smtpd_helo_requried" in run("postconf", "-c", str(config), "-n").stderr


def test_postfix_check_passes_for_every_instance(inventory_name, rendered, tmp_path):
    for index, config in enumerate(postfix_dirs(rendered(inventory_name))):
        copy = tmp_path / f"check{index}"
        shutil.copytree(config, copy)
        # The queue and data directories move into tmp, so the check touches nothing on this machine, and an
        # instance bound to its host's own address binds to loopback here (postfix check needs a local address).
        (copy / "queue").mkdir()
        (copy / "data").mkdir()
        moved = [f"queue_directory={copy / 'queue'}", f"data_directory={copy / 'data'}"]
        if effective(copy, "inet_interfaces") not in ("all", "loopback-only"):
            moved.append("inet_interfaces=loopback-only")
        run("postconf", "-c", str(copy), "-e", *moved)
        result = run("postfix", "-c", str(copy), "check")
        assert result.returncode == 0 and result.stderr == "", f"{config}: {result.stderr}"


def effective(config: Path, name: str) -> str:
    return run("postconf", "-c", str(config), "-h", name).stdout.strip()


def test_relay_restrictions_never_permit_before_reject_unauth_destination(inventory_name, rendered):
    out = rendered(inventory_name)
    for config in postfix_dirs(out):
        checks = [c.strip() for c in effective(config, "smtpd_recipient_restrictions").split(",") if c.strip()]
        if "reject_unauth_destination" not in checks:
            continue
        before = checks[: checks.index("reject_unauth_destination")]
        assert before in ([], ["permit_mynetworks"]), f"{config}: {before} come before reject_unauth_destination"
        relay = [c.strip() for c in effective(config, "smtpd_relay_restrictions").split(",")]
        assert relay[-1] in ("reject_unauth_destination", "reject"), f"{config}: smtpd_relay_restrictions {relay}"


def test_relays_have_no_local_delivery(rendered):
    for name, host, config in (("example", "relay1", "etc/postfix"), ("elb-relays", "ingest2", "etc/postfix"), ("mx-proxy", "mxproxy", "etc/postfix-inbound")):
        d = host_dir(rendered(name), host, config)
        assert effective(d, "mydestination") == ""
        assert effective(d, "local_recipient_maps") == ""
        assert effective(d, "local_transport").startswith("error:")
        assert effective(d, "smtpd_helo_required") == "yes"
        assert effective(d, "disable_vrfy_command") == "yes"
        assert effective(d, "smtpd_banner") == "$myhostname ESMTP"


def services(config: Path) -> list[list[str]]:
    return [line.split() for line in run("postconf", "-c", str(config), "-M").stdout.splitlines()]


def test_postscreen_listens_for_the_balancer_with_proxy_protocol(rendered):
    for name, host, port in (("lb-relays-core", "mx1", "10024"), ("elb-relays", "ingest1", "smtp"), ("example", "relay2", "10024")):
        config = host_dir(rendered(name), host)
        rows = services(config)
        assert [port, "inet", "n", "-", "n", "-", "1", "postscreen"] in rows
        assert any(r[:2] == ["smtpd", "pass"] and r[7] == "smtpd" for r in rows)
        assert not any(r[1] == "inet" and r[7] == "smtpd" for r in rows), "a plain smtpd would let clients bypass postscreen"
        assert effective(config, "postscreen_upstream_proxy_protocol") == "haproxy"
        assert effective(config, "smtpd_upstream_proxy_protocol") == "", "ignored behind postscreen: must not be set"


def test_mx_proxy_runs_three_postmulti_instances(rendered):
    out = rendered("mx-proxy")
    default = host_dir(out, "mxproxy")
    assert effective(default, "inet_interfaces") == "loopback-only"
    assert effective(default, "multi_instance_enable") == "yes"
    assert effective(default, "multi_instance_directories").split() == ["/etc/postfix-inbound", "/etc/postfix-outbound"]
    queues = {effective(default, "queue_directory")}
    for instance, port in (("postfix-inbound", "smtp"), ("postfix-outbound", "submission")):
        config = host_dir(out, "mxproxy", f"etc/{instance}")
        assert effective(config, "multi_instance_name") == instance
        assert effective(config, "multi_instance_enable") == "yes"
        assert effective(config, "multi_instance_group") == "mta"
        queues.add(effective(config, "queue_directory"))
        assert effective(config, "data_directory") == f"/var/lib/{instance}"
        assert any(r[:2] == [port, "inet"] and r[7] == "smtpd" for r in services(config))
    assert len(queues) == 3, "every instance needs its own queue directory"
    outbound = host_dir(out, "mxproxy", "etc/postfix-outbound")
    assert "10.231.1.0/24" in effective(outbound, "mynetworks").split()
    assert effective(outbound, "smtpd_relay_restrictions").replace(" ", "") == "permit_mynetworks,reject"


def test_maps_answer_as_the_inventory_says(rendered, tmp_path):
    maps = compiled_copy(host_dir(rendered("lb-relays-core"), "mx1"), tmp_path)
    recipients = f"hash:{maps / 'relay_recipients'}"
    for listed in ("alice@example.com", "helpdesk@example.net", "carol@example.org", "postmaster@example.com", "abuse@example.com", "ALICE@Example.COM"):
        assert query(recipients, listed) == "OK", listed
    for unlisted in ("mallory@example.com", "postmaster@example.org", "alice@example.biz", "alice@sub.example.com"):
        assert query(recipients, unlisted) is None, unlisted
    domains = f"hash:{maps / 'relay_domains'}"
    assert query(domains, "example.net") == "OK"
    assert query(domains, "example.biz") is None
    for domain in ("example.com", "example.org", "example.net"):
        assert query(f"hash:{maps / 'transport'}", domain) == "relay:[10.231.0.30]:25"
    header_checks = f"regexp:{maps / 'header_checks'}"
    assert query(header_checks, "Subject: =?big5?B?pKSk5Q==?=") == "REJECT Chinese encoding not allowed"
    assert query(header_checks, "Subject: =?utf-8?B?aGVsbG8=?=") is None
    helo = f"hash:{maps / 'helo_access'}"
    for forged in ("example.com", "mx2.example.com", "[10.231.0.21]", "10.231.0.22"):
        assert query(helo, forged).startswith("REJECT"), forged
    assert query(helo, "mail.outside.example") is None
    assert query(f"hash:{maps / 'sender_access'}", "example.org").startswith("REJECT")
    postscreen = f"cidr:{maps / 'postscreen_access.cidr'}"
    assert query(postscreen, "10.231.0.10") == "permit"
    assert query(postscreen, "10.231.0.11") is None


def test_several_cores_are_a_failover_list(rendered, tmp_path):
    maps = compiled_copy(host_dir(rendered("elb-relays"), "ingest3"), tmp_path)
    assert query(f"hash:{maps / 'transport'}", "mail.example.io") == "relay:[172.31.40.5]:25, [172.31.40.6]:25"
    assert query(f"hash:{maps / 'relay_recipients'}", "abuse@mail.example.io") == "OK"
    assert query(f"hash:{maps / 'relay_recipients'}", "alice@mail.example.io") is None


def test_core_maps_deliver_and_admit_only_relays(rendered, tmp_path):
    maps = compiled_copy(host_dir(rendered("lb-relays-core"), "core1"), tmp_path)
    assert query(f"hash:{maps / 'virtual_mailboxes'}", "bob@example.org") == "example.org/bob/"
    assert query(f"hash:{maps / 'virtual_mailboxes'}", "mallory@example.org") is None
    clients = f"cidr:{maps / 'relay_clients.cidr'}"
    assert query(clients, "10.231.0.21") == "reject_plaintext_session, permit"  # a relay: only over TLS
    assert query(clients, "10.231.0.10") is None


def test_tls_policy_parses_and_keys_each_core_as_the_transport_names_it(rendered, tmp_path):
    """The relays' smtp_tls_policy_maps: postmap reads it as texthash, and the key is the transport's next hop."""
    maps = compiled_copy(host_dir(rendered("elb-relays"), "ingest3"), tmp_path)
    policy = f"texthash:{maps / 'tls_policy'}"
    transport = query(f"hash:{maps / 'transport'}", "mail.example.io")
    assert transport is not None
    hops = transport.removeprefix("relay:").split(", ")
    answers = [query(policy, hop) for hop in hops]
    assert all(a is not None and a.startswith("secure match=") for a in answers), answers
    assert query(policy, "[172.31.40.99]:25") is None
    assert run("postconf", "-c", str(maps), "-h", "smtp_tls_policy_maps").stdout.strip() == "texthash:/etc/postfix/tls_policy"


def test_every_haproxy_cfg_passes_haproxy_check(rendered, tmp_path):
    from tlsserver import checkable_haproxy_cfg

    found = 0
    for name in ("lb-relays-core", "example"):
        for cfg in rendered(name).rglob("haproxy.cfg"):
            result = run("haproxy", "-c", "-f", str(checkable_haproxy_cfg(cfg, tmp_path / name)))
            assert result.returncode == 0, result.stdout + result.stderr
            found += 1
    assert found == 2
    assert not list(rendered("elb-relays").rglob("haproxy.cfg")), "an external balancer gets nothing deployed"


def test_haproxy_health_checks_speak_proxy(rendered):
    v1 = (rendered("lb-relays-core") / "lb1/etc/haproxy/haproxy.cfg").read_text()
    v2 = (rendered("example") / "lb/etc/haproxy/haproxy.cfg").read_text()
    assert "server mx1 10.231.0.21:10024 check" in v1 and " send-proxy check-send-proxy" in v1
    assert " send-proxy-v2 check-send-proxy" in v2
    # EHLO as a client: the balancer's fqdn, or its address literal when it has none (lb1)
    assert 'tcp-check send "EHLO mx.example.com\\r\\n"' in v2
    assert 'tcp-check send "EHLO [10.231.0.10]\\r\\n"' in v1


def test_every_rules_file_passes_iptables_restore_test(inventory_name, rendered):
    out = rendered(inventory_name)
    files = sorted(out.rglob("rules.v*"))
    assert files
    for rules in files:
        tool = "iptables-restore" if rules.name == "rules.v4" else "ip6tables-restore"
        result = run(tool, "--test", str(rules))
        assert result.returncode == 0, f"{rules}: {result.stderr}"


def accepted(rules: Path, port: int) -> list[str]:
    """Sources admitted to a TCP port by a rules file ('0.0.0.0/0' when open to all)."""
    sources = []
    for line in rules.read_text().splitlines():
        if line.startswith("-A INPUT") and f"--dport {port} " in line and line.endswith("-j ACCEPT"):
            words = line.split()
            sources.append(words[words.index("-s") + 1] if "-s" in words else "0.0.0.0/0")
    return sources


def test_firewalls_admit_only_what_the_topology_says(rendered):
    core = rendered("lb-relays-core") / "core1/etc/iptables/rules.v4"
    assert accepted(core, 25) == ["10.231.0.21/32", "10.231.0.22/32", "10.231.0.128/25"]
    relay = rendered("lb-relays-core") / "mx1/etc/iptables/rules.v4"
    assert accepted(relay, 10024) == ["10.231.0.10/32"]
    assert accepted(relay, 25) == []
    elb_relay = rendered("elb-relays") / "ingest1/etc/iptables/rules.v4"
    assert accepted(elb_relay, 25) == ["172.31.0.0/16"]
    proxy = rendered("mx-proxy") / "mxproxy/etc/iptables/rules.v4"
    assert accepted(proxy, 25) == ["0.0.0.0/0"]
    assert accepted(proxy, 587) == ["10.231.1.0/24"]
    for rules in rendered("example").rglob("rules.v4"):
        text = rules.read_text()
        assert ":INPUT DROP" in text and '-A INPUT -i lo -m comment --comment "mailforge: loopback" -j ACCEPT' in text and "ESTABLISHED" in text
        assert accepted(rules, 22) == ["10.232.0.0/24"]


def test_manifest_lists_every_file_with_its_action(inventory_name, rendered):
    import hashlib

    out = rendered(inventory_name)
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {f"{host}{path}" for host, entry in manifest["hosts"].items() for path in entry["files"]}
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert {"/".join(x.split("/", 1)) for x in listed} == on_disk
    for host, entry in manifest["hosts"].items():
        for path, meta in entry["files"].items():
            data = (out / host / path.lstrip("/")).read_bytes()
            assert hashlib.sha256(data).hexdigest() == meta["sha256"]
            expected = {
                "main.cf": "postfix reload",
                "master.cf": "postfix reload",
                "relay_recipients": "postmap",
                "transport": "postmap",
                "haproxy.cfg": "haproxy reload",
                "rules.v4": "iptables-restore",
                "rules.v6": "ip6tables-restore",
                "header_checks": "postfix reload",
            }.get(Path(path).name)
            if expected:
                assert meta["action"] == expected, (host, path)
            assert meta["owner"] == "root" and meta["mode"] in ("0644", "0640")


def test_lmdb_maps_compile_and_answer(tmp_path):
    """policy.map_type: lmdb names lmdb tables in main.cf; postconf takes it, postmap builds and answers."""
    from conftest import INVENTORIES

    from mailforge.inventory import load_inventory
    from mailforge.render import render
    from mailforge.write import write_tree

    inventory_dir = tmp_path / "inv"
    shutil.copytree(INVENTORIES["example"], inventory_dir, ignore=shutil.ignore_patterns(".mailforge"))
    topology = inventory_dir / "topology.yml"
    topology.write_text(topology.read_text().replace("policy:\n", "policy:\n  map_type: lmdb\n", 1))
    inventory = load_inventory(inventory_dir)
    out = tmp_path / "out"
    manifest = write_tree(render(inventory), inventory.topology.cluster, out)
    relay = host_dir(out, "relay1")
    result = run("postconf", "-c", str(relay), "-n")
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert "relay_recipient_maps = lmdb:/etc/postfix/relay_recipients" in result.stdout
    assert manifest["hosts"]["relay1"]["files"]["/etc/postfix/relay_recipients"]["table_type"] == "lmdb"
    assert manifest["hosts"]["core"]["files"]["/etc/postfix/virtual_mailboxes"]["table_type"] == "lmdb"
    compiled = run("postmap", "-c", str(relay), f"lmdb:{relay / 'relay_recipients'}")
    assert compiled.returncode == 0 and not compiled.stderr, compiled.stderr
    assert (relay / "relay_recipients.lmdb").is_file()
    assert query(f"lmdb:{relay / 'relay_recipients'}", "abuse@example.com") == "OK"
    assert query(f"lmdb:{relay / 'relay_recipients'}", "nobody@example.com") is None


def test_the_mta_sts_frontend_passes_haproxy_check(tmp_path, monkeypatch):
    """With tls.mta_sts and no certificate of the user's, `prepare` on an empty store makes one from the
    private CA for every mta-sts.<domain> name and ships it to the balancer: `haproxy -c` accepts the
    443 frontend with exactly that file and the rendered policy in place (here in tmp)."""
    from test_dane_mta_sts import FIXTURE

    from mailforge.inventory import load_inventory
    from mailforge.render import render
    from mailforge.render.mta_sts import HAPROXY_POLICY
    from mailforge.tls import HOST_MTA_STS, internal, material, store_of
    from mailforge.tls.names import policy_hosts

    monkeypatch.setenv("MAILFORGE_STATE_DIR", str(tmp_path / "state"))
    inventory = load_inventory(FIXTURE)
    store = store_of(inventory.topology.cluster)
    material.prepare(inventory, store)
    shipped = material.shipment(inventory, store)["lb"][HOST_MTA_STS]
    assert (shipped.mode, shipped.group) == ("0640", "haproxy")
    content = shipped.content()
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(content[content.index(b"-----BEGIN CERTIFICATE") :])
    assert sorted(internal.dns_names(leaf)) == sorted(policy_hosts(inventory.topology))
    files = render(inventory)["lb"]
    (tmp_path / "mta-sts.pem").write_bytes(content)
    (tmp_path / "mta-sts.txt").write_text(files[HAPROXY_POLICY].text)
    cfg = files["/etc/haproxy/haproxy.cfg"].text.replace(HOST_MTA_STS, str(tmp_path / "mta-sts.pem")).replace(HAPROXY_POLICY, str(tmp_path / "mta-sts.txt"))
    (tmp_path / "haproxy.cfg").write_text(cfg)
    result = run("haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bind 10.232.0.10:443 ssl crt " in cfg
