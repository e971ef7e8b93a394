"""What every command shares: the consoles, the options written once, turning errors into a message
(or a JSON envelope) and an exit code, and the steps most commands start with.

Exit codes everywhere: 0 success, 1 a problem found on a live cluster, 2 could not run (bad input,
unreachable host). Library code only raises; this package alone prints and picks the exit code.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..errors import InventoryError, MailforgeError, Problem
from ..results import ERROR, Run

EXIT_OK, EXIT_PROBLEM, EXIT_UNUSABLE = 0, 1, 2

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

InventoryArg = typer.Argument(..., help="Inventory directory, or the path of its topology.yml.", show_default=False)
JsonOption = typer.Option(False, "--json", help="Print the result as mailforge's JSON envelope on stdout (docs/json.md); progress goes to stderr.")
LabOption = typer.Option(False, "--lab", help="This inventory's lab containers (see `mailforge lab up`), reached over SSH as the lab's admin user with sudo.")
LimitOption = typer.Option(
    None,
    "--limit",
    help="Only these hosts: names, the groups balancers, relays, mxproxies, cores, in Ansible's pattern grammar (e.g. relays, relay1,core, 'all:!lb').",
)
RenderDirOption = typer.Option(None, "--render-dir", help="Where to render the desired state (default INVENTORY/.mailforge/render).")
BatchOption = typer.Option(1, "--batch", min=1, help="How many relays change at once.")
VerboseOption = typer.Option(0, "--verbose", "-v", count=True, help="Show Ansible's own output, with its verbosity: -v, -vv, ... (as ansible-playbook's -v).")


def print_problems(problems: list[Problem], style: str, label: str) -> None:
    for problem in problems:
        err.print(f"[{style}]{label}:[/{style}] ", end="")
        err.print(str(problem), markup=False)


def warn(message: str) -> None:
    err.print("[yellow]warning:[/yellow] ", end="")
    err.print(message, markup=False)


def emit(run: Run) -> None:
    """The JSON envelope on stdout."""
    print(json.dumps(run.envelope(), indent=2))


def count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def command(name: str) -> Callable:
    """Wrap a command: mailforge's exceptions become a message on stderr (with --json, also the envelope
    on stdout) and exit 2, never a traceback."""

    def decorate(function: Callable) -> Callable:
        takes_json = "as_json" in inspect.signature(function).parameters

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            as_json = bool(kwargs.get("as_json")) if takes_json else False
            try:
                return function(*args, **kwargs)
            except InventoryError as exc:
                print_problems(exc.warnings, "yellow", "warning")
                print_problems(exc.problems, "bold red", "error")
                n = len(exc.problems)
                err.print(f"{n} problem{'s' if n != 1 else ''} found; nothing was written.", markup=False)
                if as_json:
                    emit(Run(name, problems=exc.problems, warnings=exc.warnings))
                raise typer.Exit(EXIT_UNUSABLE) from None
            except MailforgeError as exc:
                err.print("[bold red]error:[/bold red] ", end="")
                err.print(str(exc), markup=False)
                if as_json:
                    emit(Run(name, error=str(exc)))
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
                if as_json:
                    emit(Run(name, error=f"internal error: {type(exc).__name__}: {exc}"))
                raise typer.Exit(EXIT_UNUSABLE) from None

        return wrapper

    return decorate


def finish(run: Run, as_json: bool) -> None:
    """Print the envelope if asked, and leave with the run's exit code."""
    if as_json:
        emit(run)
    if run.status == ERROR:
        raise typer.Exit(EXIT_UNUSABLE)
    if run.exit_code:
        raise typer.Exit(run.exit_code)


# --- the steps most commands start with -----------------------------------------------------------


def load(inventory: Path, recipients: bool = True, quiet: bool = False):
    """The inventory with its recipients read (or, `recipients=False`, the topology alone); warnings to stderr."""
    from ..inventory import load_inventory, load_topology

    inv = load_inventory(inventory) if recipients else load_topology(inventory)
    if not quiet:
        print_problems(inv.warnings, "yellow", "warning")
    return inv


def render_for_hosts(inventory: Path, render_dir: Path | None, tls: bool = False):
    """Validate and render into the directory deploy ships from; returns (inventory, directory, manifest).
    `tls` (deploy, lab up): first make the TLS store ready and check the MX certificate, so a bad one
    stops everything before the render directory is written or a host is touched."""
    from ..render import render
    from ..write import write_tree

    inv = load(inventory)
    if tls:
        prepare_tls(inv)
    directory = render_dir or inv.directory / ".mailforge" / "render"
    manifest = write_tree(render(inv), inv.topology.cluster, directory)
    return inv, directory, manifest


def prepare_tls(inv):
    """Make the cluster's TLS store ready (`tls.material.prepare`) and check the MX certificate: every
    error at once, located, raised as an InventoryError (exit 2, nothing written); warnings printed."""
    from ..errors import InventoryError
    from ..tls import material, store_of

    store = store_of(inv.topology.cluster)
    made = material.prepare(inv, store)
    if inv.topology.dkim is not None:  # a hosted domain's first DKIM key(s): they sign once `dns check` has seen them
        from .. import dkim

        made.written += dkim.ensure_keys(inv.topology, store)
    errors, warnings = material.check_mx(inv, store)
    if errors:
        raise InventoryError(errors, warnings)
    print_problems(warnings, "yellow", "warning")
    return made


def reach(inv, lab: bool, limit: str | None, ansible: bool = False, access: bool = True):
    """(the hosts --limit selects, how each is reached, how each answered `hosts.check_access`): the one
    way deploy, verify, maps and drift find their hosts, and make sure of them before doing anything
    (`ansible`: and that Ansible has the connection plugins they are reached with; `access=False`:
    without asking them first, for `status`, which reports a host that does not answer as such)."""
    from .. import hosts

    if not lab:  # hosts.yml first: its problems and warnings come before a --limit that fails
        reaches = hosts.reach_all(inv, warn=warn)
    selected = [h.name for h in hosts.select(inv, limit)]
    if lab:  # the limit is checked before the lab is looked at
        from .. import lab as lab_module

        reaches = hosts.reach_all(inv, lab=lab_module.reaches(inv))
    if ansible:
        from ..ansible_env import ansible_settings, check_connections

        check_connections(reaches, selected, ansible_settings(inv.directory)[0]["ANSIBLE_COLLECTIONS_PATH"])
    return selected, reaches, hosts.check_access(reaches, selected) if access else {}


def summary_line(inv) -> str:
    t = inv.topology
    parts = [f"cluster {t.cluster}", count(len(t.domains), "domain"), count(len(t.relays), "relay"), count(len(t.cores), "core")]
    if t.load_balancers:
        parts.append(count(len(t.load_balancers), "load balancer"))
    if inv.recipients_read and inv.recipients is not None:
        parts.append(count(inv.recipients.count(list(t.domains)), "recipient"))
    return ", ".join(parts)
