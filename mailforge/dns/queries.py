"""Asking a nameserver, one question at a time, so that a timeout, SERVFAIL or REFUSED stays apart
from "no such record": a check must tell a broken DNS from a wrong one.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dns.exception  # dnspython (this module is mailforge.dns.queries; imports are absolute)
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from ..errors import MailforgeError


class DnsError(MailforgeError):
    """The DNS check could not run: no nameserver to ask, or none answered at all."""


@dataclass(frozen=True)
class Answer:
    """One answer: status "ok" (values), "nxdomain", "nodata", or a failure: "timeout", "servfail", "refused", "error"."""

    name: str
    rtype: str
    status: str
    values: tuple = ()
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("timeout", "servfail", "refused", "error")

    def describe(self) -> str:
        if self.status == "ok":
            return f"{self.name} {self.rtype} " + ", ".join(_show(v) for v in self.values)
        text = {
            "nxdomain": "NXDOMAIN (no such name)",
            "nodata": f"no {self.rtype} record",
            "timeout": "timeout",
            "servfail": "SERVFAIL",
            "refused": "REFUSED",
        }.get(self.status, self.status)
        return f"{self.name} {self.rtype}: {text}" + (f" ({self.detail})" if self.detail else "")


def _show(value) -> str:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def parse_nameserver(text: str) -> tuple[str, int]:
    """HOST, HOST:PORT, [IPv6]:PORT or a bare IPv6 address -> (address, port)."""
    text = text.strip()
    host, port = text, 53
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if match:
        host, port = match.group(1), int(match.group(2) or 53)
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        if not number.isdigit():
            raise DnsError(f"--nameserver {text!r}: the port is not a number")
        port = int(number)
    if not 1 <= port <= 65535:
        raise DnsError(f"--nameserver {text!r}: port {port} is not a port")
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0]), port
    except (OSError, UnicodeError) as exc:  # UnicodeError: a name no resolver could take (empty or over-long label)
        raise DnsError(f"--nameserver {text!r}: cannot resolve {host!r}: {exc}") from None


def system_nameservers() -> list[tuple[str, int]]:
    try:
        resolver = dns.resolver.Resolver(configure=True)
    except Exception as exc:  # noqa: BLE001 - dnspython raises several kinds for a missing or empty resolv.conf
        raise DnsError(f"no nameserver given and none configured on this machine ({exc}): use --nameserver HOST[:PORT]") from None
    servers = [(str(s), resolver.port) for s in resolver.nameservers]
    if not servers:
        raise DnsError("no nameserver given and none configured on this machine: use --nameserver HOST[:PORT]")
    return servers


class Querier:
    """Asks the nameservers one question at a time (recursion desired), remembering every answer.

    UDP first, TCP when truncated. A server that does not answer within `timeout` seconds is asked
    again (`tries` in all) before the next server; SERVFAIL and REFUSED also move on to the next.
    """

    def __init__(self, servers: list[tuple[str, int]], timeout: float = 2.0, tries: int = 2) -> None:
        self.servers = servers
        self.timeout = timeout
        self.tries = tries
        self.cache: dict[tuple[str, str], Answer] = {}
        self.responded = False  # whether any server answered anything at all

    def servers_text(self) -> str:
        return ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.servers)

    def lookup(self, name: str, rtype: str) -> Answer:
        key = (name.lower().rstrip("."), rtype)
        if key not in self.cache:
            self.cache[key] = self._resolve(key[0], rtype, depth=0)
        return self.cache[key]

    def _resolve(self, name: str, rtype: str, depth: int) -> Answer:
        response, failure = self._ask(name, rtype)
        if response is None:
            return failure
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return Answer(name, rtype, "nxdomain")
        if rcode != dns.rcode.NOERROR:
            return Answer(name, rtype, "error", detail=f"rcode {dns.rcode.to_text(rcode)}")
        current = dns.name.from_text(name)
        wanted = dns.rdatatype.from_text(rtype)
        for _ in range(8):
            rrset = _find(response, current, wanted)
            if rrset is not None:
                return Answer(name, rtype, "ok", tuple(_value(rtype, rdata) for rdata in rrset))
            alias = _find(response, current, dns.rdatatype.CNAME)
            if alias is None:
                break
            current = alias[0].target
        if current != dns.name.from_text(name):  # a CNAME the server did not follow: ask for its target
            if depth >= 8:
                return Answer(name, rtype, "error", detail="CNAME chain too long")
            followed = self._resolve(current.to_text(omit_final_dot=True), rtype, depth + 1)
            return Answer(name, rtype, followed.status, followed.values, followed.detail)
        return Answer(name, rtype, "nodata")

    def _ask(self, name: str, rtype: str):
        failure = Answer(name, rtype, "error", detail="no nameserver")
        for host, port in self.servers:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            for _ in range(self.tries):
                query = dns.message.make_query(name, rtype)
                try:
                    response = dns.query.udp(query, host, port=port, timeout=self.timeout)
                    if response.flags & dns.flags.TC:
                        response = dns.query.tcp(query, host, port=port, timeout=self.timeout)
                except dns.exception.Timeout:
                    failure = Answer(name, rtype, "timeout", detail=f"{where} did not answer within {self.timeout:g} s, {self.tries} tries")
                    continue
                except OSError as exc:
                    failure = Answer(name, rtype, "error", detail=f"{where}: {exc.strerror or exc}")
                    break
                except dns.exception.DNSException as exc:
                    failure = Answer(name, rtype, "error", detail=f"{where}: {exc}")
                    break
                self.responded = True
                rcode = response.rcode()
                if rcode == dns.rcode.SERVFAIL:
                    failure = Answer(name, rtype, "servfail", detail=f"from {where}")
                    break
                if rcode == dns.rcode.REFUSED:
                    failure = Answer(name, rtype, "refused", detail=f"{where} does not answer for this name")
                    break
                return response, None
        return None, failure

    def prefetch(self, questions: list[tuple[str, str]], workers: int = 16) -> None:
        """Ask many (name, type) questions at once; the answers land in the cache for `lookup`.

        A cluster hosting hundreds of domains needs a few questions per domain: asked in turn through
        a distant resolver, the check would wait one round trip per question (benchmarks/dns_check.py).
        """
        todo = [q for q in dict.fromkeys((name.lower().rstrip("."), rtype) for name, rtype in questions) if q not in self.cache]
        if len(todo) < 2:
            return
        with ThreadPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            list(pool.map(lambda question: self.lookup(*question), todo))

    def probe(self, name: str) -> None:
        """Raise DnsError unless at least one server answers something (even NXDOMAIN or REFUSED)."""
        answer = self.lookup(name, "SOA")
        if not self.responded:
            raise DnsError(f"no nameserver answered: {self.servers_text()}: {answer.status}" + (f" ({answer.detail})" if answer.detail else ""))


def _find(response, name, rdtype):
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN:
            return rrset
    return None


def _value(rtype: str, rdata):
    if rtype == "MX":
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True).lower())
    if rtype in ("A", "AAAA"):
        return str(ipaddress.ip_address(rdata.address))
    if rtype in ("PTR", "CNAME", "NS"):
        return rdata.target.to_text(omit_final_dot=True).lower()
    if rtype == "TXT":
        return b"".join(rdata.strings).decode("utf-8", errors="replace")
    return rdata.to_text()
