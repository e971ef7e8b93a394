"""The checks across keys of a topology, each a named function: what the schema alone cannot see.

They run over a possibly partial topology (see `partial.py`), so every problem is found at once.
Each check yields problems; a `Finding` marks the ones that are only warnings. `run` keeps them in
the order they are listed here, which is the order the CLI prints within a line.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

from ..errors import Problem
from . import header_checks as header_check_syntax
from .model import Acme, Dkim, Dmarc, DnsUpdate, LdapSource, Monitoring, Recipients, Tls, Topology
from .partial import identified, present
from .positions import Located, format_path
from .postfix_parameters import GUARDED_PARAMETERS, PARAMETERS_BY_RELEASE, POSTFIX_PARAMETERS
from .releases import DEFAULT_RELEASE, RELEASES, DebianRelease


@dataclass(frozen=True)
class Finding:
    problem: Problem
    warning: bool = False


Check = Callable[[Topology, Located], Iterator[Finding]]


def _error(source: Located, path: tuple, message: str, expected: str) -> Finding:
    return Finding(source.problem(path, message, expected))


def _warning(source: Located, path: tuple, message: str, expected: str) -> Finding:
    return Finding(source.problem(path, message, expected), warning=True)


def names_are_unique(t: Topology, source: Located) -> Iterator[Finding]:
    """Host names, addresses, fqdns and hosted domains: each used once."""

    def seen_once(items, label):
        first: dict[str, tuple] = {}
        for path, value in items:
            if value in first:
                yield _error(source, path, f"duplicate {label} {value!r}, already used at {format_path(first[value])}", f"a unique {label}")
            else:
                first[value] = path

    hosts = (
        [(("load_balancers", i), lb) for i, lb in identified(t.load_balancers)]
        + [(("relays", i), r) for i, r in identified(t.relays)]
        + [(("cores", i), c) for i, c in identified(t.cores)]
    )
    yield from seen_once([(p + ("name",), h.name) for p, h in hosts if h.name], "host name")
    yield from seen_once([(p + ("address",), h.address) for p, h in hosts if getattr(h, "address", None)], "address")
    yield from seen_once([(p + ("fqdn",), h.fqdn) for p, h in hosts if getattr(h, "fqdn", None)], "fqdn")
    yield from seen_once([(("domains", i), d) for i, d in present(t.domains)], "domain")


def relays_have_a_core(t: Topology, source: Located) -> Iterator[Finding]:
    if not t.cores and "cores" not in source.keys.get((), ()) and t.relays:
        yield _error(source, ("relays",), "relays have no core to forward mail to", "at least one entry under 'cores'")


def balancers_are_usable(t: Topology, source: Located) -> Iterator[Finding]:
    """A PROXY-speaking balancer names the relays' port; a managed one has an address; an external one
    says where its connections come from; all balancers agree; and hiding the client is a warning."""
    balancers = present(t.load_balancers)
    for i, lb in balancers:
        path = ("load_balancers", i)
        if lb.proxy_protocol != "none" and lb.backend_port is None:
            yield _error(
                source,
                path + ("proxy_protocol",),
                f"balancer {lb.name!r} speaks PROXY {lb.proxy_protocol} but names no relay port for it",
                "backend_port: the port the relays' postscreen listens on for this balancer, e.g. 10024",
            )
        if not lb.external and lb.address is None:
            yield _error(source, path, f"managed balancer {lb.name!r} has no address", "address: the balancer's IP address")
        if lb.external and not (lb.address or lb.source_networks):
            yield _error(
                source,
                path,
                f"external balancer {lb.name!r} gives no address or source_networks, so the relays could not tell it from anyone else",
                "source_networks: the networks its connections come from",
            )
        if lb.rotation is not None and not lb.external:
            yield _error(
                source,
                path + ("rotation",),
                f"managed balancer {lb.name!r} has rotation hooks, but mailforge drains its relays itself through HAProxy's admin socket",
                "rotation only under an external balancer (external: true); remove it here",
            )
        if lb.proxy_protocol == "none":
            yield _warning(
                source,
                path + ("proxy_protocol",),
                f"balancer {lb.name!r} hides the client's address: RBL checks and logs on the relays only see the balancer",
                "proxy_protocol: v1 or v2",
            )
        first = balancers[0][1]
        if lb is not first and (lb.proxy_protocol, lb.backend_port) != (first.proxy_protocol, first.backend_port):
            yield _error(
                source,
                path,
                f"balancer {lb.name!r} differs from {first.name!r} in proxy_protocol or backend_port",
                "every balancer to use the same proxy_protocol and backend_port",
            )


def balancers_have_a_name_for_mx(t: Topology, source: Located) -> Iterator[Finding]:
    """Behind a balancer the relays take mail only from it, so the MX records must name a balancer:
    without any balancer fqdn, `dns zone` can publish no MX (a warning: the cluster itself works)."""
    balancers = [lb for _, lb in present(t.load_balancers)]
    if balancers and all(lb.name for lb in balancers) and t.domains and all(t.domains) and not any(lb.fqdn for lb in balancers):
        from .roles import suggested_mx_name

        lb = balancers[0]
        port = lb.backend_port or 25
        yield _warning(
            source,
            ("load_balancers", 0),
            f"balancer {lb.name!r} has no fqdn, so `mailforge dns zone` can publish no MX record: the relays take mail only from the balancer "
            f"(port {port}{'' if lb.proxy_protocol == 'none' else ', PROXY ' + lb.proxy_protocol}), so they cannot be MX",
            f"fqdn: the name the MX records give the balancer, resolving to its address, e.g. fqdn: {suggested_mx_name(t)}",
        )


def recipients_name_a_source(t: Topology, source: Located) -> Iterator[Finding]:
    spec = getattr(t, "recipients", None)
    if (
        isinstance(spec, Recipients)
        and not (spec.local_parts_file or spec.addresses_file or spec.addresses or spec.csv or spec.ldap)
        and not any((cast(dict, source.data).get("recipients") or {}).get(key) is not None for key in ("csv", "ldap"))  # a mapping: load checked
    ):  # given but invalid: reported already
        yield _error(
            source,
            ("recipients",),
            "names no source, so the relays would refuse every recipient",
            "local_parts_file, addresses_file, addresses, csv or ldap; or leave recipients out to accept any local part",
        )


def ldap_settings_agree(t: Topology, source: Located) -> Iterator[Finding]:
    """One password source, a bind DN with a password and a password with a bind DN, StartTLS only on ldap://."""
    spec = getattr(t, "recipients", None)
    ldap = spec.ldap if isinstance(spec, Recipients) else None
    if not isinstance(ldap, LdapSource):
        return
    path = ("recipients", "ldap")
    if ldap.password_env and ldap.password_file:
        yield _error(source, path + ("password_file",), "both password_env and password_file are given", "one of them")
    if getattr(ldap, "bind_dn", None) and not any(path + (key,) in source.keys for key in ("password_env", "password_file", "password")):
        yield _error(
            source,
            path + ("bind_dn",),
            f"binding as {ldap.bind_dn!r} needs a password, and none is named",
            "password_env: a variable holding it, or password_file: a file holding it",
        )
    if not getattr(ldap, "bind_dn", None) and (ldap.password_env or ldap.password_file) and ("recipients", "ldap", "bind_dn") not in source.keys:
        yield _error(
            source,
            path + ("password_env" if ldap.password_env else "password_file",),
            "a password is named but no bind_dn to use it with",
            "bind_dn: the DN to bind as; or no password for an anonymous search",
        )
    if ldap.start_tls and str(getattr(ldap, "uri", "")).lower().startswith("ldaps:"):
        yield _error(source, path + ("start_tls",), "start_tls on an ldaps:// URI, which is already TLS", "start_tls: false, or an ldap:// URI")


def instances_are_usable(t: Topology, source: Located) -> Iterator[Finding]:
    """postmulti instances on distinct ports, at least one of them, and never behind a balancer."""
    for i, relay in present(t.relays):
        instances = relay.instances
        if instances and instances.inbound and instances.outbound and instances.inbound.port == instances.outbound.port:
            yield _error(
                source,
                ("relays", i, "instances", "outbound", "port"),
                f"port {instances.outbound.port} is already the inbound instance's",
                "a different port for each instance, e.g. 25 and 587",
            )
        if relay.instances and t.load_balancers:
            yield _error(
                source,
                ("relays", i, "instances"),
                f"relay {relay.name!r} runs postmulti instances behind a load balancer, which mailforge does not support",
                "either instances or load_balancers, not both",
            )
        if relay.instances and not relay.instances.inbound and not relay.instances.outbound:
            yield _error(source, ("relays", i, "instances"), "no instance is defined", "inbound, outbound or both")


def no_open_relay_networks(t: Topology, source: Located) -> Iterator[Finding]:
    """A network allowed to relay that covers a large part of the Internet makes an open relay."""

    def guard_open(path, network, what):
        net = ipaddress.ip_network(network)
        if net.prefixlen < (8 if net.version == 4 else 16):
            yield _error(
                source,
                path,
                f"{what} {network} covers a large part of the Internet and would make this host an open relay",
                "the networks of your own users only",
            )

    for i, core in present(t.cores):
        for j, net in enumerate(core.user_networks):
            yield from guard_open(("cores", i, "user_networks", j), net, "user network")
    for i, relay in present(t.relays):
        if relay.instances and relay.instances.outbound:
            for j, net in enumerate(relay.instances.outbound.trusted_networks):
                yield from guard_open(("relays", i, "instances", "outbound", "trusted_networks", j), net, "trusted network")


def header_checks_are_sound(t: Topology, source: Located) -> Iterator[Finding]:
    """Each pattern is a Postfix regexp, matches its own example, and has a Postfix action."""
    for i, check in present(t.policy.header_checks):
        path = ("policy", "header_checks", i)
        error = header_check_syntax.pattern_error(check.match)
        if error:
            yield _error(source, path + ("match",), error, "a Postfix regexp pattern such as /^Subject: =\\?big5\\?/")
        if error is None and check.example and not header_check_syntax.matches(check.match, check.example):
            yield _error(
                source,
                path + ("example",),
                f"the pattern {check.match} does not match its example {check.example!r}",
                "an example header line the pattern matches",
            )
        error = header_check_syntax.action_error(check.action)
        if error:
            yield _error(source, path + ("action",), error, "an action such as 'REJECT reason', 'WARN', 'DISCARD' or 'HOLD'")


def main_cf_parameters_exist(t: Topology, source: Located) -> Iterator[Finding]:
    """Extra main.cf parameters: the Postfix of every relay knows them (each relay's Debian release
    decides its Postfix), and none decides who may relay."""
    default = t.debian_release if t.debian_release in RELEASES else DEFAULT_RELEASE
    release_of = {relay.name: RELEASES.get(relay.debian_release or default, RELEASES[default]) for _, relay in present(t.relays)}
    for name, value in t.policy.main_cf.items():
        path = ("policy", "main_cf", name)
        if name in GUARDED_PARAMETERS:
            yield _error(
                source,
                path,
                f"{name!r} is set by mailforge from the topology and may not be overridden (it decides who may relay)",
                "the topology keys: domains, recipients, load_balancers, cores, instances",
            )
        elif name not in POSTFIX_PARAMETERS:
            hint = difflib.get_close_matches(name, POSTFIX_PARAMETERS, n=1)
            yield _error(
                source, path, f"{name!r} is not a Postfix parameter" + (f"; did you mean {hint[0]!r}?" if hint else ""), "a parameter name that postconf knows"
            )
        else:
            yield from _parameter_on_every_release(source, path, name, release_of)
        if any(c in str(value) for c in "\r\n"):
            yield _error(source, path, "value spans lines", "a single-line value")


def _parameter_on_every_release(source: Located, path: tuple, name: str, release_of: dict[str, DebianRelease]) -> Iterator[Finding]:
    """One problem per Debian release whose Postfix lacks the parameter, naming the relays that run it."""
    lacking: dict[DebianRelease, list[str]] = {}
    for relay, release in release_of.items():
        if name not in PARAMETERS_BY_RELEASE[release.codename]:
            lacking.setdefault(release, []).append(relay)
    knowing = [r for r in RELEASES.values() if name in PARAMETERS_BY_RELEASE[r.codename]]
    for release, relays in lacking.items():
        which = ", ".join(relays)
        one = len(relays) == 1
        yield _error(
            source,
            path,
            f"{name!r} is a parameter of Postfix {' and '.join(r.postfix for r in knowing)}; {'relay' if one else 'relays'} {which} "
            f"{'runs' if one else 'run'} Postfix {release.postfix} (debian_release: {release.codename}, Debian {release.version}), which does not know it",
            f"policy.main_cf without {name}, or {which} upgraded to "
            + " or ".join(f"{r.codename} (Debian {r.version})" for r in knowing)
            + f" and {'its' if one else 'their'} debian_release set to match",
        )


def metrics_ports_are_free(t: Topology, source: Located) -> Iterator[Finding]:
    """Each exporter gets a port no mail service or SSH already has on its host: HAProxy's on every
    managed balancer, and the Postfix exporters' consecutive ports (one per instance) on every relay
    and core; and no monitoring network covers a large part of the Internet (a warning)."""
    monitoring = getattr(t, "monitoring", None)
    if not isinstance(monitoring, Monitoring):
        return
    ssh = t.firewall.ssh_port
    haproxy_port, postfix_port = getattr(monitoring, "haproxy_exporter_port", None), getattr(monitoring, "postfix_exporter_port", None)
    if isinstance(haproxy_port, int):
        for _, lb in present(t.load_balancers):
            taken = {lb.frontend_port: "its SMTP frontend", ssh: "SSH"}
            if not lb.external and haproxy_port in taken:
                yield _error(
                    source,
                    ("monitoring", "haproxy_exporter_port"),
                    f"port {haproxy_port} is already {taken[haproxy_port]} on balancer {lb.name!r}",
                    f"a port for HAProxy's exporter other than {' and '.join(str(p) for p in sorted(taken))}, e.g. 8405",
                )
    if not isinstance(postfix_port, int):
        return
    hosts = [
        (r.name, _mail_ports(t, r), 1 + (r.instances.inbound is not None) + (r.instances.outbound is not None) if r.instances else 1)
        for _, r in present(t.relays)
    ]
    hosts += [(c.name, [25], 1) for _, c in present(t.cores)]
    for name, mail_ports, instances in hosts:
        exporter_ports = range(postfix_port, postfix_port + instances)
        taken = {port: f"its mail port {port}" for port in mail_ports} | {ssh: f"the SSH port {ssh}"}
        clash = [taken[p] for p in exporter_ports if p in taken]
        if not clash and exporter_ports[-1] <= 65535:
            continue
        why = f"{'already' if instances == 1 else 'which include'} {' and '.join(clash)}" if clash else "beyond 65535"
        if instances == 1:
            message, expected = f"the Postfix exporter of {name!r} would take port {postfix_port}, {why}", "another port, e.g. 9154"
        else:
            message = f"the Postfix exporters of {name!r} would take ports {postfix_port}-{exporter_ports[-1]} (one per Postfix instance), {why}"
            expected = f"a port whose next {instances - 1} ports are free too, e.g. 9154"
        yield _error(source, ("monitoring", "postfix_exporter_port"), message, expected)
    for j, net in enumerate(getattr(monitoring, "networks", None) or []):
        network = ipaddress.ip_network(net)
        if network.prefixlen < (8 if network.version == 4 else 16):
            yield _warning(
                source,
                ("monitoring", "networks", j),
                f"monitoring network {net} covers a large part of the Internet, which could then read queue sizes and mail counts",
                "the networks your monitoring system scrapes from",
            )


def _mail_ports(t: Topology, relay) -> list[int]:
    """The ports a relay takes mail on (as `roles.Host.ports` says, for a relay of a partial topology)."""
    if relay.instances:
        return [i.port for i in (relay.instances.inbound, relay.instances.outbound) if i is not None]
    balancers = [lb for _, lb in present(t.load_balancers)]
    return [(balancers[0].backend_port or 25) if balancers else 25]


def tls_settings_agree(t: Topology, source: Located) -> Iterator[Finding]:
    """A certificate needs its key and a key its certificate; the TSIG key comes from exactly one place."""
    tls = getattr(t, "tls", None)
    if not isinstance(tls, Tls):
        return
    for given, lacking in (("cert_file", "key_file"), ("key_file", "cert_file")):
        if getattr(tls, given, None) and not getattr(tls, lacking, None) and ("tls", lacking) not in source.keys:
            yield _error(
                source,
                ("tls", given),
                f"{given} is given without {lacking}, so the MX certificate could not be presented",
                f"{lacking}: the {'private key of the certificate' if lacking == 'key_file' else 'certificate chain of the key'}, or neither",
            )
    acme = getattr(tls, "acme", None)
    update = getattr(acme, "dns_update", None) if isinstance(acme, Acme) else None
    if isinstance(update, DnsUpdate):
        path = ("tls", "acme", "dns_update")
        if update.tsig_key_file and update.tsig_key_env:
            yield _error(source, path + ("tsig_key_env",), "both tsig_key_file and tsig_key_env are given", "one of them")
        elif not update.tsig_key_file and not update.tsig_key_env and not any(path + (k,) in source.keys for k in ("tsig_key_file", "tsig_key_env")):
            yield _error(
                source,
                path,
                "names no TSIG key, so the DNS server would refuse the ACME challenge records",
                "tsig_key_file: a file holding the key, or tsig_key_env: a variable holding it",
            )


def listings_name_a_list(t: Topology, source: Located) -> Iterator[Finding]:
    """A listings section that names no list would make `dns check --listings` pass having asked nothing.
    (A zone that is both an address and a domain list is fine: some lists answer for both.) Judged on what was
    written, so a list that failed validation (already reported) does not count as empty."""
    raw = source.data.get("listings") if isinstance(source.data, dict) else None
    if isinstance(raw, dict) and not raw.get("address_lists") and not raw.get("domain_lists"):
        yield _error(
            source,
            ("listings",),
            "names no DNS list, so `dns check --listings` would ask nothing",
            "address_lists: IP lists such as [zen.spamhaus.org] and/or domain_lists: domain lists such as [dbl.spamhaus.org]; or no listings section",
        )


def dkim_and_dmarc_agree(t: Topology, source: Located) -> Iterator[Finding]:
    """DKIM signs only hosted domains (a key for another would sign mail this cluster never sends as it); DMARC reports
    go to mailto: URIs (RFC 7489 6.3: receivers send reports by mail; other schemes they ignore)."""
    dkim = getattr(t, "dkim", None)
    hosted = {str(d).lower() for _, d in present(getattr(t, "domains", None) or [])}
    if isinstance(dkim, Dkim) and hosted:
        for i, domain in enumerate(dkim.domains):
            if str(domain).lower() not in hosted:
                yield _error(
                    source,
                    ("dkim", "domains", i),
                    f"{domain} is not a hosted domain, so no mail of it is sent here to sign",
                    "one of domains: " + ", ".join(sorted(hosted)),
                )
    if isinstance(dkim, Dkim):
        for i, algorithm in enumerate(dkim.algorithms):
            if algorithm == "ed25519":
                yield _error(
                    source,
                    ("dkim", "algorithms", i),
                    "OpenDKIM as Debian 12 and 13 ship it (2.11.0~beta2) signs every key with one algorithm (SignatureAlgorithm, rsa-sha256): "
                    "beside an RSA key an Ed25519 key would fail at signing time, and the milter would tempfail every message of the domain "
                    "(per-key algorithms came to OpenDKIM's development branch only in 2026)",
                    "algorithms: [rsa]",
                )
    dmarc = getattr(t, "dmarc", None)
    if isinstance(dmarc, Dmarc):
        for key in ("aggregate_reports", "failure_reports"):
            for i, uri in enumerate(getattr(dmarc, key)):
                if not re.fullmatch(r"mailto:[^@\s,;!]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}(![0-9]+[kmgt]?)?", uri):
                    yield _error(
                        source, ("dmarc", key, i), f"{uri!r} is not a mailto: URI: receivers send DMARC reports only by mail", "e.g. mailto:dmarc@example.com"
                    )


def ssh_is_not_open_to_all(t: Topology, source: Located) -> Iterator[Finding]:
    if not t.firewall.admin_networks:
        yield _warning(source, ("firewall",), "SSH stays open to any address", "firewall.admin_networks: the networks you administer from")


CHECKS: list[Check] = [
    names_are_unique,
    relays_have_a_core,
    balancers_are_usable,
    balancers_have_a_name_for_mx,
    recipients_name_a_source,
    ldap_settings_agree,
    instances_are_usable,
    no_open_relay_networks,
    header_checks_are_sound,
    main_cf_parameters_exist,
    metrics_ports_are_free,
    tls_settings_agree,
    listings_name_a_list,
    dkim_and_dmarc_agree,
    ssh_is_not_open_to_all,
]


def run(t: Topology, source: Located) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings) of every check, in the order of CHECKS."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for check in CHECKS:
        for finding in check(t, source):
            (warnings if finding.warning else problems).append(finding.problem)
    return problems, warnings
