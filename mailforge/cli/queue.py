"""`mailforge queue flush|hold|release|delete`: act on the Postfix queues of the selected hosts and say what was acted on."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from .app import queue_app
from .common import InventoryArg, JsonOption, LabOption, LimitOption, command, count, finish, load, out, reach

IdsArg = typer.Argument(
    None, help="Queue ids (as `mailforge status --json` or mailq shows them); for hold, release and delete, these or --all.", show_default=False
)
AllOption = typer.Option(False, "--all", help="Every message (of --queue, if given), on every selected host and instance.")
InstanceOption = typer.Option(
    None, "--instance", help="Only this Postfix instance, by its config directory (e.g. /etc/postfix-inbound); default: every instance."
)


def _run(verb: str, inventory: Path, ids: list[str] | None, lab: bool, limit: str | None, instance: str | None, as_json: bool, **options) -> None:
    from .. import hosts, queues

    action = queues.Action(verb, tuple(ids or ()), **options)
    action.check()  # refused before any host is asked
    inv = load(inventory, recipients=False, quiet=as_json)
    chosen = [h for h in hosts.select(inv, limit) if h.instances]  # a balancer runs no Postfix: never asked
    if not chosen:
        raise queues.QueueError(f"{limit} runs no Postfix: choose relays, MX proxies or cores with --limit")
    selected, reaches, _ = reach(inv, lab, ",".join(h.name for h in chosen))
    acted = queues.act(inv, {n: reaches[n].shell() for n in selected}, selected, action, instance=instance)
    run = queues.results_of(inv, action, acted, selected, inv.warnings)
    if not as_json:
        _print(inv, action, acted, run)
    finish(run, as_json)


def _print(inv, action, acted, run) -> None:
    from .. import queues

    table = Table(title=f"queue {action.verb} on cluster {inv.topology.cluster}", title_justify="left")
    for column in ("host", "instance", "acted on", "queues before -> after", "queue ids / Postfix said"):
        table.add_column(column, overflow="fold", no_wrap=column in ("host", "acted on"))
    for a in acted:
        if a.error:
            table.add_row(a.host, a.directory, "[bold red]failed[/bold red]", "", Text(a.error))
            continue
        changed = [q for q in queues.QUEUES if a.before.get(q, 0) != a.after.get(q, 0)] or [q for q in queues.QUEUES if a.before.get(q)]
        moves = "\n".join(f"{q} {a.before.get(q, 0)} -> {a.after.get(q, 0)}" for q in changed) or "empty"
        what = f"{queues.PAST[a.verb]} {a.count}"
        if a.verb == "flush" and a.count:
            what += f"\n{len(a.delivered)} left the queue" + (f" in {a.waited} s" if a.waited is not None else "")
        ids = ", ".join(a.ids[:10]) + (f" and {len(a.ids) - 10} more" if len(a.ids) > 10 else "")
        said = [s for s in a.said if not s.endswith((": removed", ": placed on hold", ": released from hold"))]
        table.add_row(a.host, a.directory, what, moves, Text("\n".join(x for x in (ids, *said) if x)))
    out.print(table)
    for r in run.results:
        if r.status == "not found":
            out.print(Text(f"not found: {r.detail}", style="bold red"))
    total = run.summary["count"]
    hosts = len({a.host for a in acted})
    out.print(f"{queues.PAST[action.verb]} {count(total, 'message')} on {count(hosts, 'host')}")


@queue_app.command("flush")
@command("queue flush")
def flush(
    inventory: Path = InventoryArg,
    ids: list[str] = IdsArg,
    lab: bool = LabOption,
    limit: str = LimitOption,
    instance: str = InstanceOption,
    wait: int = typer.Option(0, "--wait", min=0, max=600, help="Wait up to this many seconds for the flushed messages to leave the queue, then report."),
    as_json: bool = JsonOption,
):
    """Deliver deferred mail now (postqueue -f), or only the messages named (postqueue -i). Exit 2 if a host cannot be reached."""
    _run("flush", inventory, ids, lab, limit, instance, as_json, wait=wait)


@queue_app.command("hold")
@command("queue hold")
def hold(
    inventory: Path = InventoryArg,
    ids: list[str] = IdsArg,
    all_messages: bool = AllOption,
    queue: str = typer.Option(None, "--queue", help="With --all: only this queue's messages (incoming, active, deferred), as postsuper -h ALL deferred."),
    lab: bool = LabOption,
    limit: str = LimitOption,
    instance: str = InstanceOption,
    as_json: bool = JsonOption,
):
    """Put messages on hold (postsuper -h): kept, not delivered, until released."""
    _run("hold", inventory, ids, lab, limit, instance, as_json, all=all_messages, queue=queue)


@queue_app.command("release")
@command("queue release")
def release(
    inventory: Path = InventoryArg,
    ids: list[str] = IdsArg,
    all_messages: bool = AllOption,
    lab: bool = LabOption,
    limit: str = LimitOption,
    instance: str = InstanceOption,
    as_json: bool = JsonOption,
):
    """Release held messages (postsuper -H): back to the deferred queue, delivered at the next queue run (or flush)."""
    _run("release", inventory, ids, lab, limit, instance, as_json, all=all_messages)


@queue_app.command("delete")
@command("queue delete")
def delete(
    inventory: Path = InventoryArg,
    ids: list[str] = IdsArg,
    all_messages: bool = AllOption,
    queue: str = typer.Option(None, "--queue", help="With --all: only this queue's messages (e.g. deferred, hold), as postsuper -d ALL deferred."),
    yes: bool = typer.Option(False, "--yes", help="Confirm --all: every message it matches is removed for good."),
    lab: bool = LabOption,
    limit: str = LimitOption,
    instance: str = InstanceOption,
    as_json: bool = JsonOption,
):
    """Delete messages for good (postsuper -d): the ids named, or --all (of --queue) with --yes. Exit 1 if a named id is in no queue."""
    _run("delete", inventory, ids, lab, limit, instance, as_json, all=all_messages, queue=queue, confirmed=yes)
