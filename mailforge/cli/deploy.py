"""`mailforge deploy`: render, then apply with Ansible, with a progress bar per host."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..results import Run
from .app import app
from .common import (
    BatchOption,
    InventoryArg,
    JsonOption,
    LabOption,
    LimitOption,
    RenderDirOption,
    VerboseOption,
    command,
    err,
    finish,
    out,
    reach,
    render_for_hosts,
    warn,
)


@app.command()
@command("deploy")
def deploy(
    inventory: Path = InventoryArg,
    check: bool = typer.Option(False, "--check", help="Change nothing on any host; report what would change."),
    diff: bool = typer.Option(False, "--diff", help="Show the changes to files."),
    limit: str = LimitOption,
    lab: bool = LabOption,
    batch: int = BatchOption,
    render_dir: Path = RenderDirOption,
    verbose: int = VerboseOption,
    as_json: bool = JsonOption,
):
    """Render, then apply the result with Ansible: checked before it goes live, reloaded not restarted."""
    inv, directory, manifest = render_for_hosts(inventory, render_dir, tls=True)
    selected, reaches, accesses = reach(inv, lab, limit, ansible=True)
    run_deploy(
        inv,
        directory,
        manifest,
        reaches,
        accesses,
        hosts=selected if limit else None,
        as_json=as_json,
        check=check,
        diff=diff,
        batch=batch,
        verbosity=verbose,
    )


def run_deploy(inv, directory, manifest, reaches, accesses, *, hosts: list[str] | None = None, as_json: bool = False, verbosity: int = 0, **options) -> Run:
    """Refuse a deploy that would lock this controller out, then run the playbook with a progress bar
    per host (and, with -v, Ansible's own output above it)."""
    from rich.progress import BarColumn, Progress, TextColumn

    from .. import signing
    from ..deploy import refuse_lockout, relays_changing, results_of, run_playbook
    from ..rotation import batch_size, plan_of
    from ..tls import store_of

    refuse_lockout(inv, accesses)
    options["tls_shipment"] = signing.shipment(inv, store_of(inv.topology.cluster))  # TLS files and DKIM keys
    rotation = plan_of(inv)
    options["batch"], why = batch_size(rotation, options.get("batch", 1))
    if why:
        warn(why)
    if rotation.needed and not options.get("check"):
        # Which relays this run will change, so which leave the balancer's rotation while they do.
        shells = {name: reaches[name].shell() for name in [*rotation.managed, *rotation.relays]}
        relays = [r for r in rotation.relays if hosts is None or r in hosts]
        changing = relays_changing(inv, directory, manifest, shells, relays)
        options.update(rotation=rotation, rotation_shells=shells, changing_relays=changing)
        if not changing:
            # No relay differs from the render (drift's comparison, services included): the relays' play changes
            # nothing, so it runs on all of them at once instead of one batch after another.
            options["batch"] = max(options["batch"], len(relays), 1)

    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[current]}"),
        console=err if as_json else out,
        transient=False,
    ) as bar:
        tasks = {host: bar.add_task(host, total=None, current="waiting") for host in (hosts or inv.names)}

        def progress(host: str, task: str, done: int, seen: int) -> None:
            bar.update(tasks[host], completed=done, total=max(seen, done), current=task[:60])

        def output(text: str) -> None:
            bar.console.print(text, markup=False, highlight=False)

        result = run_playbook(
            inv, directory, manifest, reaches, hosts=hosts, progress=progress, verbosity=verbosity, output=output if verbosity else None, **options
        )
    run = results_of(result, inv.topology.cluster, inv.warnings)
    if not as_json:
        _summary(result)
    if result.log_note:
        err.print(result.log_note, markup=False)
    finish(run, as_json)
    return run


@app.command("rotation-step", hidden=True)
@command("rotation-step")
def rotation_step(
    state: Path = typer.Argument(..., help="The rotation plan deploy saved for this run."),
    action: str = typer.Argument(..., help="take-out or put-back"),
    relays: list[str] = typer.Argument(..., help="The relays of the batch."),
):
    """Run by the playbook around a relay batch: take it out of the balancer's rotation, or prove it and put it back. Prints the steps as JSON."""
    import json

    from ..rotation import as_dicts, step

    if action not in ("take-out", "put-back"):
        raise typer.BadParameter("take-out or put-back", param_hint="ACTION")
    steps, ok = step(state, action, relays)
    print(json.dumps(as_dicts(steps)))
    if not ok:
        raise typer.Exit(1)


def _summary(result) -> None:
    table = Table(title="Deploy summary", title_justify="left")
    for column in ("host", "ok", "changed", "failed", "unreachable"):
        table.add_column(column, justify="left" if column == "host" else "right")
    for host, r in result.hosts.items():
        style = "red" if r.failed or r.unreachable else ("yellow" if r.changed else "green")
        table.add_row(f"[{style}]{host}[/{style}]", str(r.ok), str(r.changed), str(r.failed), str(r.unreachable))
    for host, r in result.hosts.items():
        for text in r.diffs:
            out.print(f"[bold]{host}[/bold]")
            out.print(text, markup=False, end="")
    out.print(table)
    for host, r in result.hosts.items():
        for step in r.rotation:
            style = "green" if step["ok"] else "bold red"
            out.print(f"[{style}]{host}: {step['action']}[/{style}] ", end="")
            out.print(f"{step['detail']} ({step['seconds']} s)" if step["seconds"] else step["detail"], markup=False)
    for host, r in result.hosts.items():
        for message in r.messages:
            err.print(f"[red]{host}:[/red] ", end="")
            err.print(message, markup=False)


@app.command("tls-stage", hidden=True)
@command("tls-stage")
def tls_stage(
    inventory: Path = InventoryArg,
    directory: Path = typer.Argument(..., help="Where to write the assembled TLS files (made 0700; files 0600) and tls_files.json."),
):
    """For Molecule's shared playbooks: prepare the TLS store and check the MX certificate as deploy does,
    then write each host's assembled TLS files and `tls_files.json` ({host: mailforge_tls_files}). Prints paths only."""
    import json

    from .. import signing
    from ..tls import material, store_of
    from .common import load, prepare_tls

    inv = load(inventory, recipients=False)
    prepare_tls(inv)
    staged = material.assemble(signing.shipment(inv, store_of(inv.topology.cluster)), directory)
    (directory / "tls_files.json").write_text(json.dumps(staged, indent=2, sort_keys=True) + "\n")
    out.print(f"staged the TLS files of {len(staged)} hosts in {directory}", markup=False)
