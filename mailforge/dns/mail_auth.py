"""The DKIM and DMARC rows of `mailforge dns check`.

DKIM: a record that exists is not enough: receivers verify signatures against the p= they find, so the row
compares it with the public half of the key in the controller's store, the key the hosts sign with. The keys
come in as `DkimInputs` (the CLI reads the store: this package does not import `mailforge.dkim`, which builds
on it), and the rows that matched are written back into `DkimInputs.seen`, which the CLI hands to
`dkim.record_seen`: that is what switches signing to a new selector.

DMARC: exactly one v=DMARC1 record at _dmarc.<domain> (RFC 7489 6.6.3: with two, receivers apply none),
with the tags the inventory asks for.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from .queries import Answer, Querier
from .records import DMARC_DEFAULTS, dmarc_name, dmarc_record, dmarc_tags

if TYPE_CHECKING:
    from ..inventory import Topology

OK, FAIL = "ok", "fail"


class PublishedKey(Protocol):
    """What the DKIM row needs of a selector (mailforge.dkim.SigningKey has it)."""

    @property
    def domain(self) -> str: ...
    @property
    def selector(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    def public_p(self) -> str: ...


@dataclass
class DkimInputs:
    """The selectors whose records must be published (with their keys' public halves), and, filled by the checks,
    (domain, selector) -> ISO time for each record seen with exactly its key."""

    keys: Sequence[PublishedKey]
    unkeyed: Sequence[str] = ()  # signed domains with no key in the store yet
    seen: dict[tuple[str, str], str] = field(default_factory=dict)
    now: datetime | None = None


def tags(text: str) -> dict[str, str]:
    """A tag=value list (RFC 6376 3.2, RFC 7489 6.4) as a dict; raises ValueError for a malformed one."""
    found: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name or not name.replace("_", "").isalnum():
            raise ValueError(f"{part!r} is not tag=value")
        if name in found:
            raise ValueError(f"tag {name} appears twice")
        found[name] = "".join(value.split())  # folding whitespace inside a value is not part of it
    return found


def digest(p: str) -> str:
    """A short, public fingerprint of a p= value (sha256 of its decoded bytes), to name two keys apart."""
    try:
        raw = base64.b64decode(p, validate=True)
    except ValueError:
        raw = p.encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:16]


def _failure(answer: Answer) -> str:
    return {"timeout": "timeout", "servfail": "servfail"}.get(answer.status, "error")


def dkim_checks(q: Querier, inputs: DkimInputs) -> list[tuple[str, str, str, str]]:
    """(subject, check, status, evidence) per published selector: its TXT record exists, parses, and its p= is the store's key."""
    now = (inputs.now or datetime.now().astimezone()).isoformat(timespec="seconds")
    q.prefetch([(f"{k.selector}._domainkey.{k.domain}", "TXT") for k in inputs.keys])
    rows = [
        (domain, "DKIM", FAIL, "no DKIM key in the controller's store yet, so nothing signs: `mailforge dns zone` makes it and prints its record to publish")
        for domain in inputs.unkeyed
    ]
    for key in inputs.keys:
        name = f"{key.selector}._domainkey.{key.domain}"
        check = f"DKIM {key.selector}"
        answer = q.lookup(name, "TXT")
        if answer.failed:
            rows.append((key.domain, check, _failure(answer), answer.describe()))
            continue
        if answer.status != "ok":
            rows.append((key.domain, check, FAIL, f"no record at {name} ({answer.describe()}): publish the one `mailforge dns zone` prints"))
            continue
        expected = key.public_p()
        found = [v for v in answer.values if "p=" in v or v.lstrip().startswith("v=DKIM1")]
        if len(found) != 1:
            what = f"{len(found)} DKIM records" if found else "no DKIM record (no p= tag)"
            rows.append((key.domain, check, FAIL, f"{name}: {what}; expected one, with {key.algorithm} key {digest(expected)}"))
            continue
        try:
            parsed = tags(found[0])
        except ValueError as exc:
            rows.append((key.domain, check, FAIL, f"{name}: does not parse: {exc}"))
            continue
        problems = []
        if "v" in parsed and parsed["v"] != "DKIM1":
            problems.append(f"v={parsed['v']}, not DKIM1")
        if parsed.get("k", "rsa") != key.algorithm:
            problems.append(f"k={parsed.get('k', 'rsa (by default)')}, but the store's key is {key.algorithm}")
        p = parsed.get("p")
        if p is None:
            problems.append("no p= tag")
        elif p == "":
            problems.append("p= is empty: the key is revoked")
        elif p != expected:
            problems.append(f"p= is key {digest(p)}, not the store's key {digest(expected)} that the hosts sign with")
        if problems:
            rows.append((key.domain, check, FAIL, f"{name}: " + "; ".join(problems)))
            continue
        inputs.seen[(key.domain, key.selector)] = now
        rows.append((key.domain, check, OK, f"{name}: {key.algorithm} key {digest(expected)}, the store's key"))
    return rows


def dmarc_check(domain: str, topology: Topology, q: Querier) -> tuple[str, str, str, str]:
    """The _dmarc record of a hosted domain: present, exactly one, parses, and says what the inventory says."""
    assert topology.dmarc is not None
    name, check = dmarc_name(domain), "DMARC"
    wanted = dmarc_record(topology.dmarc)
    answer = q.lookup(name, "TXT")
    if answer.failed:
        return (domain, check, _failure(answer), answer.describe())
    records = [v for v in answer.values if v.replace(" ", "").startswith("v=DMARC1")] if answer.status == "ok" else []
    if not records:
        return (domain, check, FAIL, f'no DMARC record at {name} ({answer.describe()}); expected "{wanted}"')
    if len(records) > 1:
        return (domain, check, FAIL, f"{len(records)} DMARC records at {name}, so receivers apply none: " + " | ".join(records))
    try:
        found = tags(records[0])
    except ValueError as exc:
        return (domain, check, FAIL, f'{name}: does not parse: {exc} ["{records[0]}"]; expected "{wanted}"')
    expected = dmarc_tags(topology.dmarc)
    defaults = {**DMARC_DEFAULTS, "sp": expected["p"]}
    problems = []
    for tag in ("p", "sp", "pct", "adkim", "aspf"):
        want, got = expected.get(tag) or defaults[tag], found.get(tag, defaults.get(tag))
        if (got or "").lower() != want.lower():
            problems.append(f"{tag}={got if got is not None else '(absent)'}, not {want}")
    for tag in ("rua", "ruf"):
        want_uris = sorted(u.lower() for u in expected.get(tag, "").split(",") if u)
        got_uris = sorted(u.lower() for u in found.get(tag, "").split(",") if u)
        if want_uris != got_uris:
            problems.append(f"{tag}={found.get(tag, '(absent)')}, not {expected.get(tag, '(absent)')}")
    if problems:
        return (domain, check, FAIL, f"{name}: " + "; ".join(problems) + f' ["{records[0]}"]')
    return (domain, check, OK, f'{name}: "{records[0]}"')
