"""`mailforge dns check` and `mailforge dns zone`: the DNS a cluster needs, checked live or printed."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..results import Result, Run
from .app import dns_app
from .common import InventoryArg, JsonOption, command, err, finish, load, out


def _tls_inputs(inv, timeout: float):
    """What the TLS rows need from the controller (None when the inventory asks for no DANE, MTA-STS, TLS-RPT):
    the store, the MX keys' digests (public halves only; nothing is made here) and the CA files to trust."""
    from ..dns import DnsError as dnscheck_error
    from ..dns import TlsInputs
    from ..tls import store_of
    from ..tls.dane import keys

    tls = inv.topology.tls
    if tls.dane is None and tls.mta_sts is None and tls.tls_rpt is None:
        return None
    store = store_of(inv.topology.cluster)
    trust = [store / "trust.pem", store / "internal-ca" / "cert.pem"]
    if tls.trust_file:
        trust.insert(0, inv.directory / tls.trust_file)
    try:
        found = keys(store, make_next=False)
    except (OSError, ValueError) as exc:  # a key or chain in the store that cannot be read or parsed
        raise dnscheck_error(f"the TLS store {store}: {exc} (let `mailforge deploy` or `mailforge certs` remake it)") from None
    return TlsInputs(store, found, trust, timeout=max(5.0, timeout))


def _dkim_inputs(topology):
    """With a dkim section: the published selectors (nothing is made here; every key file read first, so a bad one
    stops the check with exit 2 before a question is asked)."""
    from .. import dkim
    from ..dns import DkimInputs
    from ..tls import store_of

    if topology.dkim is None:
        return None
    store = store_of(topology.cluster)
    dkim.check_store(topology, store)
    keys = dkim.published_keys(topology, store)
    return DkimInputs(keys, unkeyed=[d for d in dkim.signed_domains(topology) if d not in {k.domain for k in keys}])


@dns_app.command("check")
@command("dns check")
def dns_check(
    inventory: Path = InventoryArg,
    nameserver: list[str] = typer.Option(None, "--nameserver", help="Ask this server (HOST[:PORT], repeatable) instead of the ones in /etc/resolv.conf."),
    timeout: float = typer.Option(2.0, "--timeout", min=0.05, help="Seconds to wait for each answer (each question is tried twice per server)."),
    listings: bool = typer.Option(
        False, "--listings", help="Also ask the lists under `listings` whether the cluster's own addresses or hosted domains are listed (exit 1 if one is)."
    ),
    as_json: bool = JsonOption,
):
    """Check the live DNS against the topology: MX, MX addresses, no core in MX, SPF (within 10 DNS lookups), FCrDNS, the DNS lists, with tls:
    TLSA against the key each relay presents, the MTA-STS policy over HTTPS, TLS-RPT; with dmarc: the _dmarc record; with dkim: each published
    selector's record against the store's key (a selector seen published signs from the next deploy). Exit 1 if any check fails."""
    from .. import dns as dnscheck

    inv = load(inventory, recipients=False, quiet=as_json)
    if listings and inv.topology.listings is None:
        _no_listings(inv)
    servers = [dnscheck.parse_nameserver(s) for s in nameserver] if nameserver else dnscheck.system_nameservers()
    querier = dnscheck.Querier(servers, timeout=timeout)
    dkim_inputs = _dkim_inputs(inv.topology)
    checks = dnscheck.run_checks(inv.topology, querier, _tls_inputs(inv, timeout), dkim_inputs)
    if dkim_inputs is not None and dkim_inputs.seen:
        from .. import dkim
        from ..tls import store_of

        dkim.record_seen(inv.topology, store_of(inv.topology.cluster), dkim_inputs.seen)
    if listings:
        checks += dnscheck.listing_checks(inv.topology, querier, checks)
    run = Run(
        "dns check",
        inv.topology.cluster,
        [Result(c.subject, c.check, c.status, c.ok, detail=c.evidence) for c in checks],
        warnings=inv.warnings,
        summary={"nameservers": querier.servers_text()},
    )
    if not as_json:
        styles = {
            dnscheck.OK: "green",
            dnscheck.FAIL: "bold red",
            dnscheck.TIMEOUT: "bold yellow",
            dnscheck.SERVFAIL: "bold yellow",
            dnscheck.LISTED: "bold red",
            dnscheck.UNKNOWN: "bold yellow",
        }
        table = Table(title=f"DNS of cluster {inv.topology.cluster}, asked {querier.servers_text()}", title_justify="left")
        for column in ("domain / host / zone", "check", "status", "evidence"):
            table.add_column(column, overflow="fold", no_wrap=column == "status")
        for c in checks:
            style = styles.get(c.status, "bold red")
            table.add_row(c.subject, c.check, f"[{style}]{c.status}[/{style}]", c.evidence)
        out.print(table)
        bad = sum(not c.ok for c in checks)
        out.print(f"{len(checks) - bad} of {len(checks)} checks passed" + (f"; [bold red]{bad} failed[/bold red]" if bad else ""))
    finish(run, as_json)


def _no_listings(inv) -> None:
    """`--listings` with nothing to ask: a located problem (exit 2) saying what to add, not an empty, passing check."""
    from ..errors import InventoryError, Problem
    from ..inventory.load import TOPOLOGY_FILE

    raise InventoryError(
        [
            Problem(
                inv.directory / TOPOLOGY_FILE,
                None,
                None,
                "listings",
                "--listings asks the DNS lists named under `listings`, and the topology has no such section",
                "a top-level `listings:` with address_lists (IP lists, e.g. [zen.spamhaus.org]) and/or domain_lists (e.g. [dbl.spamhaus.org])",
            )
        ],
        inv.warnings,
    )


def _tlsa(topology):
    """The TLSA records from the controller's store (see `dns.tlsa.store_tlsa`): I/O, so here, not in zone_text."""
    from ..dns import DnsError
    from ..dns.tlsa import store_tlsa
    from ..tls import store_of

    store = store_of(topology.cluster)
    try:
        return store_tlsa(topology, store)
    except (OSError, ValueError) as exc:  # a key or chain in the store that cannot be read or parsed
        raise DnsError(f"the TLS store {store}: {exc} (let `mailforge deploy` or `mailforge certs` remake it)") from None


def _dkim(topology):
    """The DKIM TXT records of the store's published selectors (the first key of a domain is made here when none,
    as `dns zone` makes the next TLS key) and comment lines naming retired selectors' records to remove."""
    from .. import dkim
    from ..tls import store_of

    store = store_of(topology.cluster)
    dkim.ensure_keys(topology, store)
    return dkim.dkim_records(topology, store), dkim.zone_notes(topology, store)


@dns_app.command("zone")
@command("dns zone")
def dns_zone(
    inventory: Path = InventoryArg,
    ttl: int = typer.Option(3600, "--ttl", min=1, max=2147483647, help="TTL of every record, in seconds."),
    as_json: bool = JsonOption,
):
    """Print the records the topology needs, in zone-file syntax: MX, SPF, A/AAAA, the PTRs for the reverse zones, with tls: TLSA, MTA-STS, TLS-RPT,
    with dkim: each published selector's key (a domain's first key is made when it has none), with dmarc: _dmarc per hosted domain.
    Exit 1 if no MX can be printed (balancers without an fqdn): the output says what name to give them."""
    from .. import dns as dnscheck
    from ..inventory import suggested_mx_name

    inv = load(inventory, recipients=False, quiet=as_json)
    tlsa, notes = _tlsa(inv.topology)
    dkim_records, dkim_notes = _dkim(inv.topology)
    text = dnscheck.zone_text(inv.topology, ttl=ttl, extra=tlsa + dkim_records, notes=notes + dkim_notes)
    records = dnscheck.zone_records(inv.topology) + tlsa + dkim_records
    results = [
        Result(
            r.zone,
            f"{r.name} {r.rtype}",
            "needed",
            True,
            detail=r.value,
            data={"name": r.name, "type": r.rtype, "value": r.value, "ttl": ttl, "comment": r.comment},
        )
        for r in records
    ]
    missing = dnscheck.missing_mx(inv.topology)
    # No MX is a problem in what can be published, not a failure to run: the rest is printed, and exit 1 says it is incomplete.
    if missing:
        lb = inv.topology.load_balancers[0]
        why = f"no MX record: balancer {lb.name} has no fqdn and the relays take mail only from it; give it one, e.g. fqdn: {suggested_mx_name(inv.topology)}"
        results += [Result(domain, f"{domain} MX", "missing", False, detail=why) for domain in sorted(inv.topology.domains)]
    run = Run("dns zone", inv.topology.cluster, results, warnings=inv.warnings, summary={"zone_text": text, "missing_mx": missing})
    if not as_json:
        print(text, end="")
        if missing:
            err.print(f"[bold red]{why}[/bold red] (the note at the top of the output says more)")
    finish(run, as_json)
