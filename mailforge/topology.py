"""The topology inventory: schema, semantic checks, and loading from a directory.

An inventory is a directory holding `topology.yml` and the files it names
(`users.txt`, ...).  `load_inventory` reads it, checks everything it can, and
either returns an `Inventory` or raises `InventoryError` carrying every
problem found, each with file, line, column and key path.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from . import header_checks as header_check_syntax
from .errors import InventoryError, Problem
from .mailnames import NameError_, normalize_domain
from .postfix_parameters import GUARDED_PARAMETERS, POSTFIX_PARAMETERS
from .recipients import RecipientSet, load_recipients
from .yamlsource import Located, format_path, load_yaml

TOPOLOGY_FILE = "topology.yml"


def _fail(message: str, expected: str) -> PydanticCustomError:
    return PydanticCustomError("mailforge", "{message}", {"message": message, "expected": expected})


def _domain(value: str) -> str:
    try:
        return normalize_domain(value)
    except NameError_ as exc:
        raise _fail(str(exc), exc.expected) from None


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise _fail(f"{value!r} is not an IPv4 or IPv6 address", "an address such as 192.0.2.25 or 2001:db8::25") from None


def _network(value: str) -> str:
    text = str(value)
    try:
        return str(ipaddress.ip_network(text))
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise _fail(f"{text!r} is not an IPv4 or IPv6 network", "a CIDR such as 192.0.2.0/24 or 2001:db8::/64") from None
        raise _fail(f"{text!r} has host bits set", f"the network address, {loose}") from None


def _name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", value):
        raise _fail(f"{value!r} is not a usable host name", "lower-case letters, digits, '-' or '_', starting with a letter or digit")
    return value


def _config_text(value: str) -> str:
    """Text that ends up inside a Postfix or HAProxy file: one line, no control characters."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _fail(f"{value!r} contains a line break or control character, which would inject lines into the rendered files",
                    "text on a single line with no control characters")
    return value


def _file_path(value: str) -> str:
    _config_text(value)
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise _fail(f"{value!r} is not an absolute path without spaces", "a path such as /etc/ssl/certs/mx.pem")
    return value


def _main_cf_value(value: object) -> str | int | bool:
    if isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, str):
        return _config_text(value)
    raise _fail(f"{value!r} is not a single main.cf value", "a string, number or yes/no")


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise _fail(f"{value} is not a TCP port", "a number from 1 to 65535")
    return value


Domain = Annotated[str, AfterValidator(_domain)]
Address = Annotated[str, AfterValidator(_address)]
Network = Annotated[str, AfterValidator(_network)]
HostName = Annotated[str, AfterValidator(_name)]
Port = Annotated[StrictInt, AfterValidator(_port)]
ConfigText = Annotated[str, AfterValidator(_config_text)]
FilePath = Annotated[str, AfterValidator(_file_path)]
MainCfValue = Annotated[object, AfterValidator(_main_cf_value)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _csv_delimiter(value: str) -> str:
    if len(value) != 1 or value in "\"\r\n" or value.isalnum():
        raise _fail(f"{value!r} is not a usable CSV delimiter", "one character that is not a letter, digit, quote or line break, e.g. ',' ';' or \"\\t\" for a tab")
    return value


def _ldap_uri(value: str) -> str:
    _config_text(value)
    parts = urllib.parse.urlsplit(value)
    try:
        parts.port
    except ValueError:
        raise _fail(f"{value!r} has an invalid port", "a port from 1 to 65535, e.g. ldap://ldap.example.com:389") from None
    if parts.scheme.lower() not in ("ldap", "ldaps") or not parts.hostname:
        raise _fail(f"{value!r} is not an ldap:// or ldaps:// URI with a host", "a URI such as ldap://ldap.example.com or ldaps://ldap.example.com:636")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise _fail(f"{value!r} holds more than the server's address",
                    "only scheme, host and port, e.g. ldaps://ldap.example.com:636 (the search base goes under 'base', the bind DN under 'bind_dn')")
    return value


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        # The value is not shown: a password put here by mistake must not be printed.
        raise _fail("is not the name of an environment variable (the value is not shown, in case it is the password itself)",
                    "a variable name such as MAILFORGE_LDAP_PASSWORD; its value is the password")
    return value


def _ldap_attribute(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+", value):
        raise _fail(f"{value!r} is not an LDAP attribute name", "an attribute such as mail or mailAlternateAddress")
    return value


def _ldap_filter(value: str) -> str:
    _config_text(value)
    if not (value.startswith("(") and value.endswith(")")) or value.count("(") != value.count(")"):
        raise _fail(f"{value!r} is not an LDAP filter", "a filter in parentheses, e.g. (objectClass=inetOrgPerson) or (&(objectClass=person)(mail=*))")
    return value


CsvDelimiter = Annotated[str, AfterValidator(_csv_delimiter)]
LdapUri = Annotated[str, AfterValidator(_ldap_uri)]
EnvName = Annotated[str, AfterValidator(_env_name)]
LdapAttribute = Annotated[str, AfterValidator(_ldap_attribute)]
LdapFilter = Annotated[str, AfterValidator(_ldap_filter)]


class CsvSource(Strict):
    """A CSV export (spreadsheet, HR system): one address per row, in the column named by its header."""

    file: ConfigText = Field(description="The CSV file, relative to the inventory directory; UTF-8, with or without a byte order mark.")
    column: ConfigText = Field(description="Header of the column holding the addresses, e.g. mail or E-Mail.")
    delimiter: CsvDelimiter = Field(",", description="Field separator: one character, e.g. ',' ';' or a tab.")


class LdapSource(Strict):
    """An LDAP directory searched with paged results; every value of `attributes` is an address."""

    uri: LdapUri = Field(description="ldap://host[:port] or ldaps://host[:port].")
    bind_dn: ConfigText | None = Field(None, description="DN to bind as; without it the search is anonymous.")
    password_env: EnvName | None = Field(None, description="Environment variable holding the bind password.")
    password_file: ConfigText | None = Field(None, description="File holding the bind password (its first line), relative to the inventory directory.")
    base: ConfigText = Field(description="Search base DN, e.g. ou=people,dc=example,dc=com.")
    filter: LdapFilter = Field("(objectClass=*)", description="Search filter; entries without any of `attributes` are skipped.")
    attributes: list[LdapAttribute] = Field(default_factory=lambda: ["mail"], min_length=1, description="Attributes whose values are addresses.")
    page_size: Annotated[StrictInt, Field(ge=1, le=100000)] = Field(500, description="Entries per page of the simple paged results control.")
    start_tls: bool = Field(False, description="Upgrade an ldap:// connection with StartTLS (the certificate is verified).")
    ca_file: ConfigText | None = Field(None, description="CA certificates to verify the server with (ldaps:// or start_tls); default: the system's.")
    timeout: Annotated[float, Field(gt=0, le=3600)] = Field(10, description="Seconds to wait to connect and for each answer.")


class Recipients(Strict):
    """Where the relays' list of valid recipients comes from; sources combine."""

    local_parts_file: ConfigText | None = Field(None, description="File of local parts, one per line, crossed with every hosted domain.")
    addresses_file: ConfigText | None = Field(None, description="File of full addresses, one per line.")
    addresses: list[str] = Field(default_factory=list, description="Full addresses given inline.")
    csv: CsvSource | None = Field(None, description="A CSV export with a header line; the addresses are in one column.")
    ldap: LdapSource | None = Field(None, description="An LDAP directory; the password is never in the inventory (password_env or password_file).")


class Connection(Strict):
    """How Ansible reaches a host; a host's own settings override the topology's."""

    plugin: ConfigText | None = Field(None, description="Ansible connection plugin: ssh (default), local, community.docker.docker, ...")
    host: ConfigText | None = Field(None, description="Address or name to connect to, when not the host's address.")
    user: ConfigText | None = None
    port: Port | None = None
    private_key_file: ConfigText | None = None
    become: bool | None = Field(None, description="Use sudo (or the plugin's equivalent) to become root.")


class LoadBalancer(Strict):
    """A TCP balancer in front of the relays; managed (HAProxy) unless external."""

    name: HostName
    address: Address | None = Field(None, description="Address the balancer connects to the relays from (and listens on, when managed).")
    fqdn: Domain | None = None
    external: bool = Field(False, description="True for a cloud balancer (e.g. AWS ELB): nothing is deployed to it.")
    source_networks: list[Network] = Field(default_factory=list, description="Networks the balancer's connections come from.")
    proxy_protocol: Literal["v1", "v2", "none"] = "v1"
    backend_port: Port | None = Field(None, description="Port the relays listen on for the balancer.")
    frontend_port: Port = 25
    connection: Connection | None = None


class InboundInstance(Strict):
    """postfix-inbound: public mail on port 25 with the relay checks."""

    port: Port = 25


class OutboundInstance(Strict):
    """postfix-outbound: mail from trusted hosts on the submission port, sent to the Internet."""

    port: Port = 587
    trusted_networks: list[Network] = Field(min_length=1)


class Instances(Strict):
    inbound: InboundInstance | None = None
    outbound: OutboundInstance | None = None


class Relay(Strict):
    name: HostName
    fqdn: Domain
    address: Address
    instances: Instances | None = Field(None, description="Run several Postfix instances with postmulti on this host.")
    connection: Connection | None = None


class Core(Strict):
    name: HostName
    fqdn: Domain
    address: Address
    user_networks: list[Network] = Field(default_factory=list, description="Networks allowed to send outbound mail through this core.")
    connection: Connection | None = None


class HeaderCheck(Strict):
    match: ConfigText = Field(description="A Postfix regexp pattern, /.../ with optional flags.")
    action: ConfigText = Field(description="What to do on a match, e.g. 'REJECT reason' or 'WARN'.")
    example: ConfigText | None = Field(None, description="A header line the pattern must match; `verify` sends it and expects a rejection.")


class Policy(Strict):
    """The cheap checks the relays apply before forwarding to the cores."""

    rbl_clients: list[Domain] = Field(default_factory=list)
    rhsbl_senders: list[Domain] = Field(default_factory=list)
    header_checks: list[HeaderCheck] = Field(default_factory=list)
    reject_forged_helo: bool = False
    reject_forged_senders: bool = False
    message_size_limit: Annotated[StrictInt, Field(gt=0)] = 20480000
    main_cf: dict[str, MainCfValue] = Field(default_factory=dict, description="Extra main.cf parameters for the relays; names are checked against Postfix's.")
    map_type: Literal["hash", "lmdb"] = Field(
        "hash", description="Indexed table type of the maps postmap compiles (recipients, domains, transport, access maps, "
                            "the cores' mailboxes): hash (Berkeley DB) or lmdb (Debian's postfix-lmdb; builds big maps faster).")


class Firewall(Strict):
    admin_networks: list[Network] = Field(default_factory=list, description="Networks SSH is open to; empty means any address.")
    ssh_port: Port = 22


class Tls(Strict):
    """The certificate the relays and cores offer with STARTTLS (Debian's snakeoil pair by default)."""

    cert_file: FilePath = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
    key_file: FilePath = "/etc/ssl/private/ssl-cert-snakeoil.key"


class Topology(Strict):
    cluster: HostName
    domains: list[Domain] = Field(min_length=1)
    recipients: Recipients | None = None
    load_balancers: list[LoadBalancer] = Field(default_factory=list)
    relays: list[Relay] = Field(min_length=1)
    cores: list[Core] = Field(default_factory=list)
    policy: Policy = Field(default_factory=Policy)
    firewall: Firewall = Field(default_factory=Firewall)
    tls: Tls = Field(default_factory=Tls)
    connection: Connection | None = Field(None, description="How Ansible reaches every host, unless a host says otherwise.")

    def connection_settings(self, host) -> dict:
        """How to reach `host`: the topology's connection settings, overridden by the host's own."""
        settings: dict = {}
        for layer in (self.connection, host.connection):
            if layer is not None:
                settings.update(layer.model_dump(exclude_none=True))
        return settings

    @property
    def managed_balancers(self) -> list[LoadBalancer]:
        return [lb for lb in self.load_balancers if not lb.external]

    @property
    def proxy_protocol(self) -> str:
        """The PROXY protocol version the relays expect ("none" without a balancer)."""
        return self.load_balancers[0].proxy_protocol if self.load_balancers else "none"

    @property
    def backend_port(self) -> int:
        """Port the relays take public mail on: the balancer's backend port, else 25."""
        if self.load_balancers and self.load_balancers[0].backend_port:
            return self.load_balancers[0].backend_port
        return 25

    @property
    def balancer_sources(self) -> list[str]:
        """Every network a balancer's connection to a relay can come from."""
        sources: list[str] = []
        for lb in self.load_balancers:
            if lb.address:
                sources.append(str(ipaddress.ip_network(lb.address)))
            sources.extend(lb.source_networks)
        return list(dict.fromkeys(sources))


@dataclass
class Inventory:
    """A validated topology with its recipients read, ready to render."""

    directory: Path
    topology: Topology
    recipients: RecipientSet | None
    warnings: list[Problem] = field(default_factory=list)

    @cached_property
    def hosts(self) -> list[str]:
        t = self.topology
        return [lb.name for lb in t.managed_balancers] + [r.name for r in t.relays] + [c.name for c in t.cores]


# --- turning pydantic errors into problems a person can act on ----------------


def _unwrap(annotation):
    """The model class inside Optional[...] / list[...] / dict[..., ...], if any."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                found = _unwrap(arg)
                if found is not None:
                    return found
        return None
    if origin in (list, tuple):
        return _unwrap(typing.get_args(annotation)[0])
    if origin is dict:
        return _unwrap(typing.get_args(annotation)[1])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _model_at(path: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Topology
    for part in path:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _unwrap(model.model_fields[part].annotation)
    return model


def _problem_from_pydantic(source: Located, error: dict) -> Problem:
    loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and "[" in part) and part not in ("str", "int", "bool"))
    kind = error["type"]
    if kind == "extra_forbidden" and loc[-1] == "password" and _model_at(loc[:-1]) is LdapSource:
        # The value is never shown: it is a password.
        return source.problem(loc, "a password may not be written in the inventory (it would end up in version control and logs)",
                              "password_env: the name of an environment variable holding it, or password_file: a file holding it")
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        message = f"unknown key {loc[-1]!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        as_parameter = difflib.get_close_matches(str(loc[-1]), POSTFIX_PARAMETERS, n=1, cutoff=0.85)
        if as_parameter and not hint:
            message += f" (a Postfix parameter such as {as_parameter[0]!r} goes under policy.main_cf)"
        return source.problem(loc, message, "one of: " + ", ".join(allowed))
    if kind == "missing":
        return source.problem(loc, f"required key {loc[-1]!r} is missing", f"a value for {format_path(loc)}")
    if kind == "mailforge":
        ctx = error.get("ctx", {})
        return source.problem(loc, ctx.get("message", error["msg"]), ctx.get("expected", ""))
    if kind == "too_short":
        return source.problem(loc, "must not be empty", "at least one entry")
    value = error.get("input")
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) else ""
    return source.problem(loc, error["msg"] + shown, "")


# --- a best-effort model, so one structural error does not hide the others ---


def _partial(model: type[BaseModel], data: dict) -> BaseModel:
    """`model` built field by field from `data`, skipping what fails: list items that fail become None."""
    values = {}
    for name, info in model.model_fields.items():
        if name not in data:
            continue
        raw, annotation = data[name], info.annotation
        nested = _unwrap(annotation)
        if typing.get_origin(annotation) is list and isinstance(raw, list):
            item_type = typing.get_args(annotation)[0]
            adapter = TypeAdapter(item_type)
            items = []
            for item in raw:
                try:
                    items.append(adapter.validate_python(item))
                except ValidationError:
                    model_type = _unwrap(item_type)
                    items.append(_Fragment(_partial(model_type, item)) if model_type and isinstance(item, dict) else None)
            values[name] = items
        elif nested is not None and typing.get_origin(annotation) is not dict and isinstance(raw, dict):
            values[name] = _partial(nested, raw)
        else:
            try:
                values[name] = TypeAdapter(annotation).validate_python(raw)
            except ValidationError:
                pass
    # A required field that is missing or failed: an empty list or None, so the cross checks can
    # still run over the rest (its own problem is already reported by the schema).
    for name, info in model.model_fields.items():
        if name not in values and info.is_required():
            values[name] = [] if typing.get_origin(info.annotation) is list else None
    return model.model_construct(**values)


class _Fragment:
    """What validated of a list item that did not: enough to find duplicates, not to check it further."""

    def __init__(self, partial: BaseModel):
        self.__dict__.update({k: v for k, v in partial.__dict__.items()})

    def __getattr__(self, name):
        return None


def _present(items):
    """(index, item) for the items that validated; a partial model holds None or a _Fragment for the others."""
    return [(i, item) for i, item in enumerate(items) if item is not None and not isinstance(item, _Fragment)]


def _identified(items):
    """(index, item) for every item with at least some valid fields, for duplicate checks."""
    return [(i, item) for i, item in enumerate(items) if item is not None]


# --- semantic checks over a (possibly partial) topology ------------------------


def _semantic_problems(t: Topology, source: Located) -> tuple[list[Problem], list[Problem]]:
    problems: list[Problem] = []
    warnings: list[Problem] = []

    def seen_once(items, label):
        first: dict[str, tuple] = {}
        for path, value in items:
            if value in first:
                problems.append(source.problem(path, f"duplicate {label} {value!r}, already used at {format_path(first[value])}", f"a unique {label}"))
            else:
                first[value] = path

    hosts = (
        [(("load_balancers", i), lb) for i, lb in _identified(t.load_balancers)]
        + [(("relays", i), r) for i, r in _identified(t.relays)]
        + [(("cores", i), c) for i, c in _identified(t.cores)]
    )
    seen_once([(p + ("name",), h.name) for p, h in hosts if h.name], "host name")
    seen_once([(p + ("address",), h.address) for p, h in hosts if getattr(h, "address", None)], "address")
    seen_once([(p + ("fqdn",), h.fqdn) for p, h in hosts if getattr(h, "fqdn", None)], "fqdn")
    seen_once([(("domains", i), d) for i, d in _present(t.domains)], "domain")

    if not t.cores and "cores" not in source.keys.get((), ()) and t.relays:
        problems.append(source.problem(("relays",), "relays have no core to forward mail to", "at least one entry under 'cores'"))

    balancers = _present(t.load_balancers)
    for i, lb in balancers:
        path = ("load_balancers", i)
        if lb.proxy_protocol != "none" and lb.backend_port is None:
            problems.append(
                source.problem(path + ("proxy_protocol",), f"balancer {lb.name!r} speaks PROXY {lb.proxy_protocol} but names no relay port for it",
                               "backend_port: the port the relays' postscreen listens on for this balancer, e.g. 10024")
            )
        if not lb.external and lb.address is None:
            problems.append(source.problem(path, f"managed balancer {lb.name!r} has no address", "address: the balancer's IP address"))
        if lb.external and not (lb.address or lb.source_networks):
            problems.append(source.problem(path, f"external balancer {lb.name!r} gives no address or source_networks, so the relays could not tell it from anyone else",
                                           "source_networks: the networks its connections come from"))
        if lb.proxy_protocol == "none":
            warnings.append(source.problem(path + ("proxy_protocol",), f"balancer {lb.name!r} hides the client's address: RBL checks and logs on the relays only see the balancer",
                                           "proxy_protocol: v1 or v2"))
        first = balancers[0][1]
        if lb is not first and (lb.proxy_protocol, lb.backend_port) != (first.proxy_protocol, first.backend_port):
            problems.append(source.problem(path, f"balancer {lb.name!r} differs from {first.name!r} in proxy_protocol or backend_port",
                                           "every balancer to use the same proxy_protocol and backend_port"))

    spec = getattr(t, "recipients", None)
    if isinstance(spec, Recipients) and not (spec.local_parts_file or spec.addresses_file or spec.addresses or spec.csv or spec.ldap) \
            and not any((source.data.get("recipients") or {}).get(key) is not None for key in ("csv", "ldap")):  # given but invalid: reported already
        problems.append(source.problem(("recipients",), "names no source, so the relays would refuse every recipient",
                                       "local_parts_file, addresses_file, addresses, csv or ldap; or leave recipients out to accept any local part"))
    ldap = spec.ldap if isinstance(spec, Recipients) else None
    if isinstance(ldap, LdapSource):
        path = ("recipients", "ldap")
        if ldap.password_env and ldap.password_file:
            problems.append(source.problem(path + ("password_file",), "both password_env and password_file are given", "one of them"))
        if getattr(ldap, "bind_dn", None) and not any(path + (key,) in source.keys for key in ("password_env", "password_file", "password")):
            problems.append(source.problem(path + ("bind_dn",), f"binding as {ldap.bind_dn!r} needs a password, and none is named",
                                           "password_env: a variable holding it, or password_file: a file holding it"))
        if not getattr(ldap, "bind_dn", None) and (ldap.password_env or ldap.password_file) and ("recipients", "ldap", "bind_dn") not in source.keys:
            problems.append(source.problem(path + ("password_env" if ldap.password_env else "password_file",), "a password is named but no bind_dn to use it with",
                                           "bind_dn: the DN to bind as; or no password for an anonymous search"))
        if ldap.start_tls and str(getattr(ldap, "uri", "")).lower().startswith("ldaps:"):
            problems.append(source.problem(path + ("start_tls",), "start_tls on an ldaps:// URI, which is already TLS", "start_tls: false, or an ldap:// URI"))

    for i, relay in _present(t.relays):
        instances = relay.instances
        if instances and instances.inbound and instances.outbound and instances.inbound.port == instances.outbound.port:
            problems.append(source.problem(("relays", i, "instances", "outbound", "port"), f"port {instances.outbound.port} is already the inbound instance's",
                                           "a different port for each instance, e.g. 25 and 587"))
        if relay.instances and t.load_balancers:
            problems.append(source.problem(("relays", i, "instances"), f"relay {relay.name!r} runs postmulti instances behind a load balancer, which mailforge does not support",
                                           "either instances or load_balancers, not both"))
        if relay.instances and not relay.instances.inbound and not relay.instances.outbound:
            problems.append(source.problem(("relays", i, "instances"), "no instance is defined", "inbound, outbound or both"))

    def guard_open(path, network, what):
        net = ipaddress.ip_network(network)
        if net.prefixlen < (8 if net.version == 4 else 16):
            problems.append(source.problem(path, f"{what} {network} covers a large part of the Internet and would make this host an open relay",
                                           "the networks of your own users only"))

    for i, core in _present(t.cores):
        for j, net in enumerate(core.user_networks):
            guard_open(("cores", i, "user_networks", j), net, "user network")
    for i, relay in _present(t.relays):
        if relay.instances and relay.instances.outbound:
            for j, net in enumerate(relay.instances.outbound.trusted_networks):
                guard_open(("relays", i, "instances", "outbound", "trusted_networks", j), net, "trusted network")

    for i, check in _present(t.policy.header_checks):
        path = ("policy", "header_checks", i)
        error = header_check_syntax.pattern_error(check.match)
        if error:
            problems.append(source.problem(path + ("match",), error, "a Postfix regexp pattern such as /^Subject: =\\?big5\\?/"))
        if error is None and check.example and not header_check_syntax.matches(check.match, check.example):
            problems.append(source.problem(path + ("example",), f"the pattern {check.match} does not match its example {check.example!r}",
                                           "an example header line the pattern matches"))
        error = header_check_syntax.action_error(check.action)
        if error:
            problems.append(source.problem(path + ("action",), error, "an action such as 'REJECT reason', 'WARN', 'DISCARD' or 'HOLD'"))

    for name, value in t.policy.main_cf.items():
        path = ("policy", "main_cf", name)
        if name in GUARDED_PARAMETERS:
            problems.append(source.problem(path, f"{name!r} is set by mailforge from the topology and may not be overridden (it decides who may relay)",
                                           "the topology keys: domains, recipients, load_balancers, cores, instances"))
        elif name not in POSTFIX_PARAMETERS:
            hint = difflib.get_close_matches(name, POSTFIX_PARAMETERS, n=1)
            problems.append(source.problem(path, f"{name!r} is not a Postfix parameter" + (f"; did you mean {hint[0]!r}?" if hint else ""),
                                           "a parameter name that postconf knows"))
        if any(c in str(value) for c in "\r\n"):
            problems.append(source.problem(path, "value spans lines", "a single-line value"))

    if not t.firewall.admin_networks:
        warnings.append(source.problem(("firewall",), "SSH stays open to any address", "firewall.admin_networks: the networks you administer from"))
    return problems, warnings


def _reading_order(problem: Problem) -> tuple:
    """topology.yml first, then the files it names; top to bottom within each."""
    return (problem.file.name != TOPOLOGY_FILE, str(problem.file), problem.line or 0, problem.column or 0)


def resolve_topology_file(path: Path) -> Path:
    """Accept an inventory directory or the path of its topology.yml."""
    path = Path(path)
    return path / TOPOLOGY_FILE if path.is_dir() else path


def load_inventory(path: Path) -> Inventory:
    """Read, validate and return the inventory at `path`, or raise InventoryError with every problem."""
    file = resolve_topology_file(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError([Problem(file, None, None, "", "no such file", f"an inventory directory holding {TOPOLOGY_FILE}, or the path of that file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError([Problem(file, None, None, "", f"cannot be read: {exc}", "a readable UTF-8 YAML file")]) from None
    source, problems = load_yaml(file, text)
    if source is None or source.data is None:
        raise InventoryError(problems)
    if not isinstance(source.data, dict):
        raise InventoryError(problems + [source.problem((), "the top level is not a mapping", "keys such as cluster, domains, relays, cores")])
    try:
        topology = Topology.model_validate(source.data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            if not any(loc[: len(path)] == path for path in source.unreadable):
                problems.append(_problem_from_pydantic(source, error))
        topology = _partial(Topology, source.data)  # to find the problems beyond the structural ones
    semantic, warnings = _semantic_problems(topology, source)
    problems.extend(semantic)
    recipients = None
    if source.data.get("recipients") is None:
        warnings.append(source.problem((), "no recipient list: the relays would accept any local part of the hosted domains and bounce later (backscatter)",
                                       "recipients: with local_parts_file, addresses_file, addresses, csv or ldap"))
    elif isinstance(getattr(topology, "recipients", None), Recipients):
        domains = getattr(topology, "domains", [])
        # A CSV or LDAP source whose own settings are wrong is not read: its problems are already reported.
        broken = {name for name in ("csv", "ldap") for p in problems if p.key == f"recipients.{name}" or p.key.startswith(f"recipients.{name}.")}
        recipients, recipient_problems = load_recipients(
            topology.recipients, [d for d in domains if d], file.parent, source, check_domains=all(domains) and bool(domains), skip=broken
        )
        problems.extend(recipient_problems)
    if problems:
        raise InventoryError(sorted(problems, key=_reading_order), warnings)
    return Inventory(file.parent, topology, recipients, warnings)
