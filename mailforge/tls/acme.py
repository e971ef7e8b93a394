"""Certificates for the MX names (and the mta-sts names) from an ACME CA, answering DNS-01 by RFC 2136.

Why this shape:
- The ACME protocol is certbot's `acme` library, never hand-written: the CA's rules (nonces, retries,
  order states) are its problem. DNS-01 is the only challenge that works for a cluster: the names
  point at a balancer, not at the controller, and no host need open port 80.
- The challenge records go in by RFC 2136 updates signed with TSIG (dnspython). The key comes from a
  file or the environment, never from the inventory, and never reaches a message, a log or stdout.
- A no-op signed update is sent before anything else, so a wrong key, a wrong zone or an unreachable
  server stops the run before the store is touched (exit 2, nothing written).
- The MX key is kept across renewals: a TLSA 3 1 1 record (DANE) names the key, not the certificate,
  so a renewal must not invalidate it. Rolling to a new key is a separate, deliberate step.
- Everything written lands atomically, directories 0700 and files 0600 (`_write`).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InventoryError, MailforgeError, Problem
from ..inventory.model import Acme, DnsUpdate, Topology
from .names import mx_names

USER_AGENT = "mailforge-certs"
ACCOUNT = ("acme", "account.json")

ALGORITHMS = {
    "hmac-md5": "hmac-md5.sig-alg.reg.int",
    "hmac-md5.sig-alg.reg.int": "hmac-md5.sig-alg.reg.int",
    "hmac-sha1": "hmac-sha1",
    "hmac-sha224": "hmac-sha224",
    "hmac-sha256": "hmac-sha256",
    "hmac-sha384": "hmac-sha384",
    "hmac-sha512": "hmac-sha512",
}


class CaRefused(MailforgeError):
    """The CA (or its validation of our challenge) said no: a problem found, exit 1, not bad input."""


class RollNotDue(MailforgeError):
    """`--roll-key` asked for a key roll that would break DANE: the next key's TLSA record has not been out
    long enough. A problem found (exit 1): the store is untouched."""


@dataclass(frozen=True)
class Where:
    """Locates messages at the inventory's `tls.acme...` keys (file:line) without keeping the YAML around."""

    file: Path
    positions: dict[tuple, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, topology_file: Path) -> Where:
        from ..inventory.positions import load_yaml

        try:
            source, _ = load_yaml(topology_file, topology_file.read_text(encoding="utf-8"))
        except OSError:
            source = None
        return cls(topology_file, dict(source.keys) if source else {})

    def problem(self, path: tuple, message: str, expected: str = "") -> Problem:
        probe = tuple(path)
        while probe and probe not in self.positions:
            probe = probe[:-1]
        line, column = self.positions.get(probe, (None, None))
        return Problem(self.file, line, column, ".".join(path), message, expected)

    def fail(self, path: tuple, message: str, expected: str = "") -> InventoryError:
        return InventoryError([self.problem(path, message, expected)])


# --- the TSIG key ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: str = field(repr=False)  # base64; never printed

    def dnspython(self):
        import dns.tsig

        return dns.tsig.Key(self.name, self.secret, self.algorithm)


_CLAUSE = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', re.S)
_ALGORITHM = re.compile(r'algorithm\s+"?([A-Za-z0-9.-]+)"?\s*;')
_SECRET = re.compile(r'secret\s+"([^"]+)"\s*;')
_KNOT_YAML = re.compile(r"-\s*id:\s*(\S+)\s+algorithm:\s*(\S+)\s+secret:\s*(\S+)", re.S)


def parse_tsig(text: str) -> TsigKey:
    """A TSIG key from a BIND/Knot `key "name" { algorithm ..; secret ".."; };` clause (as `tsig-keygen`
    and `keymgr -t` print), a Knot `key:` YAML item, or `algorithm:name:secret`. Raises ValueError with a
    message that never quotes the secret."""
    text = text.strip()
    clause = _CLAUSE.search(text)
    if clause:
        body = clause.group(2)
        algorithm, secret = _ALGORITHM.search(body), _SECRET.search(body)
        if not algorithm or not secret:
            raise ValueError(f"the key clause for {clause.group(1)!r} has no algorithm or no secret")
        return _checked(clause.group(1), algorithm.group(1), secret.group(1))
    knot = _KNOT_YAML.search(text)
    if knot:
        return _checked(knot.group(1), knot.group(2), knot.group(3))
    parts = text.split(":", 2)
    if len(parts) == 3 and "\n" not in text:
        return _checked(parts[1], parts[0], parts[2])
    raise ValueError('not a TSIG key: expected a `key "name" { algorithm hmac-sha256; secret "..."; };` clause or algorithm:name:secret')


def _checked(name: str, algorithm: str, secret: str) -> TsigKey:
    algorithm = algorithm.lower()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"TSIG algorithm {algorithm!r} is not one of {', '.join(a for a in ALGORITHMS if '.' not in a)}")
    try:
        if not base64.b64decode(secret, validate=True):
            raise ValueError
    except ValueError:
        raise ValueError(f"the secret of TSIG key {name!r} is not base64") from None
    if not name:
        raise ValueError("the TSIG key has no name")
    return TsigKey(name.rstrip(".") + ".", ALGORITHMS[algorithm], secret)


def read_tsig(update: DnsUpdate, directory: Path, where: Where) -> TsigKey:
    """The key from tsig_key_file (relative to the inventory) or tsig_key_env; located errors, exit 2."""
    base = ("tls", "acme", "dns_update")
    if update.tsig_key_file:
        path = directory / update.tsig_key_file
        key = base + ("tsig_key_file",)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise where.fail(key, f"cannot read TSIG key file {path}: {exc.strerror or exc}", "a readable file holding the TSIG key") from None
        except UnicodeDecodeError:
            raise where.fail(key, f"TSIG key file {path} is not text", 'a `key "name" { ... };` clause or algorithm:name:secret') from None
        source = f"TSIG key file {path}"
    elif update.tsig_key_env:
        key = base + ("tsig_key_env",)
        if update.tsig_key_env not in os.environ:
            raise where.fail(
                key, f"environment variable {update.tsig_key_env} is not set", f"export {update.tsig_key_env}=hmac-sha256:<key name>:<base64 secret>"
            )
        text = os.environ[update.tsig_key_env]
        source = f"environment variable {update.tsig_key_env}"
    else:
        raise where.fail(base, "no TSIG key: neither tsig_key_file nor tsig_key_env is set", "one of tsig_key_file, tsig_key_env")
    try:
        return parse_tsig(text)
    except ValueError as exc:
        raise where.fail(key, f"{source}: {exc}", 'a `key "name" { algorithm hmac-sha256; secret "..."; };` clause or algorithm:name:secret') from None


# --- RFC 2136 updates -----------------------------------------------------------------------------


class Updater:
    """Adds and removes the `_acme-challenge` TXT records on the primary, signed with the TSIG key."""

    def __init__(self, server: str, port: int, key: TsigKey, zone: str | None, where: Where, key_leaf: str = "tsig_key_file", timeout: float = 5.0):
        self.server, self.port, self.key, self.where, self.timeout = server, port, key, where, timeout
        self.key_leaf = key_leaf  # where the key came from, for messages about it
        self.fixed_zone = zone.rstrip(".") + "." if zone else None
        self._zones: dict[str, str] = {}

    def _at(self, leaf: str = "server") -> tuple:
        return ("tls", "acme", "dns_update", leaf)

    def _unreachable(self, exc: Exception) -> InventoryError:
        return self.where.fail(
            self._at(), f"DNS server {self.server} port {self.port} did not answer ({type(exc).__name__}: {exc})", "the address of the zone's primary"
        )

    def zone_of(self, name: str) -> str:
        """The zone holding `name`: tls.acme.dns_update.zone, else the owner of the SOA the server gives for it."""
        if self.fixed_zone:
            return self.fixed_zone
        if name in self._zones:
            return self._zones[name]
        import dns.exception
        import dns.message
        import dns.query
        import dns.rdatatype

        query = dns.message.make_query(name, dns.rdatatype.SOA)
        query.flags &= ~0x0100  # no recursion: only the primary's own zones count
        try:
            answer = dns.query.tcp(query, self.server, port=self.port, timeout=self.timeout)  # TCP, as the updates: a closed port says so at once
        except (OSError, dns.exception.DNSException) as exc:
            raise self._unreachable(exc) from None
        for rrset in list(answer.answer) + list(answer.authority):
            if rrset.rdtype == dns.rdatatype.SOA:
                self._zones[name] = rrset.name.to_text()
                return self._zones[name]
        raise self.where.fail(
            self._at(), f"DNS server {self.server} port {self.port} serves no zone holding {name}", "the primary of the MX names' zone, or set zone:"
        )

    def _send(self, zone: str, change: Callable | None, what: str) -> None:
        import dns.exception
        import dns.message
        import dns.query
        import dns.rcode
        import dns.tsig
        import dns.update

        update = dns.update.UpdateMessage(zone, keyring=self.key.dnspython())
        if change:
            change(update)
        try:
            response = dns.query.tcp(update, self.server, port=self.port, timeout=self.timeout)
        except (dns.tsig.PeerBadKey, dns.tsig.PeerBadSignature, dns.tsig.PeerBadTime, dns.tsig.PeerBadTruncation, dns.message.UnknownTSIGKey) as exc:
            raise self.where.fail(
                self._at(self.key_leaf),
                f"DNS server {self.server} refused TSIG key {self.key.name} for zone {zone} ({type(exc).__name__})",
                "the key the server has for updates to this zone",
            ) from None
        except (OSError, dns.exception.DNSException) as exc:
            raise self._unreachable(exc) from None
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            tsig_error = getattr(response, "tsig_error", 0)
            raise self.where.fail(
                self._at(self.key_leaf),
                f"DNS server {self.server} refused the {what} for zone {zone} signed with TSIG key {self.key.name}: {dns.rcode.to_text(dns.rcode.Rcode(rcode))}"
                + (f" (TSIG error {tsig_error})" if tsig_error else ""),
                "a key the server allows to update this zone",
            )

    def test(self, name: str) -> None:
        """A signed update that changes nothing (RFC 2136 allows an empty update section): the server
        checks the key and the zone, so a wrong key fails here, before anything is written."""
        self._send(self.zone_of(name), None, "test update")

    def add_txt(self, name: str, value: str) -> None:
        self._send(self.zone_of(name), lambda u: u.add(name + ".", 60, "TXT", _quoted(value)), "challenge record")

    def delete_txt(self, name: str, value: str) -> None:
        self._send(self.zone_of(name), lambda u: u.delete(name + ".", "TXT", _quoted(value)), "removal of the challenge record")

    def wait_served(self, name: str, value: str, seconds: int) -> bool:
        """Until the server answers the TXT with `value` (the CA asks it next), at most `seconds`."""
        import dns.exception
        import dns.message
        import dns.query
        import dns.rdatatype

        deadline = time.monotonic() + seconds
        delay = 0.05
        while True:
            query = dns.message.make_query(name + ".", dns.rdatatype.TXT)
            try:
                answer = dns.query.udp(query, self.server, port=self.port, timeout=self.timeout)
                for rrset in answer.answer:
                    if rrset.rdtype == dns.rdatatype.TXT and any(b"".join(r.strings).decode() == value for r in rrset):
                        return True
            except (OSError, dns.exception.DNSException):
                pass
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _quoted(value: str) -> str:
    return f'"{value}"'


# --- the store --------------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    """Atomically, 0600, in a 0700 directory: a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for parent in (path.parent, path.parent.parent):
        if parent.exists():
            os.chmod(parent, 0o700)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def new_key_pem() -> bytes:
    """An EC P-256 key: what every current CA and Postfix take, and short TLSA-friendly SPKI."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass(frozen=True)
class Held:
    """What the store holds for one certificate: its names, serial, expiry."""

    names: list[str]
    serial: int
    not_after: datetime.datetime
    key_sha256: str  # of the public key (SPKI): shows the key was kept, without showing the key


def held(directory: Path) -> Held | None:
    chain = directory / "chain.pem"
    if not chain.exists() or not (directory / "key.pem").exists():
        return None
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificates(chain.read_bytes())[0]
    except ValueError:
        return None
    return describe(cert)


def describe(cert) -> Held:
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        names = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = []
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return Held(names, cert.serial_number, cert.not_valid_after_utc, hashlib.sha256(spki).hexdigest())


def _covers(names: list[str], wanted: list[str]) -> bool:
    def covered(name: str) -> bool:
        return any(n == name or (n.startswith("*.") and name.split(".", 1)[-1] == n[2:]) for n in names)

    return all(covered(w) for w in wanted)


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One certificate: `issued` (none before), `renewed`, `rolled` (to the next DANE key), or `valid` (kept: not due)."""

    what: str  # "mx" or "mta-sts"
    status: str
    names: list[str]
    not_after: datetime.datetime
    serial: int
    key_sha256: str
    reason: str = ""

    @property
    def changed(self) -> bool:
        return self.status in ("issued", "renewed", "rolled")


@dataclass(frozen=True)
class Settings:
    """tls.acme with the lab's overrides applied (directory, ca_file, dns server and key)."""

    directory: str
    contact: str
    ca_file: Path | None
    renew_days: int
    server: str
    port: int
    key: TsigKey
    zone: str | None
    propagation_seconds: int


def settings(acme: Acme, directory: Path, where: Where, overrides: dict | None = None) -> Settings:
    """Read and check everything a run needs before it talks to anyone; InventoryError (exit 2) if unusable."""
    overrides = overrides or {}
    update = acme.dns_update
    key = overrides["key"] if "key" in overrides else read_tsig(update, directory, where)
    ca_file = overrides.get("ca_file") or (directory / acme.ca_file if acme.ca_file else None)
    if ca_file is not None and not Path(ca_file).is_file():
        raise where.fail(("tls", "acme", "ca_file"), f"cannot read {ca_file}", "a PEM file of CA certificates")
    return Settings(
        directory=overrides.get("directory", acme.directory),
        contact=acme.contact,
        ca_file=Path(ca_file) if ca_file else None,
        renew_days=acme.renew_days,
        server=overrides.get("server", update.server),
        port=overrides.get("port", update.port),
        key=key,
        zone=overrides.get("zone", update.zone),
        propagation_seconds=update.propagation_seconds,
    )


def wanted(topology: Topology) -> dict[str, list[str]]:
    """{store subdirectory: names}: the MX names, and the mta-sts names when MTA-STS has no files of its own."""
    result = {"mx": mx_names(topology)}
    tls = topology.tls
    if tls and tls.mta_sts and not tls.mta_sts.cert_file:
        result["mta-sts"] = [f"mta-sts.{d}" for d in topology.domains]
    return result


def due(current: Held | None, names: list[str], renew_days: int, force: bool, now: datetime.datetime) -> str:
    """Why a certificate must be (re)issued, or "" when the one held will do."""
    if current is None:
        return "none yet"
    if force:
        return "--renew"
    if not _covers(current.names, names):
        return f"it names {', '.join(current.names) or 'nothing'}, not {', '.join(names)}"
    left = current.not_after - now
    if left <= datetime.timedelta(days=renew_days):
        return f"it expires in {max(left.days, 0)} days (renew_days {renew_days})"
    return ""


class Client:
    """The `acme` library's ClientV2 with our account: stored in acme/account.json (0600), reused while
    the directory URL is the same, made anew (and stored) when it is not."""

    def __init__(self, s: Settings, store: Path, where: Where, say: Callable[[str], None]):
        import josepy as jose
        import requests
        from acme import client, errors, messages

        self.s, self.store, self.where, self.say = s, store, where, say
        account_file = store.joinpath(*ACCOUNT)
        saved = None
        if account_file.exists():
            try:
                saved = json.loads(account_file.read_text())
                if saved.get("directory") != s.directory:
                    saved = None
            except (OSError, ValueError):
                saved = None
        if saved:
            account_key = jose.JWK.json_loads(json.dumps(saved["key"]))
        else:
            from cryptography.hazmat.primitives.asymmetric import ec

            account_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        self.account_key = account_key
        verify: bool | str = str(s.ca_file) if s.ca_file else True
        net = client.ClientNetwork(account_key, alg=jose.ES256, verify_ssl=verify, user_agent=USER_AGENT)  # type: ignore[arg-type]
        try:
            directory = client.ClientV2.get_directory(s.directory, net)
        except requests.exceptions.RequestException as exc:
            raise where.fail(
                ("tls", "acme", "directory"), f"the ACME server at {s.directory} cannot be reached: {_short(exc)}", "a reachable ACME directory URL"
            ) from None
        except (errors.Error, ValueError) as exc:
            raise where.fail(("tls", "acme", "directory"), f"{s.directory} is not an ACME directory: {_short(exc)}", "an ACME directory URL") from None
        self.acme = client.ClientV2(directory, net)
        self._saved = saved
        self._account_file = account_file
        self._messages = messages

    def ensure_account(self) -> None:
        from acme import errors

        messages = self._messages
        if self._saved:
            # Asked, not assumed: a CA that lost its state (a test CA restarted, like the lab's pebble) no
            # longer knows the stored account, and every order under it would fail.
            try:
                self.acme.new_account(messages.NewRegistration.from_data(only_return_existing=True))
            except errors.ConflictError as exc:  # the CA knows the key: its account's URL
                self.acme.net.account = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
                return
            except messages.Error as exc:
                if exc.code != "accountDoesNotExist":
                    raise CaRefused(f"the CA at {self.s.directory} refused to look up the stored account: {exc}") from None
                self.say(f"the CA at {self.s.directory} does not know the stored account: opening a new one")
            else:  # a CA that answers 201 to onlyReturnExisting: take the account it names
                return
        contact = self.s.contact if ":" in self.s.contact else f"mailto:{self.s.contact}"
        try:
            regr = self.acme.new_account(messages.NewRegistration.from_data(email=None, contact=(contact,), terms_of_service_agreed=True))
        except errors.ConflictError as exc:  # the key has an account already
            regr = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
            self.acme.net.account = regr
        except messages.Error as exc:
            raise CaRefused(f"the CA at {self.s.directory} refused to open an account for {contact}: {exc}") from None
        record = {"directory": self.s.directory, "uri": regr.uri, "contact": contact, "key": self.account_key.to_json()}
        _write(self._account_file, (json.dumps(record, indent=2) + "\n").encode())
        self.say(f"ACME account opened at {self.s.directory} for {contact}")

    def order(self, key_pem: bytes, names: list[str], updater: Updater) -> bytes:
        """One order for `names`: every DNS-01 challenge answered, the order finalized; the full chain (PEM).
        The challenge records are removed whatever happens."""
        from acme import challenges, crypto_util, errors

        messages = self._messages
        csr = crypto_util.make_csr(key_pem, names)
        try:
            order = self.acme.new_order(csr)
        except messages.Error as exc:
            raise CaRefused(f"the CA refused an order for {', '.join(names)}: {exc}") from None
        placed: list[tuple[str, str]] = []
        try:
            answers = []
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                chall = next((c for c in authz.body.challenges if isinstance(c.chall, challenges.DNS01)), None)
                if chall is None:
                    raise CaRefused(f"the CA offers no DNS-01 challenge for {authz.body.identifier.value}")
                record = chall.chall.validation_domain_name(authz.body.identifier.value)
                value = chall.chall.validation(self.account_key)
                updater.add_txt(record, value)
                placed.append((record, value))
                answers.append((record, value, chall))
            for record, value, _ in answers:
                if not updater.wait_served(record, value, self.s.propagation_seconds):
                    raise self.where.fail(
                        ("tls", "acme", "dns_update", "propagation_seconds"),
                        f"DNS server {self.s.server} did not serve {record} TXT within {self.s.propagation_seconds} s of the update",
                        "more seconds, or the zone's primary as server",
                    )
            for record, _, chall in answers:
                self.say(f"answering DNS-01 for {record.removeprefix('_acme-challenge.')}")
                self.acme.answer_challenge(chall, chall.chall.response(self.account_key))
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=max(90, self.s.propagation_seconds * 2))
            try:
                order = self.acme.poll_and_finalize(order, deadline)
            except errors.ValidationError as exc:
                details = "; ".join(
                    f"{a.body.identifier.value}: {c.error.detail if c.error else c.status}"
                    for a in exc.failed_authzrs
                    for c in a.body.challenges
                    if c.status == messages.STATUS_INVALID
                )
                raise CaRefused(f"the CA did not validate the DNS-01 challenges: {details}") from None
            except errors.TimeoutError:
                raise CaRefused(f"the CA did not finish the order for {', '.join(names)} in time") from None
            except messages.Error as exc:
                raise CaRefused(f"the CA refused the order for {', '.join(names)}: {exc}") from None
        finally:
            for record, value in placed:
                try:
                    updater.delete_txt(record, value)
                except MailforgeError:
                    self.say(f"could not remove {record} TXT; remove it by hand")
        return order.fullchain_pem.encode()


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."


def roll_reason(topology: Topology, store: Path, where: Where, now: datetime.datetime) -> str:
    """Why rolling the MX key to the next one is safe now (its TLSA record has been seen published for
    tls.dane.publish_wait_hours), or RollNotDue saying when it will be; InventoryError without tls.dane."""
    from . import dane
    from .names import mx_names

    if topology.tls.dane is None:
        raise where.fail(
            ("tls", "dane"),
            "--roll-key rolls the MX key to the next DANE key, and without tls.dane there is none",
            "tls.dane: {} and the records `dns zone` prints",
        )
    wait = topology.tls.dane.publish_wait_hours
    owners = ", ".join(dane.tlsa_name(name) for name in mx_names(topology))
    if not (store / dane.NEXT_KEY).is_file():
        raise RollNotDue(f"no next MX key in {store} yet: run `mailforge dns zone`, publish its TLSA records ({owners}), then `mailforge dns check`")
    seen = dane.first_seen(store)
    if seen is None:
        raise RollNotDue(
            f"the next MX key's TLSA record ({owners}) has not been seen published by `mailforge dns check`: publish what `mailforge dns zone` "
            f"prints, run `dns check`, and roll {wait} hours later (tls.dane.publish_wait_hours)"
        )
    if not dane.roll_allowed(seen, now, wait):
        ready = seen + datetime.timedelta(hours=wait)
        raise RollNotDue(
            f"the next MX key's TLSA record ({owners}) was first seen published {seen.isoformat(timespec='seconds')}; resolvers may still hold "
            f"the records from before it: roll from {ready.isoformat(timespec='seconds')} on (tls.dane.publish_wait_hours {wait})"
        )
    return f"--roll-key: the next key's TLSA record published since {seen.isoformat(timespec='seconds')}"


def run(
    topology: Topology,
    directory: Path,
    store: Path,
    renew: bool = False,
    overrides: dict | None = None,
    say: Callable[[str], None] = lambda message: None,
    now: datetime.datetime | None = None,
    roll_key: bool = False,
) -> list[Outcome]:
    """Obtain or renew every certificate `wanted` asks for; the store changes only for a certificate
    actually issued. With `roll_key`, the MX certificate is issued for the next DANE key, which then becomes
    the live one (and a new next key is made). Raises InventoryError (exit 2: could not run), CaRefused or
    RollNotDue (exit 1)."""
    from cryptography import x509

    from . import dane

    tls = topology.tls
    where = Where.of(directory / "topology.yml")
    if tls is None or tls.acme is None:
        raise where.fail(("tls",), "no tls.acme section: certificates come from files or the private CA", "tls.acme with directory, contact, dns_update")
    s = settings(tls.acme, directory, where, overrides)
    now = now or datetime.datetime.now(datetime.UTC)
    rolling = roll_reason(topology, store, where, now) if roll_key else ""
    plan = {sub: (names, held(store / sub)) for sub, names in wanted(topology).items()}
    todo = {sub: due(current, names, s.renew_days, renew, now) for sub, (names, current) in plan.items()}
    if rolling:
        todo["mx"] = rolling
    outcomes: list[Outcome] = []
    for sub, (_, current) in plan.items():
        if not todo[sub] and current:
            outcomes.append(Outcome(sub, "valid", current.names, current.not_after, current.serial, current.key_sha256, "not due"))
    # The key is tried even when nothing is due: a cron job learns of a wrong key long before a renewal needs it.
    leaf = "tsig_key_file" if tls.acme.dns_update.tsig_key_file and "key" not in (overrides or {}) else "tsig_key_env"
    updater = Updater(s.server, s.port, s.key, s.zone, where, leaf)
    for names, _ in plan.values():
        for name in names:
            updater.test(f"_acme-challenge.{name}")
    if not any(todo.values()):
        return outcomes
    client = Client(s, store, where, say)
    client.ensure_account()
    for sub, (names, current) in plan.items():
        if not todo[sub]:
            continue
        key_file = store / sub / "key.pem"
        roll = bool(rolling) and sub == "mx"
        key_pem = (store / dane.NEXT_KEY).read_bytes() if roll else key_file.read_bytes() if key_file.exists() else new_key_pem()
        say(f"ordering a certificate for {', '.join(names)} ({todo[sub]})")
        chain = client.order(key_pem, names, updater)
        cert = x509.load_pem_x509_certificates(chain)[0]
        if roll or not key_file.exists():
            _write(key_file, key_pem)  # a crash before the chain follows leaves a pair deploy refuses, never a wrong one shipped
        _write(store / sub / "chain.pem", chain)
        if roll:
            (store / dane.NEXT_SEEN).unlink(missing_ok=True)
            (store / dane.NEXT_KEY).unlink()
            dane.ensure_next_key(store)
            say("the next key is live; a new next key was made: publish its TLSA record (`mailforge dns zone`) and remove the old live key's")
        got = describe(cert)
        status = "rolled" if roll else "renewed" if current else "issued"
        outcomes.append(Outcome(sub, status, got.names, got.not_after, got.serial, got.key_sha256, todo[sub]))
    return outcomes


def write_trust(store: Path, pem: bytes) -> None:
    """The store's trust.pem: CA certificates `verify` trusts besides the system's (the lab's ACME root)."""
    _write(store / "trust.pem", pem)
