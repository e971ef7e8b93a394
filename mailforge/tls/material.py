"""TLS material: what the controller's store must hold for a deploy, its checks, and what each host gets.

Rendering stays pure: it only names the host paths (`HOST_*`). This module is the I/O beside it:
`prepare` makes what is missing in the store (the private CA, each relay's and core's certificate
for its fqdn, the MX key and chain), `check_mx` refuses an MX certificate clients would refuse,
`shipment` says which store files make up each host's TLS files, and `assemble` writes those files
(key and chain concatenated by Python, never by a template) into a private directory for Ansible.
`fingerprints` gives the sha256 of each shipped file, so `verify` and `drift` can compare live
files with what was shipped without ever showing a key.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import Problem
from ..inventory import Inventory, Topology
from ..inventory.load import resolve_topology_file
from ..inventory.positions import load_yaml
from . import HOST_CERT, HOST_INTERNAL_CA, HOST_MTA_STS, HOST_MX, internal
from .names import mx_names, policy_hosts

RENEW_DAYS = 30  # a certificate from the private CA is issued again this close to its expiry

CA_DIR = "internal-ca"
HOSTS_DIR = "hosts"
MX_DIR = "mx"  # ACME's, or the copy of tls.cert_file/key_file
INTERNAL_MX_DIR = "internal-mx"
MTA_STS_DIR = "mta-sts"  # ACME's, or the copy of tls.mta_sts.cert_file/key_file
INTERNAL_MTA_STS_DIR = "internal-mta-sts"  # from the private CA, when neither: HAProxy must have a certificate to start


@dataclass
class Material:
    """What `prepare` found or made in the store."""

    store: Path
    mx_source: str  # "files" (tls.cert_file), "acme" (store mx/, written by `mailforge certs`) or "internal" (private CA)
    written: list[Path] = field(default_factory=list)  # files this run wrote: empty when nothing was missing or stale

    @property
    def mx_directory(self) -> Path:
        return self.store / (INTERNAL_MX_DIR if self.mx_source == "internal" else MX_DIR)


@dataclass(frozen=True)
class Shipped:
    """One TLS file of a host: the store files it is made of, concatenated in order, and its mode.
    `data` instead of sources: a file made by Python from the store (OpenDKIM's tables)."""

    sources: tuple[Path, ...]
    mode: str = "0600"
    owner: str = "root"
    group: str = "root"
    data: bytes | None = None

    def content(self) -> bytes:
        if self.data is not None:
            return self.data
        parts = [source.read_bytes() for source in self.sources]
        return b"".join(p if p.endswith(b"\n") else p + b"\n" for p in parts)


# --- reading PEM -----------------------------------------------------------------------------------


def _certificates(data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        return []


def _key(data: bytes):
    try:
        return serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError):
        return None


def _public(obj) -> bytes:
    return obj.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _days_left(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - internal.now()).total_seconds() / 86400


# --- prepare ---------------------------------------------------------------------------------------


def _controller_file(inventory: Inventory, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else inventory.directory / path


def _write_if_changed(path: Path, data: bytes, written: list[Path]) -> None:
    if path.is_file() and path.read_bytes() == data:
        if path.stat().st_mode & 0o777 != internal.FILE_MODE:
            path.chmod(internal.FILE_MODE)
        return
    internal.write_atomic(path, data)
    written.append(path)


def _needs_issue(directory: Path, ca: internal.Authority, names: list[str]) -> bool:
    """A certificate from the private CA is (re)issued when missing, unreadable, for other names, from
    another CA (the CA was made anew), not matching its key, or within RENEW_DAYS of expiry."""
    key_file, cert_file = directory / "key.pem", directory / ("cert.pem" if directory.parent.name == HOSTS_DIR else "chain.pem")
    if not (key_file.is_file() and cert_file.is_file()):
        return True
    certs, key = _certificates(cert_file.read_bytes()), _key(key_file.read_bytes())
    if not certs or key is None:
        return True
    cert = certs[0]
    if sorted(internal.dns_names(cert)) != sorted(n.lower() for n in names) or cert.issuer != ca.cert.subject:
        return True
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and friends: not ours
        return True
    return _public(key) != _public(cert) or _days_left(cert) < RENEW_DAYS


def _issue_into(directory: Path, ca: internal.Authority, names: list[str], cert_name: str, written: list[Path]) -> None:
    old_key = _key((directory / "key.pem").read_bytes()) if (directory / "key.pem").is_file() else None
    key, cert = internal.issue(ca, names, key=old_key)  # the key stays: only the certificate is new
    _write_if_changed(directory / "key.pem", internal.key_pem(key), written)
    _write_if_changed(directory / cert_name, internal.cert_pem(cert), written)


def _mx_source(inventory: Inventory, store: Path) -> str:
    tls = inventory.topology.tls
    if tls.cert_file and tls.key_file:
        return "files"
    if (store / MX_DIR / "key.pem").is_file() and (store / MX_DIR / "chain.pem").is_file():
        return "acme"
    return "internal"


def prepare(inventory: Inventory, store: Path) -> Material:
    """Make what is missing or stale in the store; idempotent (a second run writes nothing), works on an
    empty (or absent) store. A tls.cert_file/key_file pair that cannot be read is left for `check_mx` to report."""
    written: list[Path] = []
    internal.ensure_dir(store)
    ca = internal.load_authority(store / CA_DIR)
    if ca is None:
        ca = internal.make_ca(inventory.topology.cluster)
        internal.save_authority(store / CA_DIR, ca)
        written += [store / CA_DIR / "key.pem", store / CA_DIR / "cert.pem"]
    t = inventory.topology
    hosts: list[tuple[str, str]] = [(r.name, r.fqdn) for r in t.relays] + [(c.name, c.fqdn) for c in t.cores]
    for name, fqdn in hosts:
        directory = store / HOSTS_DIR / name
        if _needs_issue(directory, ca, [fqdn]):
            _issue_into(directory, ca, [fqdn], "cert.pem", written)
    source = _mx_source(inventory, store)
    if source == "files":
        assert t.tls.cert_file and t.tls.key_file
        try:
            chain = _controller_file(inventory, t.tls.cert_file).read_bytes()
            key = _controller_file(inventory, t.tls.key_file).read_bytes()
        except OSError:
            chain = key = b""
        certs, private = _certificates(chain), _key(key)
        if certs and private is not None and _public(private) == _public(certs[0]):  # a bad pair stays out of the store
            _write_if_changed(store / MX_DIR / "chain.pem", chain, written)
            _write_if_changed(store / MX_DIR / "key.pem", key, written)
    elif source == "internal":
        names = mx_names(t) or [r.fqdn for r in t.relays]  # a balancer without fqdn: the relays' names
        if _needs_issue(store / INTERNAL_MX_DIR, ca, names):
            _issue_into(store / INTERNAL_MX_DIR, ca, names, "chain.pem", written)
    if t.tls.mta_sts and t.managed_balancers:
        _prepare_mta_sts(inventory, store, ca, written)
    return Material(store, source, written)


def _mta_sts_directory(inventory: Inventory, store: Path) -> Path:
    """Where the mta-sts.<domain> certificate comes from: files or ACME (store mta-sts/), else the private CA."""
    sts = store / MTA_STS_DIR
    if (sts / "key.pem").is_file() and (sts / "chain.pem").is_file():
        return sts
    return store / INTERNAL_MTA_STS_DIR


def _prepare_mta_sts(inventory: Inventory, store: Path, ca: internal.Authority, written: list[Path]) -> None:
    sts = inventory.topology.tls.mta_sts
    assert sts is not None
    if sts.cert_file and sts.key_file:
        try:
            chain = _controller_file(inventory, sts.cert_file).read_bytes()
            key = _controller_file(inventory, sts.key_file).read_bytes()
        except OSError:
            chain = key = b""
        certs, private = _certificates(chain), _key(key)
        if certs and private is not None and _public(private) == _public(certs[0]):
            _write_if_changed(store / MTA_STS_DIR / "chain.pem", chain, written)
            _write_if_changed(store / MTA_STS_DIR / "key.pem", key, written)
    if _mta_sts_directory(inventory, store).name == INTERNAL_MTA_STS_DIR:
        names = policy_hosts(inventory.topology)
        if _needs_issue(store / INTERNAL_MTA_STS_DIR, ca, names):
            _issue_into(store / INTERNAL_MTA_STS_DIR, ca, names, "chain.pem", written)


# --- check_mx --------------------------------------------------------------------------------------


def _locator(inventory: Inventory):
    """A function (key path, message, expected) -> Problem at that key of topology.yml (or its nearest parent)."""
    file = resolve_topology_file(inventory.directory)
    source, _ = load_yaml(file, file.read_text(encoding="utf-8"))

    def locate(path: tuple, message: str, expected: str = "") -> Problem:
        if source is None:
            return Problem(file, None, None, ".".join(path), message, expected)
        line, column = source.position(path)
        if line is None:
            line, column = source.position(("cluster",))
        return Problem(file, line, column, ".".join(path), message, expected)

    return locate


def check_mx(inventory: Inventory, store: Path) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) about the MX certificate deploy would ship: readable PEM, key matching the
    certificate, names covering every MX name, not expired (a warning within tls.expiry_warning_days).
    Located at tls.cert_file (files), tls.acme (ACME's store) or tls (the private CA's)."""
    locate = _locator(inventory)
    tls = inventory.topology.tls
    source = _mx_source(inventory, store)
    errors: list[Problem] = []
    warnings: list[Problem] = []
    if source == "files":
        assert tls.cert_file and tls.key_file
        at: tuple[str, ...] = ("tls", "cert_file")
        cert_path, key_path = _controller_file(inventory, tls.cert_file), _controller_file(inventory, tls.key_file)
        datas = {}
        for which, path, label in (("cert", cert_path, "cert_file"), ("key", key_path, "key_file")):
            try:
                datas[which] = path.read_bytes()
            except OSError as exc:
                errors.append(locate(("tls", label), f"cannot read {path}: {exc.strerror or exc}", "a readable PEM file, relative to the inventory directory"))
        if errors:
            return errors, warnings
        if not _certificates(datas["cert"]):
            errors.append(locate(("tls", "cert_file"), f"{cert_path} holds no PEM certificate", "the certificate chain in PEM, leaf first"))
        if _key(datas["key"]) is None:
            errors.append(
                locate(("tls", "key_file"), f"{key_path} holds no unencrypted PEM private key", "the certificate's private key in PEM, without a passphrase")
            )
        if errors:
            return errors, warnings
        certs, key, what = _certificates(datas["cert"]), _key(datas["key"]), str(cert_path)
    else:
        directory = store / (MX_DIR if source == "acme" else INTERNAL_MX_DIR)
        at = ("tls", "acme") if source == "acme" and tls.acme else ("tls",)
        if tls.acme and source == "internal":
            warnings.append(
                locate(
                    ("tls", "acme"),
                    "no certificate from the ACME server yet: the relays present the cluster's private CA's, which senders cannot verify",
                    "run `mailforge certs INVENTORY --deploy`",
                )
            )
        what = str(directory / "chain.pem")
        try:
            certs, key = _certificates((directory / "chain.pem").read_bytes()), _key((directory / "key.pem").read_bytes())
        except OSError as exc:
            return [locate(at, f"the MX certificate in the store cannot be read: {exc}", "run `mailforge deploy` again, or `mailforge certs` for ACME")], []
        if not certs or key is None:
            return [locate(at, f"{what} or its key.pem is not PEM", "run `mailforge certs --renew` (ACME), or remove the directory to start over")], []
    leaf = certs[0]
    if _public(key) != _public(leaf):
        errors.append(locate(at, f"the private key does not match the certificate {what}", "the key the certificate was issued for"))
    names = internal.dns_names(leaf)
    missing = [n for n in mx_names(inventory.topology) if not internal.covers(names, n)]
    if missing:
        errors.append(
            locate(
                at,
                f"the MX certificate {what} is for {', '.join(names) or 'no name'}, not for the MX name{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                "a certificate whose names cover every MX name: " + ", ".join(mx_names(inventory.topology)),
            )
        )
    now = internal.now()
    if leaf.not_valid_after_utc <= now:
        errors.append(locate(at, f"the MX certificate {what} expired on {leaf.not_valid_after_utc:%Y-%m-%d}", "a current certificate"))
    elif leaf.not_valid_before_utc > now:
        errors.append(locate(at, f"the MX certificate {what} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC", "a certificate valid now"))
    elif leaf.not_valid_after_utc - now < datetime.timedelta(days=tls.expiry_warning_days):
        days = (leaf.not_valid_after_utc - now).days
        warnings.append(
            locate(
                at,
                f"the MX certificate {what} expires on {leaf.not_valid_after_utc:%Y-%m-%d}, in {days} day{'s' if days != 1 else ''}",
                "a renewed certificate (`mailforge certs --renew` with ACME)",
            )
        )
    return errors, warnings


# --- shipment --------------------------------------------------------------------------------------


def shipment(inventory: Inventory, store: Path) -> dict[str, dict[str, Shipped]]:
    """What each host gets, by host path: relays and MX proxies HOST_MX, HOST_CERT, HOST_INTERNAL_CA;
    cores HOST_CERT, HOST_INTERNAL_CA; a managed balancer, with tls.mta_sts, HOST_MTA_STS (files,
    ACME's, else the private CA's: `prepare` always makes one) (0640 root:haproxy: HAProxy reads it after dropping root)."""
    t: Topology = inventory.topology
    ca_cert = store / CA_DIR / "cert.pem"
    mx_dir = store / (INTERNAL_MX_DIR if _mx_source(inventory, store) == "internal" else MX_DIR)
    result: dict[str, dict[str, Shipped]] = {}

    def own(name: str) -> Shipped:
        return Shipped((store / HOSTS_DIR / name / "key.pem", store / HOSTS_DIR / name / "cert.pem"))

    for relay in t.relays:
        result[relay.name] = {
            HOST_MX: Shipped((mx_dir / "key.pem", mx_dir / "chain.pem")),
            HOST_CERT: own(relay.name),
            HOST_INTERNAL_CA: Shipped((ca_cert,), mode="0644"),  # a public certificate
        }
    for core in t.cores:
        result[core.name] = {HOST_CERT: own(core.name), HOST_INTERNAL_CA: Shipped((ca_cert,), mode="0644")}
    sts = _mta_sts_directory(inventory, store)
    if t.tls.mta_sts and (sts / "key.pem").is_file() and (sts / "chain.pem").is_file():
        for lb in t.managed_balancers:
            result[lb.name] = {HOST_MTA_STS: Shipped((sts / "key.pem", sts / "chain.pem"), mode="0640", group="haproxy")}
    return result


def fingerprints(inventory: Inventory, store: Path) -> dict[str, dict[str, str]]:
    """sha256 (hex) of every file `shipment` would ship, by host and host path: comparable with the live files, never showing them."""
    return {host: {path: hashlib.sha256(item.content()).hexdigest() for path, item in files.items()} for host, files in shipment(inventory, store).items()}


def assemble(ship: dict[str, dict[str, Shipped]], directory: Path, hosts: list[str] | None = None) -> dict[str, list[dict]]:
    """Write each host's TLS files into `directory` (made 0700; files 0600) and return, per host, the
    `mailforge_tls_files` list the base role ships: [{path, src, mode, owner, group}]."""
    internal.ensure_dir(directory)
    result: dict[str, list[dict]] = {}
    for host, files in ship.items():
        if hosts is not None and host not in hosts:
            continue
        entries = []
        for index, (path, item) in enumerate(sorted(files.items())):
            src = directory / host / f"{index}-{Path(path).name}"
            internal.write_atomic(src, item.content())
            entries.append({"path": path, "src": str(src), "mode": item.mode, "owner": item.owner, "group": item.group})
        result[host] = entries
    return result
