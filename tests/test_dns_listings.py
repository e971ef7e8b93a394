"""`mailforge dns check --listings` against a real Knot (Debian's knotd) on a free port of 127.0.0.1.

Knot serves what `dns zone` prints for the example plus stand-ins for its lists (zen.spamhaus.org listing
127.0.0.2, dbl.spamhaus.org listing dbltest.com, as RFC 5782 asks), and takes TSIG-signed updates: each test
lists or breaks something with an update, as a list operator would, and puts it back. A listed relay and a
listed domain fail their rows naming the address, the list, its answer and its TXT reason; the rest say
"not listed"; a dead list gives "unknown" rows, a list that never answers "timeout" rows, never "not listed".
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import MAILFORGE
from test_dkim_dns import Knot
from test_dns import EXAMPLE, DroppingProxy, check, dnsbl_sections, mailforge, row

from mailforge.dns import zone_sections

RELAY1 = "21.0.232.10.zen.spamhaus.org."
DOMAIN = "example.org.dbl.spamhaus.org."
REASON = "https://www.spamhaus.org/query/ip/10.232.0.21"


def example_zones() -> dict[str, list[str]]:
    """The example's zones as `dns zone` prints them, and its lists' stand-ins."""
    result = mailforge("dns", "zone", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    return {**zone_sections(result.stdout), **dnsbl_sections(EXAMPLE)}


@pytest.fixture(scope="module")
def knot(tmp_path_factory):
    server = Knot(tmp_path_factory.mktemp("knot-listings") / "knot", example_zones(), updatable=True)
    yield server
    server.stop()


def listing_rows(report: dict) -> dict[tuple[str, str], dict]:
    return {(c["subject"], c["check"]): c for c in report["checks"] if c["check"].startswith("listing in ")}


SUBJECTS = {
    ("mx.example.com", "listing in zen.spamhaus.org"),
    ("relay1.example.com", "listing in zen.spamhaus.org"),
    ("relay2.example.com", "listing in zen.spamhaus.org"),
    ("core.internal.example.com", "listing in zen.spamhaus.org"),
    ("example.com", "listing in dbl.spamhaus.org"),
    ("example.org", "listing in dbl.spamhaus.org"),
}


def test_a_listed_relay_and_domain_fail_with_the_answer_and_reason_and_clean_passes(knot):
    code, report = check(EXAMPLE, knot.nameserver, "--listings")
    assert code == 0, [c for c in report["checks"] if not c["ok"]]
    found = listing_rows(report)
    assert set(found) == SUBJECTS
    assert all(c["status"] == "ok" and ": not listed (" in c["evidence"] for c in found.values()), found
    assert found[("relay1.example.com", "listing in zen.spamhaus.org")]["evidence"] == (
        "10.232.0.21 (relay relay1): not listed (21.0.232.10.zen.spamhaus.org A: NXDOMAIN)"
    )
    assert found[("core.internal.example.com", "listing in zen.spamhaus.org")]["evidence"].startswith("10.232.0.30 (core core): not listed")

    knot.update("zen.spamhaus.org", "add", RELAY1, "A", "127.0.0.2")
    knot.update("zen.spamhaus.org", "add", RELAY1, "TXT", f'"Listed by SBL, see {REASON}"')
    knot.update("dbl.spamhaus.org", "add", DOMAIN, "A", "127.0.1.2")
    try:
        code, report = check(EXAMPLE, knot.nameserver, "--listings")
        assert code == 1 and report["status"] == "problem"
        found = listing_rows(report)
        bad = {key: c for key, c in found.items() if not c["ok"]}
        assert set(bad) == {("relay1.example.com", "listing in zen.spamhaus.org"), ("example.org", "listing in dbl.spamhaus.org")}
        relay = bad[("relay1.example.com", "listing in zen.spamhaus.org")]
        assert relay["status"] == "listed"
        assert relay["evidence"] == (
            f'10.232.0.21 (relay relay1): LISTED: 21.0.232.10.zen.spamhaus.org A 127.0.0.2 (SBL: Spamhaus spam sources); TXT "Listed by SBL, see {REASON}"'
        )
        domain = bad[("example.org", "listing in dbl.spamhaus.org")]
        assert domain["status"] == "listed" and "example.org.dbl.spamhaus.org A 127.0.1.2 (spam domain); TXT no reason given" in domain["evidence"]
        assert [c for c in report["checks"] if not c["ok"] and not c["check"].startswith("listing in ")] == []
        # without --listings nothing changes: no listing rows, and the rest passes
        code, plain = check(EXAMPLE, knot.nameserver)
        assert code == 0 and listing_rows(plain) == {} and len(plain["checks"]) == len(report["checks"]) - len(SUBJECTS)
        # the table a person reads (docs/dns.md shows it)
        shown = subprocess.run(
            [str(MAILFORGE), "dns", "check", str(EXAMPLE), "--listings", "--nameserver", knot.nameserver],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert shown.returncode == 1, shown.stderr
        assert "listing in zen.spamhaus.org" in shown.stdout and "LISTED" in shown.stdout and "2 failed" in shown.stdout
    finally:
        knot.update("zen.spamhaus.org", "delete", RELAY1, "A", "127.0.0.2")
        knot.update("zen.spamhaus.org", "delete", RELAY1, "TXT", f'"Listed by SBL, see {REASON}"')
        knot.update("dbl.spamhaus.org", "delete", DOMAIN, "A", "127.0.1.2")
    code, report = check(EXAMPLE, knot.nameserver, "--listings")
    assert code == 0 and all(c["status"] == "ok" for c in listing_rows(report).values())


def test_a_dead_or_wildcarded_list_is_unknown_never_clean_or_listed(knot):
    """A list whose test entry is gone answers NXDOMAIN for everything: that is not "not listed". A list that
    answers for its never-listed entry would list everyone: that is not "listed" either."""
    knot.update("zen.spamhaus.org", "delete", "2.0.0.127.zen.spamhaus.org.", "A", "127.0.0.2")
    knot.update("dbl.spamhaus.org", "add", "*.dbl.spamhaus.org.", "A", "127.0.1.2")
    try:
        code, report = check(EXAMPLE, knot.nameserver, "--listings")
    finally:
        knot.update("zen.spamhaus.org", "add", "2.0.0.127.zen.spamhaus.org.", "A", "127.0.0.2")
        knot.update("dbl.spamhaus.org", "delete", "*.dbl.spamhaus.org.", "A", "127.0.1.2")
    assert code == 1
    found = listing_rows(report)
    assert set(found) == SUBJECTS and {c["status"] for c in found.values()} == {"unknown"}
    relay = found[("relay1.example.com", "listing in zen.spamhaus.org")]["evidence"]
    assert relay.startswith(
        "10.232.0.21 (relay relay1): the list's answer (NXDOMAIN) cannot be believed: zen.spamhaus.org lists nothing (its DNSBL (IP list) row says why)"
    )
    assert "lists nothing: dead or blocking your resolver" in row(report, "zen.spamhaus.org", "DNSBL (IP list)")["evidence"]
    domain = found[("example.org", "listing in dbl.spamhaus.org")]["evidence"]
    assert domain.startswith(
        "example.org: the list's answer (127.0.1.2) cannot be believed: dbl.spamhaus.org lists everything (its RHSBL (domain list) row says why)"
    )


def test_a_list_that_never_answers_is_a_timeout_not_clean(knot):
    proxy = DroppingProxy(knot.nameserver, drop=b"\x03zen\x08spamhaus")
    try:
        code, report = check(EXAMPLE, proxy.nameserver, "--listings")
    finally:
        proxy.stop()
    assert code == 1
    found = listing_rows(report)
    zen = {key: c for key, c in found.items() if key[1] == "listing in zen.spamhaus.org"}
    assert len(zen) == 4 and {c["status"] for c in zen.values()} == {"timeout"}
    assert "did not answer within 0.5 s" in zen[("relay1.example.com", "listing in zen.spamhaus.org")]["evidence"]
    assert all(c["status"] == "ok" for key, c in found.items() if key not in zen)


def test_listings_without_a_section_or_with_an_empty_one_exit_2(tmp_path):
    inventory = tmp_path / "example"
    inventory.mkdir()
    (inventory / "users.txt").write_text((EXAMPLE / "users.txt").read_text())
    text = (EXAMPLE / "topology.yml").read_text()
    (inventory / "topology.yml").write_text(text[: text.index("listings:")])
    result = subprocess.run([str(MAILFORGE), "dns", "check", str(inventory), "--listings", "--nameserver", "127.0.0.1:1"], capture_output=True, text=True)
    assert result.returncode == 2
    assert (
        f"{inventory / 'topology.yml'}: listings: --listings asks the DNS lists named under `listings`, and the topology has no such section" in result.stderr
    )
    assert "address_lists" in result.stderr and "Traceback" not in result.stderr
    lines = text[: text.index("listings:")].count("\n") + 1
    (inventory / "topology.yml").write_text(text[: text.index("listings:")] + "listings:\n  address_lists: []\n")
    result = subprocess.run([str(MAILFORGE), "dns", "check", str(inventory), "--listings", "--json"], capture_output=True, text=True)
    assert result.returncode == 2
    [problem] = json.loads(result.stdout)["problems"]
    assert (problem["line"], problem["key"]) == (lines, "listings") and "names no DNS list" in problem["message"]


def test_the_addresses_asked():
    """Each address once, with every host and role it has; IPv6 nibble by nibble (RFC 5782 section 2.4)."""
    from conftest import INVENTORIES

    from mailforge.dns.listings import address_query, cluster_addresses
    from mailforge.inventory import load_topology

    assert address_query("10.232.0.21") == "21.0.232.10"
    assert address_query("2001:db8::21") == "1.2.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2"  # 32 nibbles
    proxy = [(s.name, s.query, s.shown) for s in cluster_addresses(load_topology(INVENTORIES["mx-proxy"]).topology)]
    assert any("relay and outbound instance" in shown for _, _, shown in proxy), proxy
    assert len({query for _, query, _ in proxy}) == len(proxy)
