"""The Typer applications: `mailforge` and its command groups `lab`, `dns`, `dkim` and `queue`."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="mailforge",
    help="Provision Postfix relay/core mail clusters from one topology inventory.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
)
lab_app = typer.Typer(help="A local lab: one container per inventory host, plus clients and a DNS server.", no_args_is_help=True)
dns_app = typer.Typer(help="The DNS a cluster needs: check it live, or print the records to publish.", no_args_is_help=True)
dkim_app = typer.Typer(
    help="The DKIM keys the hosted domains' outbound mail is signed with: rotate to the next selector, show each selector's state.", no_args_is_help=True
)
queue_app = typer.Typer(help="Act on the Postfix queues of a cluster's hosts: flush, hold, release, delete; each says what it acted on.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")
app.add_typer(dns_app, name="dns")
app.add_typer(dkim_app, name="dkim")
app.add_typer(queue_app, name="queue")


def version_text() -> str:
    """mailforge's version and the Ansible and Python it runs with: what a bug report needs."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"mailforge {of('mailforge')} (ansible-core {of('ansible-core')}, Python {platform.python_version()})"


def _print_version(value: bool) -> None:
    if value:
        print(version_text())
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", help="Print mailforge's version (and ansible-core's, Python's) and exit.", callback=_print_version, is_eager=True
    ),
) -> None:
    """Provision Postfix relay/core mail clusters from one topology inventory."""
