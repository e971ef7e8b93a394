"""The mailforge command line: parses, calls the library, prints, picks the exit code.

This is the only module that imports Typer or Rich or decides exit codes:
0 success, 1 a problem found on a live cluster, 2 could not run (bad input).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .errors import InventoryError, MailforgeError, Problem

EXIT_OK, EXIT_PROBLEM, EXIT_UNUSABLE = 0, 1, 2

app = typer.Typer(
    name="mailforge",
    help="Provision Postfix relay/core mail clusters from one topology inventory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

InventoryArg = typer.Argument(..., help="Inventory directory, or the path of its topology.yml.", show_default=False)


def _print_problems(problems: list[Problem], style: str, label: str) -> None:
    for problem in problems:
        err.print(f"[{style}]{label}:[/{style}] ", end="")
        err.print(str(problem), markup=False)


def reports_errors(command):
    """Turn mailforge's exceptions into a message on stderr and exit 2: never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InventoryError as exc:
            _print_problems(exc.warnings, "yellow", "warning")
            _print_problems(exc.problems, "bold red", "error")
            count = len(exc.problems)
            err.print(f"{count} problem{'s' if count != 1 else ''} found; nothing was written.", markup=False)
            raise typer.Exit(EXIT_UNUSABLE) from None
        except MailforgeError as exc:
            err.print("[bold red]error:[/bold red] ", end="")
            err.print(str(exc), markup=False)
            raise typer.Exit(EXIT_UNUSABLE) from None
        except KeyboardInterrupt:
            err.print("interrupted", markup=False)
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - the promise is: never a traceback
            if os.environ.get("MAILFORGE_DEBUG"):
                raise
            err.print("[bold red]internal error:[/bold red] ", end="")
            err.print(f"{type(exc).__name__}: {exc} (set MAILFORGE_DEBUG=1 for the traceback, and please report it)", markup=False)
            raise typer.Exit(EXIT_UNUSABLE) from None

    return wrapper


def _load(inventory: Path):
    from .topology import load_inventory

    return load_inventory(inventory)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _summary(inv) -> str:
    t = inv.topology
    parts = [f"cluster {t.cluster}", _count(len(t.domains), "domain"), _count(len(t.relays), "relay"), _count(len(t.cores), "core")]
    if t.load_balancers:
        parts.append(_count(len(t.load_balancers), "load balancer"))
    if inv.recipients is not None:
        parts.append(_count(inv.recipients.count(list(t.domains)), "recipient"))
    return ", ".join(parts)


@app.command()
@reports_errors
def validate(
    inventory: Path = InventoryArg,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
):
    """Check an inventory without writing anything: every problem at once, exit 2 if any."""
    from .topology import load_inventory, resolve_topology_file

    if as_json:
        try:
            inv = load_inventory(inventory)
        except InventoryError as exc:
            print(json.dumps({"valid": False, "errors": [p.as_dict() for p in exc.problems], "warnings": [p.as_dict() for p in exc.warnings]}, indent=2))
            raise typer.Exit(EXIT_UNUSABLE) from None
        print(json.dumps({"valid": True, "errors": [], "warnings": [p.as_dict() for p in inv.warnings]}, indent=2))
        return
    inv = _load(inventory)
    _print_problems(inv.warnings, "yellow", "warning")
    out.print(f"[green]valid:[/green] {resolve_topology_file(inventory)} ({_summary(inv)})")


@app.command()
@reports_errors
def render(
    inventory: Path = InventoryArg,
    output: Path = typer.Option(..., "--output", "-o", help="Directory to write OUT/<host>/<path> and OUT/manifest.json into (replaced atomically)."),
):
    """Render every file of every host; on any error the output directory is left untouched."""
    from .render import render as render_tree
    from .write import write_tree

    inv = _load(inventory)
    _print_problems(inv.warnings, "yellow", "warning")
    tree = render_tree(inv)
    manifest = write_tree(tree, inv.topology.cluster, output)
    table = Table(title=f"Rendered {_summary(inv)}", title_justify="left")
    table.add_column("host")
    table.add_column("files", justify="right")
    table.add_column("actions a change needs")
    for host, entry in manifest["hosts"].items():
        actions = sorted({f["action"] for f in entry["files"].values()})
        table.add_row(host, str(len(entry["files"])), ", ".join(actions))
    out.print(table)
    out.print(f"wrote {sum(len(h['files']) for h in manifest['hosts'].values())} files and manifest.json to {output}")


def _render_for_hosts(inventory: Path, render_dir: Path | None):
    """Validate and render into the directory deploy ships from; returns (inventory, directory, manifest)."""
    from .render import render as render_tree
    from .write import write_tree

    inv = _load(inventory)
    _print_problems(inv.warnings, "yellow", "warning")
    directory = render_dir or inv.directory / ".mailforge" / "render"
    manifest = write_tree(render_tree(inv), inv.topology.cluster, directory)
    return inv, directory, manifest


def _deploy_summary(result) -> None:
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


@app.command()
@reports_errors
def deploy(
    inventory: Path = InventoryArg,
    check: bool = typer.Option(False, "--check", help="Change nothing on any host; report what would change."),
    diff: bool = typer.Option(False, "--diff", help="Show the changes to files."),
    limit: str = typer.Option(None, "--limit", help="Only these hosts or groups (Ansible pattern, e.g. relay1,core)."),
    lab: bool = typer.Option(False, "--lab", help="Deploy to this inventory's lab containers (see `mailforge lab up`)."),
    batch: int = typer.Option(1, "--batch", min=1, help="How many relays change at once."),
    render_dir: Path = typer.Option(None, "--render-dir", help="Where to render before shipping (default INVENTORY/.mailforge/render)."),
    as_json: bool = typer.Option(False, "--json", help="Print the per-host results as JSON on stdout (progress goes to stderr)."),
):
    """Render, then apply the result with Ansible: checked before it goes live, reloaded not restarted."""
    inv, directory, manifest = _render_for_hosts(inventory, render_dir)
    lab_hosts, environment = None, None
    if lab:
        from .lab import ansible_environment, engine_environment, lab_connection

        environment = ansible_environment(engine_environment())
        lab_hosts = lab_connection(inv)
    _run_deploy(inv, directory, manifest, as_json=as_json, check=check, diff=diff, limit=limit, lab_hosts=lab_hosts, batch=batch,
                environment=environment)


def _run_deploy(inv, directory, manifest, as_json: bool = False, **options) -> None:
    from dataclasses import asdict

    from rich.progress import BarColumn, Progress, TextColumn

    from .deploy import run_playbook

    with Progress(TextColumn("{task.description:<12}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[current]}"), console=err if as_json else out, transient=False) as bar:
        tasks = {host: bar.add_task(host, total=None, current="waiting") for host in inv.hosts}

        def progress(host: str, task: str, done: int, seen: int) -> None:
            bar.update(tasks[host], completed=done, total=max(seen, done), current=task[:60])

        result = run_playbook(inv, directory, manifest, progress=progress, **options)
    if as_json:
        totals = {key: sum(getattr(r, key) for r in result.hosts.values()) for key in ("ok", "changed", "failed", "unreachable")}
        print(json.dumps({"ok": not result.failed, "status": result.status, "totals": totals,
                          "hosts": {host: asdict(r) for host, r in result.hosts.items()}}, indent=2))
    else:
        _deploy_summary(result)
    if result.failed:
        raise typer.Exit(EXIT_PROBLEM if not any(r.unreachable for r in result.hosts.values()) else EXIT_UNUSABLE)


@app.command()
@reports_errors
def verify(
    inventory: Path = InventoryArg,
    lab: bool = typer.Option(False, "--lab", help="Verify this inventory's lab containers, probing from the lab's client."),
    probe_from: str = typer.Option(None, "--probe-from", help="Send the SMTP probes from this host: ssh://user@host[:port] or docker://name."),
    wait: int = typer.Option(60, "--wait", min=1, help="Seconds to wait for the probe message to reach a core."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON on stdout."),
    render_dir: Path = typer.Option(None, "--render-dir", help="Where to render the desired state (default INVENTORY/.mailforge/render)."),
):
    """Prove a deployed cluster works: host state, real mail through the front door, PROXY, the walls. Exit 1 if any check fails."""
    from . import verify as verifying

    inv, directory, manifest = _render_for_hosts(inventory, render_dir)
    checks = verifying.verify_cluster(inv, directory, manifest, lab=lab, probe_from=probe_from, wait=wait)
    if as_json:
        print(json.dumps({"ok": all(c.ok for c in checks), "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        table = Table(title=f"verify {inv.topology.cluster}", title_justify="left")
        for column in ("", "check", "host", "evidence"):
            table.add_column(column)
        for c in checks:
            table.add_row("[green]ok[/green]" if c.ok else "[bold red]FAIL[/bold red]", c.name, c.host, c.detail)
        out.print(table)
        failed = sum(not c.ok for c in checks)
        out.print(f"{len(checks) - failed} of {len(checks)} checks passed" + (f"; [bold red]{failed} failed[/bold red]" if failed else ""))
    if not all(c.ok for c in checks):
        raise typer.Exit(EXIT_PROBLEM)


@app.command()
@reports_errors
def maps(
    inventory: Path = InventoryArg,
    check: bool = typer.Option(False, "--check", help="Only show what would change; push nothing."),
    force: bool = typer.Option(False, "--force", help="Push even when a recipients map would shrink by more than --max-shrink, or become empty."),
    max_shrink: float = typer.Option(10.0, "--max-shrink", min=0, max=100, help="Largest share (percent) of a recipients map a run may remove without --force."),
    lab: bool = typer.Option(False, "--lab", help="The lab's containers for this inventory (see `mailforge lab up`)."),
    limit: str = typer.Option(None, "--limit", help="Only these hosts (comma-separated names)."),
    batch: int = typer.Option(1, "--batch", min=1, help="How many relays take their new maps at once."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
):
    """Regenerate the maps from the recipient sources and push only what changed, atomically. Exit 1 if refused or a push failed."""
    import time

    from . import maps as mapping
    from .remote import shells_for

    started = time.monotonic()
    inv = _load(inventory)
    _print_problems(inv.warnings, "yellow", "warning")
    from .render import render as render_tree

    tables = mapping.map_files(render_tree(inv))
    if limit:
        wanted = {h.strip() for h in limit.split(",") if h.strip()}
        unknown = sorted(wanted - set(inv.hosts))
        if unknown:
            raise MailforgeError(f"--limit names no host of the inventory: {', '.join(unknown)} (hosts: {', '.join(inv.hosts)})")
        tables = {h: files for h, files in tables.items() if h in wanted}
    shells = shells_for(inv, lab)
    cache = inv.directory / ".mailforge" / "live-maps"  # what this machine last pushed, by sha256
    changes = mapping.survey(shells, tables, cache=cache)
    changed = [c for c in changes if c.changed]
    refusals = [] if force else mapping.guard(changes, max_shrink / 100)
    results: list = []
    if changed and not check and not refusals:
        results = mapping.push(shells, changes, mapping.rollout_order(inv, batch))
    if not check:
        mapping.remember(cache, changes, results, prune=not limit)
    elapsed = time.monotonic() - started
    failed = [r for r in results if r.error]

    if as_json:
        print(json.dumps({
            "changed": bool(changed), "checked_only": check, "seconds": round(elapsed, 3),
            "refused": [{"host": r.change.host, "map": r.change.path, "reason": r.reason, "removed_examples": r.change.removed_examples} for r in refusals],
            "maps": [c.as_dict() for c in changes],
            "hosts": {r.host: {"pushed": r.pushed, "reloaded": r.reloaded, "error": r.error} for r in results},
        }, indent=2))
    else:
        if changed:
            table = Table(title=f"maps of cluster {inv.topology.cluster}: {len(changed)} of {len(changes)} changed", title_justify="left")
            for column in ("host", "map", "live", "new", "added", "removed", "examples"):
                table.add_column(column, justify="right" if column in ("live", "new", "added", "removed") else "left",
                                 overflow="fold", no_wrap=column in ("live", "new", "added", "removed"))
            for c in changed:
                examples = [f"+{x.split(' ', 1)[0]}" for x in c.added_examples] + [f"-{x.split(' ', 1)[0]}" for x in c.removed_examples]
                if not c.added and not c.removed:
                    examples = ["missing on the host" if c.live_sha256 is None else
                                "database missing or older than the map" if c.live_sha256 == c.sha256 else "only comments or order differ"]
                live = "missing" if c.live_sha256 is None else ("-" if c.live_entries is None else f"{c.live_entries:,}")
                new = "-" if c.entries is None else f"{c.entries:,}"
                table.add_row(c.host, c.path, live, new, f"+{c.added:,}", f"-{c.removed:,}", "\n".join(examples))
            out.print(table)
        for r in refusals:
            err.print("[bold red]refused:[/bold red] ", end="")
            err.print(f"{r.change.host} {r.change.path} {r.reason}; for example "
                      + ", ".join(x.split(" ", 1)[0] for x in r.change.removed_examples)
                      + ". Nothing was pushed; check the sources, or run again with --force.", markup=False)
        if not changed:
            out.print(f"no map changed: {len(changes)} maps on {len(tables)} hosts match the sources; no host was touched ({elapsed:.1f} s)")
        elif check and not refusals:
            out.print(f"--check: {len(changed)} maps would change; nothing was pushed ({elapsed:.1f} s)")
        for r in results:
            if r.error:
                err.print(f"[red]{r.host}:[/red] ", end="")
                err.print(r.error, markup=False)
            elif r.pushed:
                out.print(f"{r.host}: pushed {', '.join(r.pushed)}" + (" and reloaded Postfix" if r.reloaded else " (no reload needed)"))
        if results and not failed:
            out.print(f"pushed {sum(len(r.pushed) for r in results)} maps to {len(results)} hosts in {elapsed:.1f} s")
    if refusals or failed:
        raise typer.Exit(EXIT_PROBLEM)


@app.command()
@reports_errors
def drift(
    inventory: Path = InventoryArg,
    limit: str = typer.Option(None, "--limit", help="Only these hosts (comma-separated names)."),
    lab: bool = typer.Option(False, "--lab", help="The lab's containers for this inventory (see `mailforge lab up`)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List every item, not only what drifted (in-sync items are otherwise counted per host)."),
    as_json: bool = typer.Option(False, "--json", help="Print every item as JSON on stdout."),
    render_dir: Path = typer.Option(None, "--render-dir", help="Where to render the desired state (default INVENTORY/.mailforge/render)."),
):
    """Compare every host's live state with the rendered inventory, read-only. Exit 1 if anything drifted."""
    from . import drift as drifting
    from .remote import shells_for

    inv, directory, manifest = _render_for_hosts(inventory, render_dir)
    hosts = None
    if limit:
        hosts = {h.strip() for h in limit.split(",") if h.strip()}
        unknown = sorted(hosts - set(inv.hosts))
        if unknown:
            raise MailforgeError(f"--limit names no host of the inventory: {', '.join(unknown)} (hosts: {', '.join(inv.hosts)})")
    report = drifting.audit(inv, directory, manifest, shells_for(inv, lab), hosts=hosts)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        styles = {drifting.IN_SYNC: "green", drifting.DRIFTED: "bold red", drifting.MISSING: "bold red", drifting.UNEXPECTED: "yellow"}
        table = Table(title=f"drift of cluster {report.cluster}", title_justify="left")
        for column in ("host", "item", "status", "desired", "live / detail"):
            table.add_column(column, overflow="fold")
        for host in report.hosts:
            items = [i for i in report.items if i.host == host]
            shown = items if verbose else [i for i in items if i.status != drifting.IN_SYNC]
            for n, i in enumerate(shown):
                desired, live = i.desired or "", i.live or ""
                if i.kind in ("file", "map"):  # sha256s: the first 12 hex digits say enough here (--json has them whole)
                    desired, live = (f"sha256 {x[:12]}" if len(x) == 64 else x for x in (desired, live))
                live = " / ".join(x for x in (live, i.detail) if x)
                table.add_row(host if n == 0 else "", i.label, f"[{styles[i.status]}]{i.status}[/{styles[i.status]}]",
                              desired, live)
            in_sync = [i for i in items if i.status == drifting.IN_SYNC]
            if not verbose and in_sync:
                kinds: dict[str, int] = {}
                for i in in_sync:
                    kinds[i.kind] = kinds.get(i.kind, 0) + 1
                table.add_row(host if not shown else "", f"{len(in_sync)} {'other ' if shown else ''}items", "[green]in sync[/green]", "",
                              ", ".join(f"{k} {n}" for k, n in kinds.items()))
            table.add_section()
        out.print(table)
        for i in report.drifted:
            if i.diff:
                out.print(f"[bold]{i.host}[/bold] {i.label}")
                out.print(i.diff, markup=False, end="")
        bad = report.drifted
        summary = (f"all {_count(len(report.items), 'item')} on {_count(len(report.hosts), 'host')} in sync" if not bad else
                   f"{len(bad)} of {len(report.items)} items on {len({i.host for i in bad})} of {_count(len(report.hosts), 'host')} not in sync")
        out.print(f"{summary} ({report.seconds:.1f} s; firewall compared in {report.firewall_method} canonical form)")
    if report.drifted:
        raise typer.Exit(EXIT_PROBLEM)


lab_app = typer.Typer(help="A local lab: one container per inventory host, plus clients and a DNS server.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")


@lab_app.command("up")
@reports_errors
def lab_up(
    inventory: Path = InventoryArg,
    render_dir: Path = typer.Option(None, "--render-dir", help="Where to render before shipping (default INVENTORY/.mailforge/render)."),
    no_deploy: bool = typer.Option(False, "--no-deploy", help="Only start and prepare the containers and the lab DNS; deploy later with `mailforge deploy --lab`."),
):
    """Start the lab's containers at the inventory's addresses, then deploy to them as `mailforge deploy` does."""
    import time

    from . import lab

    started = time.monotonic()
    inv, directory, manifest = _render_for_hosts(inventory, render_dir)
    env = lab.engine_environment()
    plan = lab.up(inv, env, say=lambda message: out.print(f"[dim]lab:[/dim] {message}"))
    if no_deploy:
        out.print(f"lab {plan.network} ({plan.subnet}) is up in {time.monotonic() - started:.0f} s; not deployed (--no-deploy)")
        return
    _run_deploy(inv, directory, manifest, lab_hosts=lab.lab_connection(inv), environment=lab.ansible_environment(env))
    out.print(f"lab {plan.network} ({plan.subnet}) is up and deployed in {time.monotonic() - started:.0f} s")


@lab_app.command("down")
@reports_errors
def lab_down(inventory: Path = InventoryArg):
    """Remove the lab's containers and network: nothing is left behind."""
    from . import lab

    inv = _load(inventory)
    removed = lab.down(inv, lab.engine_environment())
    out.print(f"removed {len(removed)}: {', '.join(removed) if removed else 'nothing was there'}")


@lab_app.command("status")
@reports_errors
def lab_status(inventory: Path = InventoryArg, as_json: bool = typer.Option(False, "--json")):
    """Show the lab's containers and whether each runs; exit 1 if any is missing or stopped."""
    from . import lab

    inv = _load(inventory)
    rows = lab.status(inv, lab.engine_environment())
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title=f"lab of cluster {inv.topology.cluster}", title_justify="left")
        for column in ("container", "host", "role", "address", "state"):
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(row[c]) for c in ("container", "host", "role", "address", "state")))
        out.print(table)
    if any(row["state"] != "running" for row in rows):
        raise typer.Exit(EXIT_PROBLEM)


dns_app = typer.Typer(help="The DNS a cluster needs: check it live, or print the records to publish.", no_args_is_help=True)
app.add_typer(dns_app, name="dns")


@dns_app.command("check")
@reports_errors
def dns_check(
    inventory: Path = InventoryArg,
    nameserver: list[str] = typer.Option(None, "--nameserver", help="Ask this server (HOST[:PORT], repeatable) instead of the ones in /etc/resolv.conf."),
    timeout: float = typer.Option(2.0, "--timeout", min=0.05, help="Seconds to wait for each answer (each question is tried twice per server)."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON on stdout."),
):
    """Check the live DNS against the topology: MX, MX addresses, no core in MX, SPF, FCrDNS, the DNS lists. Exit 1 if any check fails."""
    from . import dns as dnscheck

    inv = _load(inventory)
    servers = [dnscheck.parse_nameserver(s) for s in nameserver] if nameserver else dnscheck.system_nameservers()
    querier = dnscheck.Querier(servers, timeout=timeout)
    try:
        checks = dnscheck.run_checks(inv.topology, querier)
    except dnscheck.DnsError as exc:
        if as_json:
            print(json.dumps({"ok": False, "nameservers": querier.servers_text(), "error": str(exc), "checks": []}, indent=2))
        raise
    ok = all(c.ok for c in checks)
    if as_json:
        print(json.dumps({"ok": ok, "nameservers": querier.servers_text(), "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        styles = {dnscheck.OK: "green", dnscheck.FAIL: "bold red", dnscheck.TIMEOUT: "bold yellow", dnscheck.SERVFAIL: "bold yellow"}
        table = Table(title=f"DNS of cluster {inv.topology.cluster}, asked {querier.servers_text()}", title_justify="left")
        for column in ("domain / host / zone", "check", "status", "evidence"):
            table.add_column(column, overflow="fold", no_wrap=column == "status")
        for c in checks:
            style = styles.get(c.status, "bold red")
            table.add_row(c.subject, c.check, f"[{style}]{c.status}[/{style}]", c.evidence)
        out.print(table)
        bad = sum(not c.ok for c in checks)
        out.print(f"{len(checks) - bad} of {len(checks)} checks passed" + (f"; [bold red]{bad} failed[/bold red]" if bad else ""))
    if not ok:
        raise typer.Exit(EXIT_PROBLEM)


@dns_app.command("zone")
@reports_errors
def dns_zone(
    inventory: Path = InventoryArg,
    ttl: int = typer.Option(3600, "--ttl", min=1, max=2147483647, help="TTL of every record, in seconds."),
):
    """Print the records the topology needs, in zone-file syntax: MX, SPF, A/AAAA, and the PTRs for the reverse zones."""
    from . import dns as dnscheck

    inv = _load(inventory)
    print(dnscheck.zone_text(inv.topology, ttl=ttl), end="")


@app.command()
@reports_errors
def schema():
    """Print the inventory's JSON Schema, for editors that complete and check YAML."""
    from .topology import Topology

    print(json.dumps(Topology.model_json_schema(), indent=2, sort_keys=True))


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
