"""`mailforge verify`: host state, real mail through the front door, PROXY, the walls."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .app import app
from .common import InventoryArg, JsonOption, LabOption, LimitOption, RenderDirOption, command, finish, out, reach, render_for_hosts


@app.command()
@command("verify")
def verify(
    inventory: Path = InventoryArg,
    lab: bool = LabOption,
    limit: str = LimitOption,
    probe_from: str = typer.Option(
        None, "--probe-from", help="Send the SMTP probes from this host: ssh://user@host[:port] or docker://name (default with --lab: the lab's client)."
    ),
    wait: int = typer.Option(60, "--wait", min=1, help="Seconds to wait for the probe message to reach a core."),
    as_json: bool = JsonOption,
    render_dir: Path = RenderDirOption,
):
    """Prove a deployed cluster works: host state, real mail through the front door, PROXY, the walls. Exit 1 if any check fails."""
    from .. import drift
    from .. import verify as verifying
    from ..remote import shell_from_spec

    probe = shell_from_spec(probe_from, "probe") if probe_from else None  # a bad spec fails before anything is asked
    if probe is None and not lab:
        raise verifying.VerifyError("name the probing host with --probe-from (or use --lab)")
    inv, directory, manifest = render_for_hosts(inventory, render_dir)
    stand_in = None
    if lab:
        from .. import lab as lab_module

        stand_in = lab_module.front_door(inv)  # an external balancer's stand-in, if the inventory has one
    door = verifying._front_door(inv, stand_in)  # before any host is asked: an external balancer without a name has none
    selected, reaches, _ = reach(inv, lab, limit)
    spammer = submitter = user = None
    nameservers = None
    if lab:
        from .. import lab as lab_module

        probes = lab_module.probes(inv)
        client = probes["client"].shell()
        spammer = probes["spammer"].shell()
        submitter = probes["submitter"].shell() if "submitter" in probes else None  # with an outbound instance: a host in its trusted_networks
        user = probes["user"].shell() if "user" in probes else None  # with dkim: a host in a core's user network
        nameservers = [(lab_module.plan(inv).by_host("dns").address, 53)]  # DKIM and DMARC are judged against the lab's DNS
        if probe is not None:
            if probe.argv[0] == "docker":
                probe.env = lab_module.engine_environment()  # a container next to the lab's: the same engine
            client = probe
    else:
        assert probe is not None
        client = probe
    shells = {name: reaches[name].shell() for name in selected}
    from .. import signing

    shipped = drift.shipped_tls(inv, signing.fingerprints)  # a store without the TLS files deploy ships: exit 2, no host surveyed
    checks = verifying.verify(
        inv, directory, manifest, shells, client, spammer, wait=wait, door=door, submitter=submitter, shipped=shipped, user=user, nameservers=nameservers
    )
    run = verifying.results_of(checks, inv.topology.cluster, inv.warnings, selected)
    if not as_json:
        table = Table(title=f"verify {inv.topology.cluster}", title_justify="left")
        for column in ("", "check", "host", "evidence"):
            table.add_column(column)
        for c in checks:
            table.add_row("[yellow]warn[/yellow]" if c.warning else "[green]ok[/green]" if c.ok else "[bold red]FAIL[/bold red]", c.name, c.host, c.detail)
        out.print(table)
        failed = sum(not c.ok for c in checks)
        out.print(f"{len(checks) - failed} of {len(checks)} checks passed" + (f"; [bold red]{failed} failed[/bold red]" if failed else ""))
    finish(run, as_json)
