"""`mailforge dkim rotate` and `mailforge dkim status`: the DKIM selectors of the hosted domains, in the controller's store."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..results import Result, Run
from .app import dkim_app
from .common import InventoryArg, JsonOption, command, finish, load, out

DKIM_EXAMPLE = "a dkim section at the top level, e.g. `dkim: {algorithms: [rsa], retire_after_hours: 168}` (docs/dkim.md)"


def _store_of(inventory: Path, as_json: bool):
    """(inventory, store); a topology without a dkim section is a located problem (exit 2) saying what to add."""
    from ..errors import InventoryError, Problem
    from ..inventory import resolve_topology_file
    from ..tls import store_of

    inv = load(inventory, recipients=False, quiet=as_json)
    if inv.topology.dkim is None:
        file = resolve_topology_file(inventory)
        raise InventoryError(
            [
                Problem(
                    file,
                    None,
                    None,
                    "dkim",
                    "the topology has no dkim section, so no domain's mail is signed and there is no key to show or rotate",
                    DKIM_EXAMPLE,
                )
            ],
            inv.warnings,
        )
    return inv, store_of(inv.topology.cluster)


def _when(at) -> str:
    return f"{at:%Y-%m-%d %H:%M %Z}" if at else "-"


def _times(s) -> str:
    """The times a selector's state rests on, one per line: made, record seen, signing from, stopped signing."""
    lines = [f"made {_when(s.created)}"]
    if s.seen:
        lines.append(f"seen {_when(s.seen)}")
    if s.signing_since:
        lines.append(f"signing {_when(s.signing_since)}")
    if s.retired_since:
        lines.append(f"stopped {_when(s.retired_since)}")
    return "\n".join(lines)


def _iso(at) -> str | None:
    return at.isoformat(timespec="seconds") if at else None


@dkim_app.command("rotate")
@command("dkim rotate")
def dkim_rotate(
    inventory: Path = InventoryArg,
    domain: str = typer.Option(None, "--domain", help="Only this signed domain (default: every domain of dkim.domains, or every hosted domain)."),
    selector: str = typer.Option(
        None, "--selector", help="The new selector's name (a DNS label: a-z, 0-9, inner hyphens); with both algorithms, the ed25519 one gets an 'e' appended."
    ),
    as_json: bool = JsonOption,
):
    """Make the next selector's key for each algorithm of dkim.algorithms (mf<YYYYMMDD>, mf<YYYYMMDD>e for ed25519). The new key signs only
    once `mailforge dns check` has seen its record published (print it with `mailforge dns zone`). Exit 0: made; 2: could not run (nothing written)."""
    from .. import dkim

    inv, store = _store_of(inventory, as_json)
    made = dkim.rotate(inv.topology, store, domain=domain, selector=selector)
    results = [
        Result(
            k.domain,
            k.selector,
            dkim.MADE,
            True,
            changed=True,
            detail=f"{k.algorithm}: publish TXT {k.record_name}, then run `mailforge dns check`",
            data={"selector": k.selector, "algorithm": k.algorithm, "record": k.record_name, "key_file": str(k.key_path)},
        )
        for k in made
    ]
    run = Run("dkim rotate", inv.topology.cluster, results, warnings=inv.warnings, summary={"store": str(store)})
    if not as_json:
        for k in made:
            out.print(f"{k.domain}: made selector [bold]{k.selector}[/bold] ({k.algorithm}), key {k.key_path}")
        out.print(
            "Next: publish the new records (`mailforge dns zone` prints them), then run `mailforge dns check`: "
            "signing switches to the new selectors once their records are seen, at the next `mailforge deploy`."
        )
    finish(run, as_json)


@dkim_app.command("status")
@command("dkim status")
def dkim_status(inventory: Path = InventoryArg, as_json: bool = JsonOption):
    """Show each signed domain's selectors: algorithm, state (made, signing, published, retired) with its times, and what to do next.
    Exit 0; 2: could not run (no dkim section, a key file or state.json in the store that cannot be read)."""
    from .. import dkim

    inv, store = _store_of(inventory, as_json)
    found = dkim.status(inv.topology, store)
    results = [
        Result(
            s.domain,
            s.selector,
            s.state,
            True,
            detail=f"{s.algorithm}: {s.next_step}",
            data={
                "selector": s.selector,
                "algorithm": s.algorithm,
                "state": s.state,
                "created": _iso(s.created),
                "seen": _iso(s.seen),
                "signing_since": _iso(s.signing_since),
                "retired_since": _iso(s.retired_since),
                "remove_after": _iso(s.remove_after),
                "next": s.next_step,
            },
        )
        for s in found
    ]
    unkeyed = [d for d in dkim.signed_domains(inv.topology) if d not in {s.domain for s in found}]
    results += [Result(d, "-", "no key", True, detail="no selector yet: `mailforge dkim rotate` or `mailforge dns zone` makes the first") for d in unkeyed]
    run = Run("dkim status", inv.topology.cluster, results, warnings=inv.warnings, summary={"store": str(store)})
    if not as_json:
        table = Table(title=f"DKIM selectors of cluster {inv.topology.cluster} (store {store / 'dkim'})", title_justify="left")
        for column in ("domain", "selector", "algorithm", "state", "times", "next"):
            table.add_column(column, overflow="fold", no_wrap=column in ("selector", "state", "algorithm"))
        styles = {dkim.MADE: "yellow", dkim.SIGNING: "green", dkim.PUBLISHED: "cyan", dkim.RETIRED: "dim"}
        for s in found:
            style = styles[s.state]
            table.add_row(
                s.domain,
                s.selector,
                s.algorithm,
                f"[{style}]{s.state}[/{style}]",
                _times(s),
                s.next_step,
            )
        for d in unkeyed:
            table.add_row(d, "-", "-", "no key", "-", "`mailforge dkim rotate` (or `mailforge dns zone`) makes the first key")
        out.print(table)
    finish(run, as_json)
