"""`mailforge maps`: regenerate the maps from the recipient sources and push only what changed."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .app import app
from .common import BatchOption, InventoryArg, JsonOption, LabOption, LimitOption, command, err, finish, load, out, reach, warn


@app.command()
@command("maps")
def maps(
    inventory: Path = InventoryArg,
    check: bool = typer.Option(False, "--check", help="Only show what would change; push nothing."),
    force: bool = typer.Option(False, "--force", help="Push even when a recipients map would shrink by more than --max-shrink, or become empty."),
    max_shrink: float = typer.Option(
        10.0, "--max-shrink", min=0, max=100, help="Largest share (percent) of a recipients map a run may remove without --force."
    ),
    lab: bool = LabOption,
    limit: str = LimitOption,
    batch: int = BatchOption,
    as_json: bool = JsonOption,
):
    """Regenerate the maps from the recipient sources and push only what changed, atomically. Exit 1 if refused or a push failed."""
    from .. import maps as mapping
    from ..rotation import Rotation, batch_size, plan_of

    inv = load(inventory)
    selected, reaches, _ = reach(inv, lab, limit)
    shells = {name: reaches[name].shell() for name in selected}
    cache = inv.directory / ".mailforge" / "live-maps"  # what this machine last pushed, by sha256
    plan = plan_of(inv)
    batch, why = batch_size(plan, batch)
    if why:
        warn(why)
    rotation = None
    if plan.needed and not check:  # relays leave the balancer's rotation while their maps change
        rotation = Rotation(plan, {name: reaches[name].shell() for name in [*plan.managed, *plan.relays]}, say=_say_step)
    result = mapping.run(
        inv, shells, hosts=selected if limit else None, check=check, force=force, max_shrink=max_shrink / 100, batch=batch, cache=cache, rotation=rotation
    )
    run = mapping.results_of(result, inv.topology.cluster, inv.warnings)
    if not as_json:
        _print(inv, result)
    finish(run, as_json)


def _say_step(step) -> None:
    """A relay's step out of the balancer's rotation or back, as it happens (stderr: --json keeps stdout clean)."""
    style = "green" if step.ok else "bold red"
    err.print(f"[{style}]{step.relay}: {step.action}[/{style}] ", end="")
    err.print(step.detail, markup=False)


def _print(inv, result) -> None:
    changed, elapsed = result.changed, result.seconds
    if changed:
        table = Table(title=f"maps of cluster {inv.topology.cluster}: {len(changed)} of {len(result.changes)} changed", title_justify="left")
        for column in ("host", "map", "live", "new", "added", "removed", "examples"):
            table.add_column(
                column,
                justify="right" if column in ("live", "new", "added", "removed") else "left",
                overflow="fold",
                no_wrap=column in ("live", "new", "added", "removed"),
            )
        for c in changed:
            examples = [f"+{x.split(' ', 1)[0]}" for x in c.added_examples] + [f"-{x.split(' ', 1)[0]}" for x in c.removed_examples]
            if not c.added and not c.removed:
                examples = [
                    "missing on the host"
                    if c.live_sha256 is None
                    else "database missing or older than the map"
                    if c.live_sha256 == c.sha256
                    else "only comments or order differ"
                ]
            live = "missing" if c.live_sha256 is None else ("-" if c.live_entries is None else f"{c.live_entries:,}")
            new = "-" if c.entries is None else f"{c.entries:,}"
            table.add_row(c.host, c.path, live, new, f"+{c.added:,}", f"-{c.removed:,}", "\n".join(examples))
        out.print(table)
    for r in result.refusals:
        err.print("[bold red]refused:[/bold red] ", end="")
        err.print(
            f"{r.change.host} {r.change.path} {r.reason}; for example "
            + ", ".join(x.split(" ", 1)[0] for x in r.change.removed_examples)
            + ". Nothing was pushed; check the sources, or run again with --force.",
            markup=False,
        )
    if not changed:
        out.print(f"no map changed: {len(result.changes)} maps on {len(result.hosts)} hosts match the sources; no host was touched ({elapsed:.1f} s)")
    elif result.checked_only and not result.refusals:
        out.print(f"--check: {len(changed)} maps would change; nothing was pushed ({elapsed:.1f} s)")
    for r in result.results:
        if r.error:
            err.print(f"[red]{r.host}:[/red] ", end="")
            err.print(r.error, markup=False)
        elif r.pushed:
            out.print(f"{r.host}: pushed {', '.join(r.pushed)}" + (" and reloaded Postfix" if r.reloaded else " (no reload needed)"))
    if result.results and not result.failed:
        out.print(f"pushed {sum(len(r.pushed) for r in result.results)} maps to {len(result.results)} hosts in {elapsed:.1f} s")
