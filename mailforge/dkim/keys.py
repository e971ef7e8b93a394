"""The controller's DKIM key store and the lifecycle of a selector.

Layout, under the cluster's TLS store (`tls.store_of(cluster)`), beside the other private keys:

    dkim/<domain>/<selector>.key    private key, PEM PKCS8, 0600 (directory 0700); RSA 2048 or Ed25519
    dkim/<domain>/state.json        {"selectors": [{"name", "algorithm", "created", "seen", "signing_since", "retired_since"}]}

Why a lifecycle: a receiver can only verify a signature whose selector's record it finds in DNS, so a new
key must never sign before its record is published. A selector is *made* (its record must be published),
then *signing* once `dns check` has seen its record with exactly its public key (the newest seen selector
per domain and algorithm signs; the one before stops), then *published* (superseded: it no longer signs,
but its record stays for `dkim.retire_after_hours`, so mail signed just before the switch still verifies),
then *retired* (its record may be removed). Times are ISO 8601 with offset.

Only public halves are ever read out of here (the TXT value); the private key stays in its file, which
only the role's no_log task ships.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ..dns.records import Record, txt_value
from ..errors import MailforgeError
from ..inventory import Topology
from ..tls.internal import ensure_dir, write_atomic

RSA_BITS = 2048
STATE_FILE = "state.json"
SELECTOR_PATTERN = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
SELECTOR_MAX = 63
MADE, SIGNING, PUBLISHED, RETIRED = "made", "signing", "published", "retired"


class DkimError(MailforgeError):
    """The DKIM store cannot be used as it is (a key file unreadable or not a key, a corrupt state.json),
    or a request names a selector or domain that cannot be: the message names the file or value and the fix."""


def now() -> datetime:
    return datetime.now().astimezone()


def directory_of(store: Path) -> Path:
    return store / "dkim"


def domain_directory(store: Path, domain: str) -> Path:
    return directory_of(store) / domain


def signed_domains(topology: Topology) -> list[str]:
    """The domains whose mail is signed: dkim.domains, or every hosted domain; none without a dkim section."""
    if topology.dkim is None:
        return []
    return sorted(dict.fromkeys(str(d) for d in (topology.dkim.domains or topology.domains)))


def valid_selector(name: str) -> bool:
    return len(name) <= SELECTOR_MAX and re.fullmatch(SELECTOR_PATTERN, name) is not None


# --- the selectors of one domain --------------------------------------------------------------------


@dataclass
class Selector:
    """One selector of one domain, as state.json keeps it."""

    name: str
    algorithm: str
    created: str
    seen: str | None = None
    signing_since: str | None = None
    retired_since: str | None = None

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "algorithm": self.algorithm,
            "created": self.created,
            "seen": self.seen,
            "signing_since": self.signing_since,
            "retired_since": self.retired_since,
        }


@dataclass
class DomainState:
    domain: str
    path: Path
    selectors: list[Selector] = field(default_factory=list)

    def find(self, name: str) -> Selector | None:
        return next((s for s in self.selectors if s.name == name), None)


def _time(text: str | None, where: str) -> datetime | None:
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise DkimError(f"{where}: {text!r} is not an ISO 8601 time (fix the value, or remove the file to start the domain's keys again)") from None
    return parsed if parsed.tzinfo else parsed.astimezone()


def load_state(store: Path, domain: str) -> DomainState:
    """The domain's state.json (empty when absent); a corrupt one raises DkimError naming the file."""
    path = domain_directory(store, domain) / STATE_FILE
    state = DomainState(domain, path)
    if not path.exists():
        return state
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DkimError(f"cannot read {path}: {exc.strerror or exc} (make it readable by this user)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DkimError(f"{path}: not JSON ({exc}); restore it from a backup, or remove it and the domain's keys to start again") from None
    entries = data.get("selectors") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DkimError(f'{path}: no "selectors" list; restore it from a backup, or remove it and the domain\'s keys to start again')
    for index, entry in enumerate(entries):
        where = f"{path}: selectors[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("created"), str):
            raise DkimError(f'{where}: not a selector (expected {{"name", "algorithm", "created", ...}}); restore the file from a backup')
        if not valid_selector(entry["name"]):
            raise DkimError(f"{where}.name: {entry['name']!r} is not a DNS label (letters a-z, digits, inner hyphens); restore the file from a backup")
        if entry.get("algorithm") not in ("rsa", "ed25519"):
            raise DkimError(f"{where}.algorithm: {entry.get('algorithm')!r} is neither rsa nor ed25519; restore the file from a backup")
        for key in ("created", "seen", "signing_since", "retired_since"):
            _time(entry.get(key), f"{where}.{key}")
        state.selectors.append(
            Selector(entry["name"], entry["algorithm"], entry["created"], entry.get("seen"), entry.get("signing_since"), entry.get("retired_since"))
        )
    return state


def save_state(state: DomainState) -> None:
    data = {"selectors": [s.as_json() for s in state.selectors]}
    write_atomic(state.path, (json.dumps(data, indent=1) + "\n").encode())


# --- keys -------------------------------------------------------------------------------------------


def new_private_key(algorithm: str):
    if algorithm == "rsa":
        return rsa.generate_private_key(65537, RSA_BITS)
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown DKIM algorithm {algorithm!r}")


def load_private_key(path: Path, algorithm: str):
    """The private key in `path`, checked to be of `algorithm`; DkimError naming the file (never its content)."""
    give_up = f"restore it from a backup; or, to give the selector up, remove its entry from {path.parent / STATE_FILE} and its TXT record from DNS"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DkimError(f"{path}: the key file is missing: {give_up}") from None
    except OSError as exc:
        raise DkimError(f"cannot read the key file {path}: {exc.strerror or exc} (make it readable by this user: mode 0600, owned by you)") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise DkimError(f"{path}: not an unencrypted PEM private key: {give_up}") from None
    expected = rsa.RSAPrivateKey if algorithm == "rsa" else ed25519.Ed25519PrivateKey
    if not isinstance(key, expected):
        raise DkimError(f"{path}: not an {algorithm} key, as {STATE_FILE} says it is: {give_up}")
    return key


def public_p(key) -> str:
    """The p= of a DKIM record: base64 of the SubjectPublicKeyInfo (rsa, RFC 6376), or of the raw 32-byte key (ed25519, RFC 8463)."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def txt_of(algorithm: str, p: str) -> str:
    return f"v=DKIM1; k={algorithm}; p={p}"


@dataclass(frozen=True)
class SigningKey:
    """A selector's key as the hosts use it and DNS publishes it."""

    domain: str
    selector: str
    algorithm: str  # "rsa" | "ed25519"
    key_path: Path  # the 0600 file in the store

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def public_p(self) -> str:
        return public_p(load_private_key(self.key_path, self.algorithm))

    def public_txt(self) -> str:
        """The TXT value, unsplit: "v=DKIM1; k=rsa; p=..."."""
        return txt_of(self.algorithm, self.public_p())


def key_path(store: Path, domain: str, selector: str) -> Path:
    return domain_directory(store, domain) / f"{selector}.key"


# --- the lifecycle ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """What `dkim status` shows for one selector (pure: from state.json and the time)."""

    domain: str
    selector: str
    algorithm: str
    state: str  # made, signing, published, retired
    created: datetime
    seen: datetime | None
    signing_since: datetime | None
    retired_since: datetime | None
    remove_after: datetime | None  # published / retired: when its record may go
    next_step: str


def _oldest_first(state: DomainState, selectors) -> list[Selector]:
    """By creation time; two made in the same second keep the order they were made in (state.json's)."""
    position = {id(s): i for i, s in enumerate(state.selectors)}
    return sorted(selectors, key=lambda s: (_time(s.created, "created"), position[id(s)]))


def statuses(state: DomainState, retire_after_hours: int, at: datetime) -> list[Status]:
    """Every selector of a domain with its state, oldest first."""
    found = []
    hours = timedelta(hours=retire_after_hours)
    for s in _oldest_first(state, state.selectors):
        created = _time(s.created, "created")
        assert created is not None
        seen, signing, retired = _time(s.seen, "seen"), _time(s.signing_since, "signing_since"), _time(s.retired_since, "retired_since")
        name = f"{s.name}._domainkey.{state.domain}"
        remove_after = retired + hours if retired else None
        if retired and remove_after and at >= remove_after:
            what, step = RETIRED, f"remove the TXT record {name} (no longer needed since {remove_after:%Y-%m-%d %H:%M %Z})"
        elif retired:
            what, step = PUBLISHED, f"no longer signs; keep its record until {remove_after:%Y-%m-%d %H:%M %Z}, then remove it"
        elif seen:
            what, step = SIGNING, "signs this domain's mail (shipped by `mailforge deploy`)"
        else:
            what, step = MADE, f"publish its TXT record {name} (`mailforge dns zone`), then run `mailforge dns check`: signing switches once it is seen"
        found.append(Status(state.domain, s.name, s.algorithm, what, created, seen, signing, retired, remove_after, step))
    return found


def _settle(state: DomainState, algorithms: list[str]) -> bool:
    """Pure bookkeeping after a record was seen: per algorithm, the newest seen selector signs (signing_since:
    when its record was seen), every older one stops (retired_since: when the newer one was seen). True if changed."""
    changed = False
    for algorithm in dict.fromkeys([*algorithms, *(s.algorithm for s in state.selectors)]):
        seen = _oldest_first(state, [s for s in state.selectors if s.algorithm == algorithm and s.seen])
        if not seen:
            continue
        newest = seen[-1] if algorithm in algorithms else None
        if newest is not None and newest.signing_since is None and newest.retired_since is None:
            newest.signing_since, changed = newest.seen, True
        for older in seen[:-1] if newest is not None else seen:
            if older.retired_since is None:
                older.retired_since = newest.seen if newest is not None else older.seen
                changed = True
    return changed


# --- the API the CLI and the hosts' shipment use ------------------------------------------------------


def _retire_hours(topology: Topology) -> int:
    return topology.dkim.retire_after_hours if topology.dkim else 0


def _algorithms(topology: Topology) -> list[str]:
    return list(topology.dkim.algorithms) if topology.dkim else []


def next_selector_name(taken: set[str], algorithm: str, day: datetime) -> str:
    """mf<YYYYMMDD> (rsa) / mf<YYYYMMDD>e (ed25519), then -2, -3 ... when taken."""
    base = f"mf{day:%Y%m%d}" + ("e" if algorithm == "ed25519" else "")
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def _make(store: Path, state: DomainState, algorithm: str, name: str, at: datetime) -> Path:
    key = new_private_key(algorithm)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = key_path(store, state.domain, name)
    ensure_dir(path.parent)
    write_atomic(path, pem)
    state.selectors.append(Selector(name, algorithm, at.isoformat(timespec="seconds")))
    return path


def check_store(topology: Topology, store: Path) -> list[DomainState]:
    """Every signed domain's state, each key file read and parsed: DkimError on the first that cannot be."""
    states = []
    for domain in signed_domains(topology):
        state = load_state(store, domain)
        for s in state.selectors:
            load_private_key(key_path(store, domain, s.name), s.algorithm)
        states.append(state)
    return states


def ensure_keys(topology: Topology, store: Path) -> list[Path]:
    """Make a domain's first key for each of dkim.algorithms when it has none that is not retired (no dkim section:
    nothing). Returns the key files written. The store is checked first, so a bad file stops it before anything is written."""
    at = now()
    written = []
    for state in check_store(topology, store):
        taken = {s.name for s in state.selectors}
        made = []
        for algorithm in _algorithms(topology):
            if any(s.algorithm == algorithm and s.retired_since is None for s in state.selectors):
                continue
            name = next_selector_name(taken, algorithm, at)
            taken.add(name)
            made.append(_make(store, state, algorithm, name, at))
        if made:
            save_state(state)
        written += made
    return written


def rotate(topology: Topology, store: Path, domain: str | None = None, selector: str | None = None, at: datetime | None = None) -> list[SigningKey]:
    """`dkim rotate`: the next selector per algorithm of `domain` (or of every signed domain). With `selector`, that name
    (ed25519 beside rsa gets it with an "e" appended). Everything is checked before anything is written."""
    at = at or now()
    domains = signed_domains(topology)
    if topology.dkim is None:
        raise DkimError("the topology has no dkim section: nothing is signed")
    if domain is not None:
        wanted = domain.lower().rstrip(".")
        if wanted not in domains:
            hosted = wanted in {str(d) for d in topology.domains}
            why = "is hosted, but not in dkim.domains" if hosted else "is not a hosted domain"
            raise DkimError(f"--domain {domain}: {why}; signed domains: {', '.join(domains)} (add it to dkim.domains, or name one of those)")
        domains = [wanted]
    algorithms = _algorithms(topology)
    names: dict[str, str] = {}
    if selector is not None:
        for algorithm in algorithms:
            name = selector + ("e" if algorithm == "ed25519" and len(algorithms) > 1 else "")
            if not valid_selector(name):
                raise DkimError(
                    f"--selector {selector!r}: {name!r} is not a DNS label: lowercase letters a-z, digits and inner hyphens, "
                    f"at most {SELECTOR_MAX} characters (e.g. mf2026a)"
                )
            names[algorithm] = name
    states = [s for s in check_store(topology, store) if s.domain in domains]
    for state in states:
        for name in names.values():
            if state.find(name):
                raise DkimError(f"--selector {selector}: {state.domain} has a selector {name} already (choose another name)")
    made = []
    for state in states:
        taken = {s.name for s in state.selectors}
        for algorithm in algorithms:
            name = names.get(algorithm) or next_selector_name(taken, algorithm, at)
            taken.add(name)
            path = _make(store, state, algorithm, name, at)
            made.append(SigningKey(state.domain, name, algorithm, path))
        save_state(state)
    return made


def status(topology: Topology, store: Path, at: datetime | None = None) -> list[Status]:
    """Every signed domain's selectors with their state (the store checked: key files read)."""
    at = at or now()
    return [s for state in check_store(topology, store) for s in statuses(state, _retire_hours(topology), at)]


def _keys(topology: Topology, store: Path, states: set[str]) -> list[SigningKey]:
    return [
        SigningKey(s.domain, s.selector, s.algorithm, key_path(store, s.domain, s.selector))
        for s in status(topology, store)
        if s.state in states and (s.state != SIGNING or s.algorithm in _algorithms(topology))
    ]


def signing_keys(topology: Topology, store: Path) -> list[SigningKey]:
    """What the hosts sign with now: per domain and algorithm, the newest selector whose record `dns check` has seen."""
    return _keys(topology, store, {SIGNING})


def published_keys(topology: Topology, store: Path) -> list[SigningKey]:
    """Every selector whose record must be in DNS now: made (about to sign), signing, and published (superseded, kept
    for dkim.retire_after_hours); not retired."""
    return _keys(topology, store, {MADE, SIGNING, PUBLISHED})


def retired(topology: Topology, store: Path) -> list[Status]:
    """Selectors whose record may be removed."""
    return [s for s in status(topology, store) if s.state == RETIRED]


def dkim_records(topology: Topology, store: Path) -> list[Record]:
    """The TXT record at <selector>._domainkey.<domain> of every published selector, in the domain's zone,
    split into strings of at most 255 bytes (RFC 1035 character-strings)."""
    states = {(s.domain, s.selector): s for s in status(topology, store)}
    records = []
    for key in published_keys(topology, store):
        state = states[(key.domain, key.selector)]
        what = {MADE: "new: signs once `dns check` sees this record", SIGNING: "signing", PUBLISHED: "superseded: keep until " + _short(state.remove_after)}
        records.append(
            Record(key.domain, key.record_name, "TXT", txt_value(key.public_txt()), f"DKIM {key.algorithm} selector {key.selector}: {what[state.state]}")
        )
    return records


def _short(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M %Z}" if at else ""


def zone_notes(topology: Topology, store: Path) -> list[str]:
    """Comment lines for `dns zone`: the retired selectors whose records to remove."""
    return [
        f"DKIM: remove the TXT record {s.selector}._domainkey.{s.domain} (selector {s.selector}, {s.algorithm}: retired since {_short(s.remove_after)})"
        for s in retired(topology, store)
    ]


def record_seen(topology: Topology, store: Path, seen: dict[tuple[str, str], str]) -> None:
    """`dns check` saw these selectors' records published with exactly their public key, at the given ISO times:
    keep each first time, and switch signing to the newest seen selector per domain and algorithm."""
    by_domain: dict[str, dict[str, str]] = {}
    for (domain, selector), when in seen.items():
        by_domain.setdefault(domain, {})[selector] = when
    for domain, selectors in sorted(by_domain.items()):
        state = load_state(store, domain)
        changed = False
        for name, when in selectors.items():
            entry = state.find(name)
            if entry is not None and entry.seen is None:
                entry.seen, changed = when, True
        if _settle(state, _algorithms(topology)) or changed:
            save_state(state)
