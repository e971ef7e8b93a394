"""`mailforge lab up/down/status`: the whole cluster in local containers at the inventory's addresses."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from ..results import Result, Run
from .app import lab_app
from .common import InventoryArg, JsonOption, RenderDirOption, VerboseOption, command, emit, err, finish, load, out, render_for_hosts
from .deploy import run_deploy


@lab_app.command("up")
@command("lab up")
def lab_up(
    inventory: Path = InventoryArg,
    render_dir: Path = RenderDirOption,
    no_deploy: bool = typer.Option(
        False, "--no-deploy", help="Only start and prepare the containers and the lab DNS; deploy later with `mailforge deploy --lab`."
    ),
    verbose: int = VerboseOption,
    as_json: bool = JsonOption,
):
    """Start the lab's containers at the inventory's addresses, then deploy to them as `mailforge deploy` does."""
    from .. import hosts, lab

    started = time.monotonic()
    inv, directory, manifest = render_for_hosts(inventory, render_dir, tls=True)
    env = lab.engine_environment()
    console = err if as_json else out
    plan = lab.up(inv, env, say=lambda message: console.print(f"[dim]lab:[/dim] {message}"))
    if inv.topology.tls.acme:  # before deploy: the relays get the certificate the lab's ACME server issued
        from .certs import obtain

        for o in obtain(inv, False, True, say=lambda message: console.print(f"[dim]certs:[/dim] {message}")):
            console.print(f"[dim]certs:[/dim] {o.what} certificate {o.status} for {', '.join(o.names)} (expires {o.not_after:%Y-%m-%d}, serial {o.serial:x})")
        if inv.topology.tls.dane is not None:  # the lab DNS started before the MX key existed: publish its TLSA now
            lab.publish_dns(inv, env)
            console.print("[dim]lab:[/dim] lab DNS published again (TLSA of the MX key certs made)")
        # Rendered again: what deploy ships is taken from the store, which now holds the certificate.
        inv, directory, manifest = render_for_hosts(inventory, render_dir, tls=True)
    if no_deploy:
        console.print(f"lab {plan.network} ({plan.subnet}) is up in {time.monotonic() - started:.0f} s; not deployed (--no-deploy)")
        if as_json:
            emit(_status_run("lab up", inv, lab.status(inv, env)))
        return
    reaches = hosts.reach_all(inv, lab=lab.reaches(inv))
    run = run_deploy(inv, directory, manifest, reaches, hosts.check_access(reaches, inv.names), as_json=as_json, verbosity=verbose, command="lab up")
    run.command = "lab up"
    console.print(f"lab {plan.network} ({plan.subnet}) is up and deployed in {time.monotonic() - started:.0f} s")


@lab_app.command("down")
@command("lab down")
def lab_down(inventory: Path = InventoryArg, as_json: bool = JsonOption):
    """Remove what this inventory's `lab up` made (containers and network); another lab's, even of the same cluster name, is kept."""
    from .. import lab

    inv = load(inventory, recipients=False, quiet=as_json)
    removed, kept = lab.down(inv, lab.engine_environment())
    if as_json:
        results = [Result(name, "removed", "removed", True, True) for name in removed]
        results += [Result(entry.split(":", 1)[0], "kept", "not this lab's", True, detail=entry.split(": ", 1)[1]) for entry in kept]
        emit(Run("lab down", inv.topology.cluster, results, summary={"removed": removed, "kept": kept}))
        return
    out.print(f"removed {len(removed)}: {', '.join(removed) if removed else 'nothing of this lab was there'}")
    for entry in kept:
        out.print(f"kept {entry}")


def _status_run(name: str, inv, rows: list[dict]) -> Run:
    return Run(name, inv.topology.cluster, [Result(row["host"], row["container"], row["state"], row["state"] == "running", data=row) for row in rows])


@lab_app.command("status")
@command("lab status")
def lab_status(inventory: Path = InventoryArg, as_json: bool = JsonOption):
    """Show the lab's containers and whether each runs; exit 1 if any is missing or stopped."""
    from .. import lab

    inv = load(inventory, recipients=False, quiet=as_json)
    rows = lab.status(inv, lab.engine_environment())
    if not as_json:
        table = Table(title=f"lab of cluster {inv.topology.cluster}", title_justify="left")
        for column in ("container", "host", "role", "address", "state"):
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(row[c]) for c in ("container", "host", "role", "address", "state")))
        out.print(table)
    finish(_status_run("lab status", inv, rows), as_json)
