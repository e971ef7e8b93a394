"""`mailforge status`: each Postfix instance's queues and each balancer's relays, once or refreshed in place."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import typer
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .app import app
from .common import InventoryArg, JsonOption, LabOption, LimitOption, command, count, finish, load, out, reach


@app.command()
@command("status")
def status(
    inventory: Path = InventoryArg,
    lab: bool = LabOption,
    limit: str = LimitOption,
    max_age: str = typer.Option(
        "1h", "--max-age", help="Exit 1 when a message has waited longer than this (maildrop, incoming, active, deferred; not hold): 0, 90s, 30m, 1h, 2d."
    ),
    watch: bool = typer.Option(False, "--watch", help="Refresh in place every --interval seconds, until Ctrl-C (or --count refreshes)."),
    interval: float = typer.Option(5.0, "--interval", min=0.5, help="Seconds between refreshes with --watch."),
    rounds: int = typer.Option(0, "--count", min=0, help="With --watch: stop after this many refreshes (0: until Ctrl-C)."),
    timeout: float = typer.Option(30.0, "--timeout", min=1, help="Seconds to wait for each host's answer."),
    as_json: bool = JsonOption,
):
    """Each Postfix instance's queues (running, counts, oldest message, why mail is deferred) and each balancer's relays (state,
    sessions). Exit 1 when an instance is not running, a relay is out of rotation or a message is older than --max-age;
    2 when a host cannot be reached (the others are still shown)."""
    from .. import status as statusing

    if watch and as_json:
        raise statusing.StatusError("--watch refreshes a table; for JSON, run status --json once per check (e.g. from cron)")
    seconds = statusing.parse_age(max_age)
    inv = load(inventory, recipients=False, quiet=as_json)
    selected, reaches, _ = reach(inv, lab, limit, access=False)  # one round trip per host: a host that does not answer is a row
    shells = {name: reaches[name].shell(connect_timeout=min(10, int(timeout))) for name in selected}

    def once():
        statuses = statusing.survey(inv, shells, selected, timeout=timeout)
        return statuses, statusing.results_of(inv, statuses, seconds, inv.warnings)

    if not watch:
        statuses, run = once()
        if not as_json:
            out.print(view(inv, statuses, run, seconds))
        finish(run, as_json)
        return

    # On a terminal the table is redrawn in place; into a pipe or a file each refresh follows the last.
    from contextlib import nullcontext

    from rich.console import Console
    from rich.live import Live

    statuses, run = once()
    live = Live(console=Console(highlight=False), auto_refresh=False) if out.is_terminal else None  # wrapped, not soft-wrapped: Live crops
    n = 1
    with live or nullcontext():
        try:
            while True:
                shown = view(inv, statuses, run, seconds, n, rounds)
                if live is not None:
                    live.update(shown, refresh=True)
                else:
                    out.print(shown)
                if rounds and n >= rounds:
                    break
                time.sleep(interval)
                statuses, run = once()
                n += 1
        except KeyboardInterrupt:
            pass  # the normal end of --watch: the exit code is the last refresh's
    finish(run, False)


def view(inv, statuses, run, max_age: int | None, round_number: int | None = None, rounds: int = 0) -> Group:
    """The tables and the verdict, as printed once or refreshed by --watch."""
    from .. import status as statusing

    asked = datetime.now().strftime("%H:%M:%S")
    title = f"status of cluster {inv.topology.cluster} at {asked}"
    if round_number is not None:
        title += f", refresh {round_number}" + (f" of {rounds}" if rounds else " (Ctrl-C ends)")
    queues = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)  # no column rules: fits 80 columns
    for column in ("host", "instance", "postfix", "incoming", "active", "deferred", "hold", "oldest"):
        queues.add_column(column, justify="left" if column in ("host", "instance", "postfix") else "right", no_wrap=True)
    balancers, reasons = [], Text()
    for h in statuses:
        if h.unreachable:
            queues.add_row(h.name, "", "[bold red]unreachable[/bold red]", "", "", "", "", "")
            continue
        for i in h.instances:
            q = i.queue
            oldest = q.oldest_aged()
            old = statusing.age_text(oldest[1]) if oldest else "-"
            if oldest and max_age is not None and oldest[1] > max_age:
                old = f"[bold red]{old}[/bold red]"
            state = "[green]running[/green]" if i.running else "[bold red]stopped[/bold red]"
            incoming = str(q.counts["incoming"]) + (f" (+{q.counts['maildrop']} maildrop)" if q.counts["maildrop"] else "")
            queues.add_row(h.name, i.directory, state, incoming, str(q.counts["active"]), str(q.counts["deferred"]), str(q.counts["hold"]), old)
            for reason, n in q.reasons:
                reasons.append(f"  {h.name} {i.directory}: {count(n, 'message')}: ")
                reasons.append(f"{reason}\n", style="yellow")
        if h.role == "balancer":
            balancers.append(h)
    parts: list = []
    if any(h.instances or h.unreachable for h in statuses):
        parts.append(queues)
    if reasons:
        reasons.rstrip()
        parts += [Text("why mail is deferred (most frequent reasons first):"), reasons]
    for h in balancers:
        table = Table(title=f"relays as balancer {h.name} sees them", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in ("relay", "state", "sessions", "last check"):
            table.add_column(column, justify="right" if column == "sessions" else "left")
        if h.balancer_error:
            table.add_row("", "[bold red]not answering[/bold red]", "", Text(h.balancer_error))
        else:
            for relay in inv.topology.relays:
                s = (h.servers or {}).get(relay.name)
                if s is None:
                    table.add_row(relay.name, "[bold red]absent[/bold red]", "", "not in the backend")
                else:
                    style = "green" if s.in_rotation else "bold red"
                    table.add_row(relay.name, f"[{style}]{s.state}[/{style}]", str(s.sessions), s.check or "-")
        parts.append(table)
    parts.append(verdict(inv, statuses, run, max_age))
    return Group(*parts)


def verdict(inv, statuses, run, max_age: int | None) -> Text:
    from .. import status as statusing

    problems = run.summary["problems"]
    if problems:
        text = Text(f"{count(len(problems), 'problem')}:\n", style="bold red")
        for p in problems:
            text.append(f"  {p}\n", style="red")
        text.rstrip()
        return text
    instances = [i for h in statuses for i in h.instances]
    line = f"all well: {count(len(instances), 'Postfix instance')} running, {count(sum(i.queue.total for i in instances), 'message')} queued"
    if max_age is not None:
        line += f", none older than {statusing.age_text(max_age)}"
    for h in statuses:
        if h.servers is not None:
            line += f"; {len(inv.topology.relays)} of {len(inv.topology.relays)} relays in rotation on {h.name}"
    return Text(line, style="green")
