"""Names of the main.cf parameters Postfix knows, per Debian release, so a typo is an error, not a
silent no-op, and a parameter newer than a host's Postfix is refused for that host.

Each list is `postconf -d` of the Postfix that Debian release ships (3.10 on trixie, 3.7 on
bookworm), shipped as data: mailforge/data/postfix_parameters-<codename>.txt, written by
scripts/postfix-parameters in the lab image of that release.
"""

from importlib.resources import files

from .releases import RELEASES


def _parameters(codename: str) -> frozenset[str]:
    text = files("mailforge").joinpath(f"data/postfix_parameters-{codename}.txt").read_text()
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


# Release codename -> the parameter names of the Postfix it ships.
PARAMETERS_BY_RELEASE: dict[str, frozenset[str]] = {codename: _parameters(codename) for codename in RELEASES}
# Every name some supported Postfix knows: what a typo is measured against.
POSTFIX_PARAMETERS: frozenset[str] = frozenset().union(*PARAMETERS_BY_RELEASE.values())

# Parameters the inventory may not override: they decide who may relay and whom postscreen trusts.
GUARDED_PARAMETERS: frozenset[str] = frozenset(
    {
        "mynetworks",
        "mynetworks_style",
        "relay_domains",
        "relay_recipient_maps",
        "transport_maps",
        "smtpd_relay_restrictions",
        "smtpd_recipient_restrictions",
        "postscreen_upstream_proxy_protocol",
        "postscreen_access_list",
        "inet_interfaces",
        "mydestination",
        "local_transport",
    }
)
