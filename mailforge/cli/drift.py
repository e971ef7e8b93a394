"""`mailforge drift`: every host's live state against the rendered inventory, read-only."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .app import app
from .common import InventoryArg, JsonOption, LabOption, LimitOption, RenderDirOption, command, count, finish, out, reach, render_for_hosts


@app.command()
@command("drift")
def drift(
    inventory: Path = InventoryArg,
    limit: str = LimitOption,
    lab: bool = LabOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List every item, not only what drifted (in-sync items are otherwise counted per host)."),
    as_json: bool = JsonOption,
    render_dir: Path = RenderDirOption,
):
    """Compare every host's live state with the rendered inventory, read-only. Exit 1 if anything drifted."""
    from .. import drift as drifting

    inv, directory, manifest = render_for_hosts(inventory, render_dir)
    selected, reaches, _ = reach(inv, lab, limit)
    from .. import signing

    shipped = drifting.shipped_tls(inv, signing.fingerprints)  # a store without the TLS files deploy ships: exit 2, no host surveyed
    report = drifting.audit(inv, directory, manifest, {name: reaches[name].shell() for name in selected}, hosts=selected, tls=shipped)
    run = drifting.results_of(report, inv.warnings)
    if not as_json:
        _print(report, verbose)
    finish(run, as_json)


def _print(report, verbose: bool) -> None:
    from .. import drift as drifting

    styles = {drifting.IN_SYNC: "green", drifting.DRIFTED: "bold red", drifting.MISSING: "bold red", drifting.UNEXPECTED: "yellow"}
    table = Table(title=f"drift of cluster {report.cluster}", title_justify="left")
    for column in ("host", "item", "status", "desired", "live / detail"):
        table.add_column(column, overflow="fold")
    for host in report.hosts:
        items = [i for i in report.items if i.host == host]
        shown = items if verbose else [i for i in items if i.status != drifting.IN_SYNC]
        for n, i in enumerate(shown):
            desired, live = i.desired or "", i.live or ""
            if i.kind in ("file", "map", "tls file"):  # sha256s: the first 12 hex digits say enough here (--json has them whole)
                desired, live = (f"sha256 {x[:12]}" if len(x) == 64 else x for x in (desired, live))
            live = " / ".join(x for x in (live, i.detail) if x)
            table.add_row(host if n == 0 else "", i.label, f"[{styles[i.status]}]{i.status}[/{styles[i.status]}]", desired, live)
        in_sync = [i for i in items if i.status == drifting.IN_SYNC]
        if not verbose and in_sync:
            kinds: dict[str, int] = {}
            for i in in_sync:
                kinds[i.kind] = kinds.get(i.kind, 0) + 1
            table.add_row(
                host if not shown else "",
                f"{len(in_sync)} {'other ' if shown else ''}items",
                "[green]in sync[/green]",
                "",
                ", ".join(f"{k} {n}" for k, n in kinds.items()),
            )
        table.add_section()
    out.print(table)
    for i in report.drifted:
        if i.diff:
            out.print(f"[bold]{i.host}[/bold] {i.label}")
            out.print(i.diff, markup=False, end="")
    bad = report.drifted
    summary = (
        f"all {count(len(report.items), 'item')} on {count(len(report.hosts), 'host')} in sync"
        if not bad
        else f"{len(bad)} of {len(report.items)} items on {len({i.host for i in bad})} of {count(len(report.hosts), 'host')} not in sync"
    )
    out.print(f"{summary} ({report.seconds:.1f} s; firewall compared in {report.firewall_method} canonical form)")
