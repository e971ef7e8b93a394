"""The TLS rows of `mailforge dns check`: DANE's TLSA records against the key each relay presents
through the front door, the MTA-STS policy fetched over HTTPS against the MX records and its TXT id,
and the TLS-RPT record. Each failing row names the record at fault.

Everything is resolved through the nameserver being checked (the `Querier`), never the system's
resolver, so a zone not yet delegated can be checked before it goes live.

What the controller's store holds comes in through `TlsInputs` (the CLI reads it); this module
writes two things back, both public: when the next MX key's TLSA record was first seen published
(mx/next-key.seen, what `may_roll` reads) and the last policy and id seen per domain
(mta-sts/seen.json), so a policy that changed under an unchanged id is caught on the next run.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from ..render.mta_sts import WELL_KNOWN, policy_id, policy_url
from ..tls import dane
from ..tls.dane import tlsa_name
from ..tls.names import mx_names
from .mta_sts import tlsrpt_txt
from .queries import Answer, Querier
from .tlsa import tlsa_value

if TYPE_CHECKING:
    from ..inventory import Topology

OK, FAIL, TIMEOUT, SERVFAIL, ERROR = "ok", "fail", "timeout", "servfail", "error"
SEEN_POLICIES = "mta-sts/seen.json"
HTTPS_PORT = 443
MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 3.3: senders may refuse larger policies


@dataclass
class TlsInputs:
    """What `dns check` needs from the controller: the store, the expected MX keys, the CA files to trust."""

    store: Path
    keys: dane.DaneKeys
    trust_files: list[Path] = field(default_factory=list)
    timeout: float = 5.0
    now: datetime | None = None


@dataclass
class TlsCheck:
    subject: str
    check: str
    status: str
    evidence: str


def _failure(answer: Answer) -> str:
    return {"timeout": TIMEOUT, "servfail": SERVFAIL}.get(answer.status, ERROR)


def tls_checks(topology: Topology, q: Querier, inputs: TlsInputs) -> list[TlsCheck]:
    """The TLS rows, in a stable order: TLSA per MX name (tls.dane), then per domain MTA-STS (tls.mta_sts)
    and TLS-RPT (tls.tls_rpt)."""
    t = topology
    checks: list[TlsCheck] = []
    if t.tls.dane is not None:
        for name in mx_names(t):
            checks.append(_check_tlsa(t, name, q, inputs))
    if t.tls.mta_sts is not None:
        seen = _read_seen(inputs.store)
        for domain in sorted(t.domains):
            checks.extend(_check_mta_sts(domain, q, inputs, seen))
        _write_seen(inputs.store, seen)
    if t.tls.tls_rpt is not None:
        for domain in sorted(t.domains):
            checks.append(_check_tlsrpt(t, domain, q))
    return checks


# --- DANE -----------------------------------------------------------------------------------------


def _smtp_port(t: Topology, name: str) -> tuple[int, int]:
    """(port, connections to make) for an MX name: a balancer's frontend port, once per relay behind it
    (round robin, so every relay is seen), else the relay's own port 25 (an MX proxy's inbound port)."""
    for lb in t.load_balancers:
        if lb.fqdn == name:
            return lb.frontend_port, max(1, len(t.relays))
    for r in t.relays:
        if r.fqdn == name and r.instances is not None and r.instances.inbound is not None:
            return r.instances.inbound.port, 1
    return 25, 1


def presented_digest(name: str, address: str, port: int, timeout: float) -> str:
    """STARTTLS to address:port, as a sending MTA would; the SPKI digest of the certificate presented.
    Unverified on purpose: DANE-EE (3 1 1) authenticates the key, whoever issued the certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(address, port, local_hostname="dns-check.mailforge.invalid", timeout=timeout) as smtp:
        smtp._host = name  # type: ignore[attr-defined]  # the SNI a sending MTA gives: the MX name, not the address connected to
        smtp.ehlo("dns-check.mailforge.invalid")
        smtp.starttls(context=context)
        der = smtp.sock.getpeercert(binary_form=True) if isinstance(smtp.sock, ssl.SSLSocket) else None
        if not der:
            raise OSError("no certificate presented")
        return dane.public_key_digest(x509.load_der_x509_certificate(der).public_key())


def _check_tlsa(t: Topology, name: str, q: Querier, inputs: TlsInputs) -> TlsCheck:
    owner = tlsa_name(name)
    check = "TLSA (DANE)"
    answer = q.lookup(owner, "TLSA")
    if answer.failed:
        return TlsCheck(owner, check, _failure(answer), answer.describe())
    published = {str(v).lower() for v in answer.values} if answer.status == "ok" else set()
    keys = inputs.keys
    problems: list[str] = []
    if keys.live is None:
        problems.append(f"no live MX key in the store {inputs.store} to compare with (`mailforge deploy` or `certs` makes it)")
    elif tlsa_value(keys.live) not in published:
        problems.append(f"record {owner} TLSA {tlsa_value(keys.live)} (live MX key) is not published")
    if keys.next is not None and tlsa_value(keys.next) not in published:
        problems.append(f"record {owner} TLSA {tlsa_value(keys.next)} (next MX key) is not published: a key roll would break DANE")
    addresses = [a for rtype in ("A", "AAAA") for ans in [q.lookup(name, rtype)] if ans.status == "ok" for a in ans.values]
    port, times = _smtp_port(t, name)
    presented: dict[str, list[str]] = {}
    for address in addresses:
        for _ in range(times):
            where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            try:
                digest = presented_digest(name, address, port, inputs.timeout)
            except (OSError, smtplib.SMTPException, ssl.SSLError, ValueError) as exc:
                problems.append(f"STARTTLS to {name} at {where}: {exc}")
                break
            presented.setdefault(digest, [])
            if where not in presented[digest]:
                presented[digest].append(where)
    if not addresses:
        problems.append(f"{name} does not resolve: no relay's key to compare with")
    for digest, places in presented.items():
        if tlsa_value(digest) not in published:
            shown = ", ".join(sorted(published)) or "none"
            problems.append(f"stale record {owner} TLSA: the key presented at {', '.join(places)} is 3 1 1 {digest}, published: {shown}")
    known = {tlsa_value(d) for d in (keys.live, keys.next, *presented) if d}
    stale = sorted(v for v in published if v.startswith("3 1 1 ") and v not in known)
    if stale:
        problems.append(f"stale record {owner} TLSA {'; '.join(stale)}: matches no key in the store nor any presented (remove it)")
    if keys.next is not None and tlsa_value(keys.next) in published:
        since = dane.record_seen(inputs.store, keys.next, inputs.now or datetime.now().astimezone())
        seen_note = f"; next key's record first seen {since.isoformat(timespec='seconds')}"
    else:
        seen_note = ""
    if problems:
        return TlsCheck(owner, check, FAIL, "; ".join(problems))
    shown_presented = "; ".join(f"{', '.join(w)} presents 3 1 1 {d[:16]}..." for d, w in presented.items())
    return TlsCheck(owner, check, OK, f"{len(published)} record(s) published, live and next key among them; {shown_presented}{seen_note}")


# --- MTA-STS ----------------------------------------------------------------------------------------


def _trust_context(inputs: TlsInputs) -> ssl.SSLContext:
    """The system's CAs plus the inventory's trust_file, the store's trust.pem and the private CA."""
    context = ssl.create_default_context()
    for path in inputs.trust_files:
        if path.is_file():
            context.load_verify_locations(cafile=str(path))
    return context


def fetch_policy(host: str, address: str, context: ssl.SSLContext, timeout: float) -> str:
    """GET https://<host>/.well-known/mta-sts.txt from `address` (SNI and certificate checked for `host`);
    raises OSError (or ssl.SSLError) on a network, TLS or HTTP failure, as RFC 8461 3.3 wants it (200, text/plain)."""
    with socket.create_connection((address, HTTPS_PORT), timeout=timeout) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET {WELL_KNOWN} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mailforge-dns-check\r\nConnection: close\r\n\r\n".encode("ascii"))
        response = http.client.HTTPResponse(tls)  # reads through makefile(), which an SSLSocket has
        response.begin()
        body = response.read(MAX_POLICY_BYTES + 1)
        if response.status != 200:
            raise OSError(f"HTTP {response.status} {response.reason}")
        kind = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "text/plain":
            raise OSError(f"Content-Type {kind or 'missing'}, not text/plain")
        if len(body) > MAX_POLICY_BYTES:
            raise OSError(f"policy larger than {MAX_POLICY_BYTES} bytes")
        return body.decode("utf-8", errors="replace")


def parse_policy(text: str) -> dict[str, list[str]]:
    """key -> values of an RFC 8461 policy (CRLF or LF lines, `key: value`)."""
    fields: dict[str, list[str]] = {}
    for line in re.split(r"\r?\n", text):
        if ":" in line:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), []).append(value.strip())
    return fields


def _mx_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and "." not in host[: -len(pattern) + 1]
    return pattern.lower() == host.lower()


def _check_mta_sts(domain: str, q: Querier, inputs: TlsInputs, seen: dict) -> list[TlsCheck]:
    owner = f"_mta-sts.{domain}"
    host = f"mta-sts.{domain}"
    url = policy_url(domain)
    rows: list[TlsCheck] = []
    txt = q.lookup(owner, "TXT")
    sts = [v for v in txt.values if str(v).lower().startswith("v=stsv1")] if txt.status == "ok" else []
    record_id = None
    if txt.failed:
        rows.append(TlsCheck(domain, "MTA-STS record", _failure(txt), txt.describe()))
    elif len(sts) != 1:
        rows.append(TlsCheck(domain, "MTA-STS record", FAIL, f"record {owner} TXT: {len(sts)} v=STSv1 records, expected exactly one ({txt.describe()})"))
    else:
        match = re.search(r"(?:^|;)\s*id=([A-Za-z0-9]{1,32})\s*(?:;|$)", sts[0])
        if match is None:
            rows.append(TlsCheck(domain, "MTA-STS record", FAIL, f'record {owner} TXT "{sts[0]}": no valid id= (1 to 32 letters and digits)'))
        else:
            record_id = match.group(1)
            rows.append(TlsCheck(domain, "MTA-STS record", OK, f'{owner} TXT "{sts[0]}"'))
    addresses = [a for rtype in ("A", "AAAA") for ans in [q.lookup(host, rtype)] if ans.status == "ok" for a in ans.values]
    policy = None
    if not addresses:
        rows.append(TlsCheck(domain, "MTA-STS policy", FAIL, f"record {host} A/AAAA: does not resolve, so {url} cannot be fetched"))
    else:
        try:
            policy = fetch_policy(host, addresses[0], _trust_context(inputs), inputs.timeout)
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            rows.append(TlsCheck(domain, "MTA-STS policy", FAIL, f"{url} (at {addresses[0]}): {exc}"))
    if policy is not None:
        rows.append(_check_policy_content(domain, url, policy, q))
    if policy is not None and record_id is not None:
        rows.append(_check_policy_id(domain, owner, record_id, policy, seen))
    return rows


def _check_policy_content(domain: str, url: str, policy: str, q: Querier) -> TlsCheck:
    fields = parse_policy(policy)
    problems = []
    if fields.get("version") != ["STSv1"]:
        problems.append(f"version {fields.get('version')}, expected STSv1")
    if fields.get("mode", [""])[0] not in ("enforce", "testing", "none") or len(fields.get("mode", [])) != 1:
        problems.append(f"mode {fields.get('mode')}, expected one of enforce, testing, none")
    if len(fields.get("max_age", [])) != 1 or not fields["max_age"][0].isdigit():
        problems.append(f"max_age {fields.get('max_age')}, expected one number of seconds")
    patterns = fields.get("mx", [])
    mx = q.lookup(domain, "MX")
    hosts = sorted(h for _, h in mx.values) if mx.status == "ok" else []
    not_mx = [p for p in patterns if not any(_mx_matches(p, h) for h in hosts)]
    uncovered = [h for h in hosts if not any(_mx_matches(p, h) for p in patterns)]
    if not_mx:
        problems.append(f"names {', '.join(not_mx)}, not an MX of {domain} (record {domain} MX: {', '.join(hosts) or 'none'})")
    if uncovered:
        problems.append(f"does not name MX {', '.join(uncovered)} (record {domain} MX): senders in enforce mode would refuse it")
    if problems:
        return TlsCheck(domain, "MTA-STS policy", FAIL, f"{url}: " + "; ".join(problems))
    return TlsCheck(
        domain, "MTA-STS policy", OK, f"{url}: mode {fields['mode'][0]}, mx {', '.join(patterns)} == the MX records, max_age {fields['max_age'][0]}"
    )


def _check_policy_id(domain: str, owner: str, record_id: str, policy: str, seen: dict) -> TlsCheck:
    """The TXT id is the hash of the policy served (as `dns zone` prints it), and a policy that changed since
    the last check came with a new id: senders fetch a policy again only when its id changes."""
    expected = policy_id(policy)
    before = seen.get(domain)
    if isinstance(before, dict) and before.get("policy") != policy and before.get("id") == record_id:
        return TlsCheck(
            domain,
            "MTA-STS id",
            FAIL,
            f"record {owner} TXT id={record_id} did not change, but the policy did since {before.get('checked', 'the last check')}: "
            f"senders keep the old policy cached; publish id={expected}",
        )
    seen[domain] = {"id": record_id, "policy": policy, "checked": datetime.now().astimezone().isoformat(timespec="seconds")}
    if record_id != expected:
        return TlsCheck(domain, "MTA-STS id", FAIL, f"record {owner} TXT id={record_id} is not the hash of the policy served: expected id={expected}")
    return TlsCheck(domain, "MTA-STS id", OK, f"id={record_id} == hash of the policy served")


def _read_seen(store: Path) -> dict:
    try:
        data = json.loads((store / SEEN_POLICIES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_seen(store: Path, seen: dict) -> None:
    path = store / SEEN_POLICIES
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(seen, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


# --- TLS-RPT ------------------------------------------------------------------------------------------


def _check_tlsrpt(t: Topology, domain: str, q: Querier) -> TlsCheck:
    owner = f"_smtp._tls.{domain}"
    expected = tlsrpt_txt(t)
    answer = q.lookup(owner, "TXT")
    if answer.failed:
        return TlsCheck(domain, "TLS-RPT", _failure(answer), answer.describe())
    found = [v for v in answer.values if str(v).lower().startswith("v=tlsrptv1")] if answer.status == "ok" else []
    if found == [expected]:
        return TlsCheck(domain, "TLS-RPT", OK, f'{owner} TXT "{expected}"')
    shown = " | ".join(f'"{v}"' for v in found) or answer.describe()
    return TlsCheck(domain, "TLS-RPT", FAIL, f'record {owner} TXT: {shown}; expected exactly "{expected}"')
