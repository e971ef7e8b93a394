"""main.cf and master.cf of every Postfix instance: relays, postmulti instances, cores.

Decisions are made here, in Python; the templates only lay parameters and
services out.  Restriction lists follow one rule: nothing that could permit
comes before `reject_unauth_destination`, so no list of checks can open a relay.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..inventory import Core, Relay, Topology
from ..inventory.roles import DEFAULT_INSTANCE, INBOUND_INSTANCE, OUTBOUND_INSTANCE
from ..tls import HOST_CERT, HOST_INTERNAL_CA, HOST_MX
from . import dkim, maps, outbound
from .files import POSTFIX_RELOAD, POSTMAP, Pieces, RenderedFile, header, template

Value = str | list[str]
Section = tuple[str, list[tuple[str, Value]]]
MapEntry = tuple[str | Pieces, str, str]  # (text, action, Postfix table type)

LOOPBACK = "127.0.0.0/8 [::1]/128"

# The relays' queue timing (seconds), sized for a private next hop, the cores (see relay_instance);
# policy.main_cf may override each. Only the relays and an MX proxy's inbound instance have them:
# the cores and the outbound instance send to the Internet and keep Postfix's defaults.
RELAY_RETRIES = {"queue_run_delay": 10, "minimal_backoff_time": 10, "maximal_backoff_time": 60}


def backlog_bound(retries: dict[str, int] = RELAY_RETRIES) -> int:
    """Seconds within which a relay tries its queued mail again once a core answers: a message may
    just have been deferred for up to maximal_backoff_time; the destination may just have been
    marked dead (minimal_backoff_time), and the deferred queue is looked at every queue_run_delay."""
    return retries["maximal_backoff_time"] + retries["minimal_backoff_time"] + retries["queue_run_delay"]


@dataclass(frozen=True)
class Service:
    """One master.cf entry; `args` are its -o lines."""

    name: str
    type: str
    private: str = "-"
    unpriv: str = "-"
    chroot: str = "n"
    wakeup: str = "-"
    maxproc: str = "-"
    command: str = ""
    args: tuple[str, ...] = ()


# Debian's stock services, chroot off so that every instance resolves and logs without copying /etc into its queue.
_STANDARD_SERVICES = [
    Service("pickup", "unix", "n", wakeup="60", maxproc="1", command="pickup"),
    Service("cleanup", "unix", "n", maxproc="0", command="cleanup"),
    Service("qmgr", "unix", "n", wakeup="300", maxproc="1", command="qmgr"),
    Service("tlsmgr", "unix", wakeup="1000?", maxproc="1", command="tlsmgr"),
    Service("rewrite", "unix", command="trivial-rewrite"),
    Service("bounce", "unix", maxproc="0", command="bounce"),
    Service("defer", "unix", maxproc="0", command="bounce"),
    Service("trace", "unix", maxproc="0", command="bounce"),
    Service("verify", "unix", maxproc="1", command="verify"),
    Service("flush", "unix", "n", wakeup="1000?", maxproc="0", command="flush"),
    Service("proxymap", "unix", command="proxymap"),
    Service("proxywrite", "unix", maxproc="1", command="proxymap"),
    Service("smtp", "unix", command="smtp"),
    Service("relay", "unix", command="smtp", args=("-o syslog_name=${multi_instance_name?{$multi_instance_name}:{postfix}}/$service_name",)),
    Service("showq", "unix", "n", command="showq"),
    Service("error", "unix", command="error"),
    Service("retry", "unix", command="error"),
    Service("discard", "unix", command="discard"),
    Service("local", "unix", unpriv="n", command="local"),
    Service("virtual", "unix", unpriv="n", command="virtual"),
    Service("lmtp", "unix", command="lmtp"),
    Service("anvil", "unix", maxproc="1", command="anvil"),
    Service("scache", "unix", maxproc="1", command="scache"),
    Service("postlog", "unix-dgram", "n", maxproc="1", command="postlogd"),
]


@dataclass
class PostfixInstance:
    """The files of one Postfix instance, keyed by file name inside its config directory."""

    config_directory: str
    sections: list[Section]
    services: list[Service]
    maps: dict[str, MapEntry] = field(default_factory=dict)  # name -> (text, action, Postfix table type)

    def path(self, name: str) -> str:
        return f"{self.config_directory}/{name}"

    def files(self, cluster: str) -> dict[str, RenderedFile]:
        result = {
            self.path("main.cf"): RenderedFile(
                template("etc/postfix/main.cf", header=header(cluster), sections=self.sections), POSTFIX_RELOAD, config_directory=self.config_directory
            ),
            self.path("master.cf"): RenderedFile(
                template("etc/postfix/master.cf", header=header(cluster), services=self.services), POSTFIX_RELOAD, config_directory=self.config_directory
            ),
        }
        for name, (text, action, table_type) in sorted(self.maps.items()):
            result[self.path(name)] = RenderedFile(text, action, config_directory=self.config_directory, table_type=table_type)
        return result


_WELL_KNOWN_SERVICES = {25: "smtp", 587: "submission"}


def _port_service(port: int) -> str:
    return _WELL_KNOWN_SERVICES.get(port, str(port))


def _uses_ipv6(*addresses: str) -> bool:
    return any(ipaddress.ip_network(a, strict=False).version == 6 for a in addresses)


TLS_PROTOCOLS = ">=TLSv1.2"


def _tls_presenting(chain_file: str) -> list[tuple[str, Value]]:
    """What every Postfix that takes mail presents: one key+chain file (`tls.material` ships it), TLS 1.2 and newer."""
    return [
        ("smtpd_tls_chain_files", chain_file),
        ("smtpd_tls_security_level", "may"),
        ("smtpd_tls_protocols", TLS_PROTOCOLS),
        ("smtpd_tls_mandatory_protocols", TLS_PROTOCOLS),
        ("smtpd_tls_loglevel", "1"),
    ]


def _tls_public(cfg: str) -> list[tuple[str, Value]]:
    """A relay (or an MX proxy's inbound instance): the MX certificate to the world; to the cores,
    TLS that must verify against the private CA and name the core (`maps.tls_policy`), never in clear."""
    return _tls_presenting(HOST_MX) + [
        ("smtp_tls_security_level", "may"),
        ("smtp_tls_policy_maps", f"texthash:{cfg}/tls_policy"),
        ("smtp_tls_CAfile", HOST_INTERNAL_CA),
        ("smtp_tls_loglevel", "1"),
    ]


def _tls_own(t: Topology) -> list[tuple[str, Value]]:
    """A core or an MX proxy's outbound instance: its own fqdn's certificate from the private CA;
    delivery to the Internet stays opportunistic."""
    return _tls_presenting(HOST_CERT) + [("smtp_tls_security_level", "may")]


def _sending_out(t: Topology, tls: list[tuple[str, Value]]) -> list[tuple[str, Value]]:
    """`tls` with the outbound settings of `tls.outbound` (DANE, MTA-STS) for a host that delivers to
    the Internet: each replaces its parameter in place (a second line would make postconf warn), and
    a policy map already there (an internal hop's exact matches) stays first, before the MTA-STS
    socketmap. Unchanged without tls.outbound."""
    result = list(tls)
    for name, value in outbound.postfix_settings(t):
        at = next((i for i, (key, _) in enumerate(result) if key == name), None)
        if at is None:
            result.append((name, value))
        elif name == "smtp_tls_policy_maps":
            before = result[at][1]
            result[at] = (name, [*(before if isinstance(before, list) else [before]), value])
        else:
            result[at] = (name, value)
    return result


def _dkim_section(t: Topology) -> list[Section]:
    """The milter of a host that sends to the Internet, with topology.dkim (`render.dkim`); [] without."""
    settings: list[tuple[str, Value]] = list(dkim.postfix_settings(t))
    return [("DKIM: OpenDKIM signs every message; none leaves unsigned while it is down", settings)] if settings else []


def _identity(fqdn: str, inet_interfaces: str, ipv6: bool) -> list[tuple[str, Value]]:
    return [
        ("compatibility_level", "3.6"),
        ("myhostname", fqdn),
        ("myorigin", "$myhostname"),
        ("smtpd_banner", "$myhostname ESMTP"),
        ("inet_interfaces", inet_interfaces),
        ("inet_protocols", "all" if ipv6 else "ipv4"),
        ("biff", "no"),
        ("append_dot_mydomain", "no"),
        ("readme_directory", "no"),
    ]


def _no_local_delivery(role: str) -> list[tuple[str, Value]]:
    return [
        ("mydestination", ""),
        ("local_recipient_maps", ""),
        ("local_transport", f"error:5.1.1 local delivery is disabled on this {role}"),
        ("alias_maps", ""),
        ("alias_database", ""),
    ]


def _overrides(t: Topology, sections: list[Section]) -> list[Section]:
    """Apply policy.main_cf: replace a parameter where it stands, else add it at the end."""
    extra = {name: ("yes" if value is True else "no" if value is False else str(value)) for name, value in t.policy.main_cf.items()}
    if not extra:
        return sections
    result = []
    for title, params in sections:
        result.append((title, [(name, extra.pop(name, value)) for name, value in params]))
    if extra:
        result.append(("Site settings from policy.main_cf", sorted(extra.items())))
    return result


def relay_instance(
    t: Topology,
    relay: Relay,
    cores: list[Core],
    *,
    config_directory: str = DEFAULT_INSTANCE,
    port: int | None = None,
    inet_interfaces: str = "all",
    instance: list[tuple[str, Value]] | None = None,
    recipients=None,
    recipients_map: Pieces | None = None,
) -> PostfixInstance:
    """A public relay: accepts mail for listed recipients of the hosted domains, forwards it to the cores."""
    policy = t.policy
    cfg = config_directory
    behind_proxy = t.proxy_protocol != "none" and instance is None
    port = port or t.backend_port
    map_type = policy.map_type
    has_recipients = recipients is not None

    checks: list[str] = [
        "permit_mynetworks",
        "reject_unauth_destination",
        "reject_unauth_pipelining",
        "reject_invalid_helo_hostname",
        "reject_non_fqdn_helo_hostname",
    ]
    if policy.reject_forged_helo:
        checks.append(f"check_helo_access {map_type}:{cfg}/helo_access")
    checks += ["reject_non_fqdn_sender", "reject_non_fqdn_recipient", "reject_unknown_sender_domain"]
    if policy.reject_forged_senders:
        checks.append(f"check_sender_access {map_type}:{cfg}/sender_access")
    checks.append("reject_unlisted_recipient")
    checks += [f"reject_rbl_client {zone}" for zone in policy.rbl_clients]
    checks += [f"reject_rhsbl_sender {zone}" for zone in policy.rhsbl_senders]
    checks.append("permit")

    routing: list[tuple[str, Value]] = [
        ("mynetworks", LOOPBACK),
        ("relay_domains", f"{map_type}:{cfg}/relay_domains"),
        ("relay_recipient_maps", f"{map_type}:{cfg}/relay_recipients" if has_recipients else ""),
        ("transport_maps", f"{map_type}:{cfg}/transport"),
        # Only the listed domains themselves, never their subdomains, are relayed or routed.
        ("parent_domain_matches_subdomains", "debug_peer_list smtpd_access_maps"),
    ]
    # While every core is down, the relays queue the mail; once one answers again, Postfix's own
    # clock decides when the backlog goes. qmgr retries a deferred message no earlier than its age
    # (between minimal_backoff_time and maximal_backoff_time) after the last try, looks at the
    # deferred queue every queue_run_delay, and after failures marks the destination dead (no try
    # at all) for minimal_backoff_time. Postfix's defaults (300s, 4000s, 300s), sized for strangers
    # on the Internet, leave a backlog waiting up to an hour after the core is back. The cores are
    # a private next hop of this cluster: a try costs a connection on the local network, so these
    # settings bound the wait (`backlog_bound`), with nobody flushing by hand.
    retries: list[tuple[str, Value]] = [(name, f"{seconds}s") for name, seconds in RELAY_RETRIES.items()]
    hardening: list[tuple[str, Value]] = [
        ("smtpd_helo_required", "yes"),
        ("strict_rfc821_envelopes", "yes"),
        ("disable_vrfy_command", "yes"),
        ("smtpd_delay_reject", "yes"),
        ("smtpd_forbid_bare_newline", "normalize"),
        ("unknown_local_recipient_reject_code", "550"),
        ("unknown_relay_recipient_reject_code", "550"),
        ("unknown_address_reject_code", "554"),
        ("unknown_hostname_reject_code", "554"),
        ("unknown_client_reject_code", "554"),
        ("relay_domains_reject_code", "554"),
        ("message_size_limit", str(policy.message_size_limit)),
        ("smtpd_relay_restrictions", ["permit_mynetworks", "reject_unauth_destination"]),
        ("smtpd_recipient_restrictions", checks),
        ("smtpd_data_restrictions", ["reject_unauth_pipelining", "reject_multi_recipient_bounce"]),
    ]
    if policy.header_checks:
        hardening.append(("header_checks", f"regexp:{cfg}/header_checks"))

    sections: list[Section] = []
    if instance:
        sections.append(("This instance, as postmulti manages it", instance))
    ipv6 = _uses_ipv6(relay.address, *(c.address for c in cores))
    sections += [
        ("Identity", _identity(relay.fqdn, inet_interfaces, ipv6)),
        ("No local delivery: a relay only forwards", _no_local_delivery("relay")),
        ("What is relayed, for whom, and to which core", routing),
        ("Retries to the cores: a private next hop, tried again soon after it answers", retries),
        ("Checks of a public relay", hardening),
    ]
    if behind_proxy:
        sections.append(
            (
                "postscreen takes connections from the load balancer, PROXY header first",
                [
                    ("postscreen_upstream_proxy_protocol", "haproxy"),
                    ("postscreen_upstream_proxy_timeout", "5s"),
                    ("postscreen_access_list", ["permit_mynetworks", f"cidr:{cfg}/postscreen_access.cidr"]),
                    ("postscreen_greet_action", "enforce"),
                ],
            )
        )
    sections.append(("TLS: the MX certificate inbound; to the cores only verified TLS", _tls_public(cfg)))
    sections = _overrides(t, sections)

    if behind_proxy:
        front = [
            Service(_port_service(port), "inet", "n", maxproc="1", command="postscreen"),
            Service("smtpd", "pass", command="smtpd"),
            Service("dnsblog", "unix", maxproc="0", command="dnsblog"),
            Service("tlsproxy", "unix", maxproc="0", command="tlsproxy"),
        ]
    else:
        front = [Service(_port_service(port), "inet", "n", command="smtpd")]

    instance_maps: dict[str, MapEntry] = {
        "relay_domains": (maps.relay_domains(t), POSTMAP, map_type),
        "transport": (maps.transport(t, cores), POSTMAP, map_type),
        "tls_policy": (maps.tls_policy(t, cores), POSTFIX_RELOAD, "texthash"),
    }
    if has_recipients:
        # One map object for every relay (`recipients_map`, made once by `render`): written and hashed once.
        instance_maps["relay_recipients"] = (recipients_map or maps.relay_recipients(t, recipients), POSTMAP, map_type)
    if policy.reject_forged_helo:
        names = [r.fqdn for r in t.relays] + [lb.fqdn for lb in t.load_balancers if lb.fqdn]
        addresses = [r.address for r in t.relays] + [lb.address for lb in t.load_balancers if lb.address]
        instance_maps["helo_access"] = (maps.helo_access(t, names, addresses), POSTMAP, map_type)
    if policy.reject_forged_senders:
        instance_maps["sender_access"] = (maps.sender_access(t), POSTMAP, map_type)
    if policy.header_checks:
        instance_maps["header_checks"] = (maps.header_checks(t), POSTFIX_RELOAD, "regexp")
    if behind_proxy:
        instance_maps["postscreen_access.cidr"] = (maps.postscreen_access(t), POSTFIX_RELOAD, "cidr")
    return PostfixInstance(cfg, sections, front + _STANDARD_SERVICES, instance_maps)


def multi_instance_settings(name: str) -> list[tuple[str, Value]]:
    """What `postmulti -I NAME -G mta -e create` would set, made explicit and reproducible."""
    return [
        ("queue_directory", f"/var/spool/{name}"),
        ("data_directory", f"/var/lib/{name}"),
        ("multi_instance_name", name),
        ("multi_instance_group", "mta"),
        ("multi_instance_enable", "yes"),
        ("master_service_disable", ""),
        ("authorized_submit_users", ""),
        ("syslog_name", name),
    ]


def mx_proxy_instances(t: Topology, relay: Relay, cores: list[Core], recipients, recipients_map: Pieces | None = None) -> list[PostfixInstance]:
    """The postmulti layout: default instance on loopback, postfix-inbound, postfix-outbound."""
    instances: list[PostfixInstance] = []
    names = []
    assert relay.instances is not None  # render() calls this only for a relay with instances
    if relay.instances.inbound:
        inbound = relay_instance(
            t,
            relay,
            cores,
            config_directory=INBOUND_INSTANCE,
            port=relay.instances.inbound.port,
            inet_interfaces=relay.address,
            instance=multi_instance_settings("postfix-inbound"),
            recipients=recipients,
            recipients_map=recipients_map,
        )
        instances.append(inbound)
        names.append(INBOUND_INSTANCE)
    if relay.instances.outbound:
        outbound = relay.instances.outbound
        sections: list[Section] = [
            ("This instance, as postmulti manages it", multi_instance_settings("postfix-outbound")),
            ("Identity", _identity(relay.fqdn, relay.address, _uses_ipv6(relay.address, *outbound.trusted_networks))),
            ("No local delivery: this instance only sends out", _no_local_delivery("outbound instance")),
            (
                "Only the trusted networks may send, and only through here",
                [
                    ("mynetworks", " ".join([LOOPBACK, *outbound.trusted_networks])),
                    ("relay_domains", ""),
                    ("smtpd_client_restrictions", ["permit_mynetworks", "reject"]),
                    ("smtpd_relay_restrictions", ["permit_mynetworks", "reject"]),
                    ("smtpd_recipient_restrictions", ["permit_mynetworks", "reject"]),
                    ("disable_vrfy_command", "yes"),
                    ("smtpd_helo_required", "yes"),
                    ("message_size_limit", str(t.policy.message_size_limit)),
                ],
            ),
            ("TLS", _sending_out(t, _tls_own(t))),
        ]
        sections += _dkim_section(t)
        submission = Service(_port_service(outbound.port), "inet", "n", command="smtpd", args=("-o syslog_name=postfix-outbound/submission",))
        instances.append(PostfixInstance(OUTBOUND_INSTANCE, sections, [submission] + _STANDARD_SERVICES))
        names.append(OUTBOUND_INSTANCE)

    default_sections: list[Section] = [
        (
            "postmulti: this default instance manages the others",
            [
                ("multi_instance_enable", "yes"),
                ("multi_instance_wrapper", "${command_directory}/postmulti -p --"),
                ("multi_instance_directories", " ".join(names)),
            ],
        ),
        ("Identity", _identity(relay.fqdn, "loopback-only", False)),
        (
            "Local mail of this host only",
            [
                ("mydestination", "$myhostname, localhost.localdomain, localhost"),
                ("mynetworks", LOOPBACK),
                ("alias_maps", "hash:/etc/aliases"),
                ("alias_database", "hash:/etc/aliases"),
                ("smtpd_relay_restrictions", ["permit_mynetworks", "reject_unauth_destination"]),
            ],
        ),
    ]
    loopback_smtp = Service("smtp", "inet", "n", command="smtpd")
    return [PostfixInstance(DEFAULT_INSTANCE, default_sections, [loopback_smtp] + _STANDARD_SERVICES)] + instances


def core_instance(t: Topology, core: Core, recipients) -> PostfixInstance:
    """A hidden core: takes mail from the relays (and users' outbound mail), delivers it to Maildirs."""
    cfg = DEFAULT_INSTANCE
    sections: list[Section] = [
        ("Identity", _identity(core.fqdn, "all", _uses_ipv6(core.address, *core.user_networks, *(r.address for r in t.relays)))),
        (
            "Delivery: one Maildir per recipient under /var/mail/vhosts",
            [
                ("mydestination", "$myhostname, localhost.localdomain, localhost"),
                ("alias_maps", "hash:/etc/aliases"),
                ("alias_database", "hash:/etc/aliases"),
                ("virtual_mailbox_domains", " ".join(sorted(t.domains))),
                ("virtual_mailbox_maps", f"{t.policy.map_type}:{cfg}/virtual_mailboxes"),
                ("virtual_mailbox_base", "/var/mail/vhosts"),
                ("virtual_uid_maps", "static:8"),
                ("virtual_gid_maps", "static:8"),
                ("virtual_minimum_uid", "8"),
                ("virtual_mailbox_limit", str(t.policy.message_size_limit)),
                ("message_size_limit", str(t.policy.message_size_limit)),
            ],
        ),
        (
            "Who may hand mail over: the relays, and the user networks for outbound mail",
            [
                ("mynetworks", " ".join([LOOPBACK, *core.user_networks])),
                ("smtpd_client_restrictions", ["permit_mynetworks", f"check_client_access cidr:{cfg}/relay_clients.cidr", "reject"]),
                ("smtpd_relay_restrictions", ["permit_mynetworks", "reject_unauth_destination"]),
                ("smtpd_recipient_restrictions", ["permit_mynetworks", "reject_unauth_destination", "reject_unlisted_recipient", "permit"]),
                ("smtpd_helo_required", "yes"),
                ("disable_vrfy_command", "yes"),
            ],
        ),
        ("TLS: this core's own certificate; the relays must use it (relay_clients.cidr)", _sending_out(t, _tls_own(t))),
    ]
    sections += _dkim_section(t)
    services = [Service("smtp", "inet", "n", command="smtpd")] + _STANDARD_SERVICES
    core_maps: dict[str, MapEntry] = {
        "virtual_mailboxes": (maps.virtual_mailboxes(t, recipients), POSTMAP, t.policy.map_type),
        "relay_clients.cidr": (maps.relay_clients(t), POSTFIX_RELOAD, "cidr"),
    }
    return PostfixInstance(cfg, sections, services, core_maps)
