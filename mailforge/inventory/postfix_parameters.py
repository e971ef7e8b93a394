"""Names of the main.cf parameters Postfix knows, so a typo is an error, not a silent no-op.

The list is `postconf -d` of Postfix 3.7 (Debian bookworm), shipped as data.
"""

from importlib.resources import files

POSTFIX_PARAMETERS: frozenset[str] = frozenset(files("mailforge").joinpath("data/postfix_parameters.txt").read_text().split())

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
