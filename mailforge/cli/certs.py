"""`mailforge certs`: obtain or renew the MX certificate (and the mta-sts one) from the inventory's ACME CA."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..results import Result, Run
from .app import app
from .common import EXIT_PROBLEM, InventoryArg, JsonOption, command, err, finish, load, out


@app.command()
@command("certs")
def certs(
    inventory: Path = InventoryArg,
    renew: bool = typer.Option(False, "--renew", help="Renew now, even when the certificate is not within tls.acme.renew_days of expiry (the key is kept)."),
    roll_key: bool = typer.Option(
        False,
        "--roll-key",
        help="Roll the MX key to the next DANE key (tls.dane), once `dns check` has seen its TLSA record published for tls.dane.publish_wait_hours; exit 1 before that.",
    ),
    deploy: bool = typer.Option(
        False, "--deploy", help="When a certificate changed, run `mailforge deploy` (the hosts reload Postfix/HAProxy, never restart)."
    ),
    lab: bool = typer.Option(
        False, "--lab", help="Against this inventory's lab (`mailforge lab up`): its ACME server (pebble) and DNS (Knot) and key; --deploy deploys to the lab."
    ),
    as_json: bool = JsonOption,
):
    """Obtain or renew the MX names' certificate by ACME (DNS-01 through RFC 2136 updates signed with TSIG) into the
    cluster's TLS store. Exit 0: issued, renewed, rolled or still valid; 1: the CA refused, or a key roll is not safe yet; 2: could not run (nothing written)."""
    from ..tls import acme, store_of

    inv = load(inventory, recipients=False, quiet=as_json)
    console = err if as_json else out
    store = store_of(inv.topology.cluster)
    try:
        outcomes = obtain(inv, renew, lab, say=lambda m: console.print(f"[dim]certs:[/dim] {m}"), roll_key=roll_key)
    except (acme.CaRefused, acme.RollNotDue) as exc:
        status = "refused" if isinstance(exc, acme.CaRefused) else "not rolled"
        err.print(f"[bold red]{status}:[/bold red] ", end="")
        err.print(str(exc), markup=False)
        run = Run("certs", inv.topology.cluster, [Result("mx", "certificate", status, False, detail=str(exc))], warnings=inv.warnings)
        if as_json:
            finish(run, as_json)
        raise typer.Exit(EXIT_PROBLEM) from None
    results = [
        Result(
            o.what,
            "certificate",
            o.status,
            True,
            changed=o.changed,
            detail=f"{', '.join(o.names)}; expires {o.not_after:%Y-%m-%d}; serial {o.serial:x}",
            data={"names": o.names, "not_after": o.not_after.isoformat(), "serial": f"{o.serial:x}", "key_sha256": o.key_sha256, "reason": o.reason},
        )
        for o in outcomes
    ]
    run = Run("certs", inv.topology.cluster, results, warnings=inv.warnings, summary={"store": str(store), "changed": any(o.changed for o in outcomes)})
    if not as_json:
        table = Table(title=f"Certificates of cluster {inv.topology.cluster} (store {store})", title_justify="left")
        for column in ("certificate", "status", "names", "expires", "serial", "why"):
            table.add_column(column, overflow="fold", no_wrap=column != "why")
        for o in outcomes:
            style = "yellow" if o.changed else "green"
            table.add_row(o.what, f"[{style}]{o.status}[/{style}]", ", ".join(o.names), f"{o.not_after:%Y-%m-%d}", f"{o.serial:x}", o.reason)
        out.print(table)
    if deploy and any(o.changed for o in outcomes):
        console.print("[dim]certs:[/dim] a certificate changed: deploying (reload, not restart)")
        _deploy(inventory, lab, as_json)
        return
    finish(run, as_json)


def obtain(inv, renew: bool, lab: bool, say, roll_key: bool = False):
    """`acme.run` for the inventory, or, with `lab`, against the lab's pebble and Knot: its root goes in the
    store's trust.pem, and a certificate from an earlier pebble (another root: the DNS container was made
    again) is renewed, since nothing would verify it."""
    from ..tls import acme, store_of

    store = store_of(inv.topology.cluster)
    if not lab:
        return acme.run(inv.topology, inv.directory, store, renew=renew, say=say, roll_key=roll_key)
    from .. import lab as lab_module

    overrides = lab_module.acme_overrides(inv)
    root = lab_module.acme_root(inv)
    trust = store / "trust.pem"
    if (store / "mx" / "chain.pem").exists() and (not trust.exists() or trust.read_bytes() != root):
        say("the lab's ACME server has a new root: renewing")
        renew = True
    outcomes = acme.run(inv.topology, inv.directory, store, renew=renew, overrides=overrides, say=say, roll_key=roll_key)
    acme.write_trust(store, root)
    return outcomes


def _deploy(inventory: Path, lab: bool, as_json: bool) -> None:
    """The normal deploy, as `mailforge deploy [--lab]` runs it: it ships the store's mx/ to the relays."""
    from .common import reach, render_for_hosts
    from .deploy import run_deploy

    inv, directory, manifest = render_for_hosts(inventory, None, tls=True)  # the certificate just obtained is checked like any other
    selected, reaches, accesses = reach(inv, lab, None, ansible=True)
    run_deploy(inv, directory, manifest, reaches, accesses, as_json=as_json)
