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
    inv, directory, manifest = render_for_hosts(inventory, render_dir)
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

    from ..deploy import refuse_lockout, results_of, run_playbook

    refuse_lockout(inv, accesses)

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
        for message in r.messages:
            err.print(f"[red]{host}:[/red] ", end="")
            err.print(message, markup=False)
