"""The topology inventory's schema: what each key of topology.yml is, in pydantic models.

`extra="forbid"` everywhere, so a misspelt key is an error; the value types and their messages are
in `fields.py`, the checks across keys in `checks.py`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from .fields import (
    Address,
    ConfigText,
    CsvDelimiter,
    DebianCodename,
    Domain,
    EnvName,
    HostName,
    LdapAttribute,
    LdapFilter,
    LdapUri,
    MainCfValue,
    Network,
    Port,
)
from .releases import DEFAULT_RELEASE


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    known_hosts_file: ConfigText | None = Field(
        None, description="The known_hosts file the hosts' SSH keys are checked against (default: ssh's own, ~/.ssh/known_hosts). Never skipped."
    )
    become: bool | None = Field(None, description="Use sudo (or the plugin's equivalent) to become root.")


class RotationHooks(Strict):
    """How an external balancer is told to stop and resume sending to a relay (e.g. the AWS CLI).

    Each is a command run on the machine running mailforge, through /bin/sh, with {relay},
    {address} and {fqdn} replaced by the relay's (shell-quoted); it must return only once the
    balancer has acted (for take_out: once the relay's connections have drained)."""

    take_out: ConfigText = Field(description="Command that takes one relay out of the balancer's rotation and waits until it has drained.")
    put_back: ConfigText = Field(description="Command that puts one relay back into the balancer's rotation.")


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
    drain_seconds: Annotated[StrictInt, Field(ge=0, le=3600)] = Field(
        120, description="While a relay changes, how long to wait for its sessions through the balancer to end before going on."
    )
    rotation: RotationHooks | None = Field(
        None, description="External balancer only: the commands that take a relay out of its rotation and put it back during deploy and maps."
    )
    debian_release: DebianCodename | None = Field(
        None, description="The Debian release this host runs, when not the topology's debian_release: trixie (Debian 13) or bookworm (Debian 12)."
    )
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
    debian_release: DebianCodename | None = Field(
        None, description="The Debian release this host runs, when not the topology's debian_release: trixie (Debian 13) or bookworm (Debian 12)."
    )
    connection: Connection | None = None


class Core(Strict):
    name: HostName
    fqdn: Domain
    address: Address
    user_networks: list[Network] = Field(default_factory=list, description="Networks allowed to send outbound mail through this core.")
    debian_release: DebianCodename | None = Field(
        None, description="The Debian release this host runs, when not the topology's debian_release: trixie (Debian 13) or bookworm (Debian 12)."
    )
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
        default="hash",  # by keyword: mypy reads a field's default only from default=
        description="Indexed table type of the maps postmap compiles (recipients, domains, transport, access maps, "
        "the cores' mailboxes): hash (Berkeley DB) or lmdb (Debian's postfix-lmdb; builds big maps faster).",
    )


class Firewall(Strict):
    admin_networks: list[Network] = Field(default_factory=list, description="Networks SSH is open to; empty means any address.")
    ssh_port: Port = 22


class Monitoring(Strict):
    """Prometheus metrics for a monitoring system: HAProxy's own exporter on each managed balancer, and
    Debian's prometheus-postfix-exporter for every Postfix instance of the relays and cores."""

    networks: list[Network] = Field(
        min_length=1, description="The networks the monitoring system scrapes from: the only ones the firewalls (and HAProxy) let reach the metrics."
    )
    postfix_exporter_port: Port = Field(
        9154,
        description="Port of the Postfix exporter of a relay's or core's Postfix; an MX proxy's instances take this port and the next ones, in order: "
        "the default instance, postfix-inbound, postfix-outbound.",
    )
    haproxy_exporter_port: Port = Field(8405, description="Port of HAProxy's Prometheus exporter (/metrics) on each managed balancer.")


class DnsUpdate(Strict):
    """RFC 2136 dynamic updates that answer ACME's DNS-01 challenges; the TSIG key is never in the inventory."""

    server: Address = Field(description="Address of the primary name server that takes dynamic updates for the MX names' zones.")
    port: Port = 53
    tsig_key_file: ConfigText | None = Field(
        default=None, description="File holding the TSIG key (a BIND/Knot `key` clause, or `algorithm:name:secret`), relative to the inventory directory."
    )
    tsig_key_env: EnvName | None = Field(default=None, description="Environment variable holding the TSIG key as `algorithm:name:secret`.")
    zone: Domain | None = Field(default=None, description="Zone to update; default: the zone found by asking the server for the SOA of each name.")
    propagation_seconds: Annotated[StrictInt, Field(ge=1, le=3600)] = Field(
        default=60, description="How long to wait, at most, for the server to serve a challenge record before giving up."
    )


class Acme(Strict):
    """Certificates for the MX names (and mta-sts names) from an ACME CA, by DNS-01."""

    directory: ConfigText = Field(description="The ACME directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory.")
    contact: ConfigText = Field(description="Address the CA writes to about the account, e.g. hostmaster@example.com.")
    ca_file: ConfigText | None = Field(
        default=None, description="CA certificates to trust the ACME server's HTTPS with, relative to the inventory directory; default: the system's."
    )
    renew_days: Annotated[StrictInt, Field(ge=1, le=89)] = Field(default=30, description="Renew when the certificate expires within this many days.")
    dns_update: DnsUpdate


class Dane(Strict):
    """TLSA records (3 1 1) for the MX names, with a pre-published next key so a roll never breaks DANE."""

    publish_wait_hours: Annotated[StrictInt, Field(ge=0, le=8760)] = Field(
        default=48, description="Hours the next key's TLSA record must have been seen published before `certs` rolls to it."
    )


class MtaSts(Strict):
    """An MTA-STS policy (RFC 8461) for every hosted domain."""

    mode: Literal["testing", "enforce"] = "testing"
    max_age: Annotated[StrictInt, Field(ge=86400, le=31557600)] = Field(default=604800, description="Seconds a sender may cache the policy.")
    cert_file: ConfigText | None = Field(default=None, description="Certificate for the mta-sts.<domain> names, on the controller; default: ACME, else none.")
    key_file: ConfigText | None = None


class TlsRpt(Strict):
    """Where receivers send TLS reports (RFC 8460)."""

    addresses: list[ConfigText] = Field(min_length=1, description="mailto: or https: URIs, e.g. mailto:tlsrpt@example.com.")


class OutboundTls(Strict):
    """How the cores' outbound delivery authenticates other sites' MX hosts."""

    dane: bool = Field(False, description="Use DANE (smtp_tls_security_level = dane) with a local validating resolver (unbound).")
    mta_sts: bool = Field(False, description="Look up MTA-STS policies with postfix-mta-sts-resolver.")


class Tls(Strict):
    """The certificates the cluster presents and requires.

    The MX certificate (the names clients connect to) comes from files on the controller
    (`cert_file`, `key_file`), from ACME (`acme`), or, with neither, from the cluster's private CA.
    The hop from relays to cores always uses the private CA and is verified."""

    cert_file: ConfigText | None = Field(
        default=None, description="The MX names' certificate chain (PEM, leaf first) on the controller, relative to the inventory directory."
    )
    key_file: ConfigText | None = Field(default=None, description="Its private key on the controller (mode 0600); never copied into rendered files.")
    acme: Acme | None = None
    trust_file: ConfigText | None = Field(
        default=None, description="CA certificates that verify the MX certificate, for `verify` and `dns check`; default: the system's (or the private CA)."
    )
    expiry_warning_days: Annotated[StrictInt, Field(ge=1, le=365)] = Field(
        default=21, description="`deploy` and `verify` warn when a certificate expires within this many days."
    )
    internal_level: Literal["secure", "verify"] = Field(
        default="secure", description="Postfix's TLS level for relay-to-core delivery; both verify the core's certificate against the private CA."
    )
    dane: Dane | None = None
    mta_sts: MtaSts | None = None
    tls_rpt: TlsRpt | None = None
    outbound: OutboundTls | None = None


DkimAlgorithm = Literal["rsa", "ed25519"]


def _rsa_only() -> list[DkimAlgorithm]:
    return ["rsa"]


class Dkim(Strict):
    """DKIM signing (RFC 6376) of the hosted domains' outbound mail, by OpenDKIM on every host that sends to the
    Internet (the cores; an MX proxy's outbound instance). The keys are made by `mailforge dkim rotate` on the
    controller and kept in its store (0600), never in the inventory; `dns zone` prints their records."""

    domains: list[Domain] = Field(default_factory=list, description="The hosted domains to sign for; empty: every hosted domain.")
    algorithms: list[DkimAlgorithm] = Field(
        default_factory=_rsa_only,
        min_length=1,
        description="rsa (rsa-sha256, 2048-bit keys). ed25519 (RFC 8463) is refused for now: Debian's OpenDKIM (2.11.0~beta2) signs every key with one algorithm.",
    )
    retire_after_hours: Annotated[StrictInt, Field(ge=0, le=8760)] = Field(
        default=168, description="Hours after signing switched to a new selector before the old selector's record is listed for removal."
    )


class Dmarc(Strict):
    """The _dmarc TXT record (RFC 7489) `dns zone` prints for every hosted domain and `dns check` verifies."""

    policy: Literal["none", "quarantine", "reject"] = Field(description="What receivers should do with mail that fails DMARC (p=).")
    subdomain_policy: Literal["none", "quarantine", "reject"] | None = Field(default=None, description="The same for subdomains (sp=); default: policy.")
    percentage: Annotated[StrictInt, Field(ge=0, le=100)] = Field(default=100, description="Percentage of failing mail the policy applies to (pct=).")
    aggregate_reports: list[ConfigText] = Field(default_factory=list, description="mailto: URIs for aggregate reports (rua=).")
    failure_reports: list[ConfigText] = Field(default_factory=list, description="mailto: URIs for failure reports (ruf=).")
    dkim_alignment: Literal["relaxed", "strict"] = Field(default="relaxed", description="adkim=: relaxed lets a subdomain's signature align.")
    spf_alignment: Literal["relaxed", "strict"] = Field(default="relaxed", description="aspf=.")


class Listings(Strict):
    """DNS lists (RFC 5782) `dns check --listings` asks about the cluster's own addresses and domains."""

    address_lists: list[Domain] = Field(
        default_factory=list, description="IP lists (e.g. zen.spamhaus.org) asked for every balancer's, relay's and outbound host's address."
    )
    domain_lists: list[Domain] = Field(default_factory=list, description="Domain lists (e.g. dbl.spamhaus.org) asked for every hosted domain.")


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
    dkim: Dkim | None = Field(None, description="Sign outbound mail with DKIM; absent: no signing.")
    dmarc: Dmarc | None = Field(None, description="Publish a DMARC policy for every hosted domain; absent: none.")
    listings: Listings | None = Field(None, description="The DNS lists `dns check --listings` asks about the cluster's own addresses and domains.")
    monitoring: Monitoring | None = Field(None, description="Expose Prometheus metrics to the monitoring networks; absent: no metrics.")
    connection: Connection | None = Field(None, description="How Ansible reaches every host, unless a host says otherwise.")
    debian_release: DebianCodename = Field(
        default=DEFAULT_RELEASE,  # by keyword: mypy reads a field's default only from default=
        description="The Debian release every host runs unless its own debian_release says otherwise: trixie (Debian 13, Postfix 3.10) "
        "or bookworm (Debian 12, Postfix 3.7). It decides which Postfix parameters policy.main_cf may set on a relay, and the image of the host's lab container.",
    )

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
