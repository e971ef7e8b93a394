"""The Typer applications: `mailforge` and its command groups `lab` and `dns`."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="mailforge",
    help="Provision Postfix relay/core mail clusters from one topology inventory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
lab_app = typer.Typer(help="A local lab: one container per inventory host, plus clients and a DNS server.", no_args_is_help=True)
dns_app = typer.Typer(help="The DNS a cluster needs: check it live, or print the records to publish.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")
app.add_typer(dns_app, name="dns")
