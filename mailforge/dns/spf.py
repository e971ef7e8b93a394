"""SPF evaluated far enough to judge the hosted domains' records: a TXT record that looks right can
still fail for a sender (a wrong include, too many lookups, a redirect with no record), so the check
runs check_host() of RFC 7208 through the same `Querier` rather than reading the text.
"""

from __future__ import annotations

import ipaddress
import re

from .queries import Answer, Querier


class _SpfError(Exception):
    def __init__(self, result: str, reason: str, answer: Answer | None = None):
        super().__init__(reason)
        self.result, self.reason, self.answer = result, reason, answer


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
LOOKUP_LIMIT, VOID_LIMIT = 10, 2  # RFC 7208 4.6.4
_LOOKUP_TERMS = ("include", "a", "mx", "ptr", "exists")


def spf_records(answer: Answer) -> list[str]:
    return [v for v in answer.values if re.match(r"(?i)v=spf1(\s|$)", v)]


def _terms(record: str) -> tuple[list[tuple[str, str]], str | None]:
    """A record's mechanisms as (qualifier, term) in order, and its redirect: the one parse both walks share."""
    mechanisms, redirect = [], None
    for term in record.split()[1:]:
        modifier = re.fullmatch(r"([A-Za-z][\w.-]*)=(.*)", term)
        if modifier:
            if modifier.group(1).lower() == "redirect":
                redirect = modifier.group(2)
            continue
        qualifier = _QUALIFIERS.get(term[0])
        mechanisms.append((qualifier, term[1:]) if qualifier else ("pass", term))
    return mechanisms, redirect


class Spf:
    """check_host() of RFC 7208 for ip4, ip6, a, mx, include, exists, redirect and all (no macros, ptr never matches)."""

    def __init__(self, querier: Querier) -> None:
        self.q = querier
        self.notes: list[str] = []

    def check(self, ip: str, domain: str) -> tuple[str, str]:
        """(result, reason) for `ip` sending as `domain`: pass, fail, softfail, neutral, none, permerror or temperror."""
        self.lookups = 0
        self.failure: Answer | None = None
        try:
            return self._check(ipaddress.ip_address(ip), domain, 0)
        except _SpfError as exc:
            self.failure = exc.answer
            return exc.result, exc.reason

    def count_lookups(self, domain: str) -> tuple[list[str], list[str], Answer | None]:
        """Every term of `domain`'s SPF tree that costs a DNS lookup (include, a, mx, ptr, exists, redirect; RFC 7208 4.6.4),
        as check_host() evaluates them for a sender that matches nothing (the worst case, which receivers meet
        for every forged sender), and the void lookups among them (no such name, or no record). The third value is
        the failed answer (timeout, SERVFAIL) that stopped the walk, if any."""
        terms: list[str] = []
        voids: list[str] = []

        def where(name: str) -> str:
            return "" if name == domain else f" (in {name})"

        def void(answer: Answer) -> bool:
            return answer.status in ("nxdomain", "nodata")

        def walk(name: str, depth: int, stack: tuple[str, ...]) -> Answer | None:
            if depth > 10 or name in stack:
                return None
            answer = self.q.lookup(name, "TXT")
            if answer.failed:
                return answer
            records = spf_records(answer) if answer.status == "ok" else []
            if len(records) != 1:
                return None
            mechanisms, redirect = _terms(records[0])
            has_all = False
            for _, bare in mechanisms:
                mech, _, rest = bare.partition(":")
                mech = mech.split("/")[0].lower()
                if mech == "all":
                    has_all = True
                if mech not in _LOOKUP_TERMS:
                    continue
                terms.append(bare + where(name))
                target = rest.split("/")[0] if rest else name
                if "%" in target or mech == "ptr":
                    continue
                if mech == "include":
                    sub = self.q.lookup(target, "TXT")
                    if sub.failed:
                        return sub
                    if void(sub):
                        voids.append(bare + where(name))
                    failed = walk(target, depth + 1, (*stack, name))
                    if failed:
                        return failed
                    continue
                looked = self.q.lookup(target, "MX" if mech == "mx" else "A")
                if looked.failed:
                    return looked
                if void(looked):
                    voids.append(bare + where(name))
            if redirect and not has_all:  # redirect is ignored when the record has an all (RFC 7208 6.1)
                terms.append(f"redirect={redirect}" + where(name))
                if "%" not in redirect:
                    return walk(redirect, depth + 1, (*stack, name))
            return None

        failure = walk(domain, 0, ())
        return terms, voids, failure

    def _txt(self, domain: str) -> list[str]:
        answer = self.q.lookup(domain, "TXT")
        if answer.failed:
            raise _SpfError("temperror", answer.describe(), answer)
        return spf_records(answer) if answer.status == "ok" else []

    def _count(self) -> None:
        self.lookups += 1
        if self.lookups > 10:
            raise _SpfError("permerror", "more than 10 DNS lookups")

    def _addresses(self, name: str, version: int) -> list[str]:
        answer = self.q.lookup(name, "A" if version == 4 else "AAAA")
        if answer.failed:
            raise _SpfError("temperror", answer.describe(), answer)
        return list(answer.values) if answer.status == "ok" else []

    def _check(self, ip, domain: str, depth: int) -> tuple[str, str]:
        if depth > 10:
            raise _SpfError("permerror", "include/redirect loop")
        records = self._txt(domain)
        if not records:
            return "none", f"{domain} has no SPF record"
        if len(records) > 1:
            raise _SpfError("permerror", f"{domain} has {len(records)} SPF records")
        mechanisms, redirect = _terms(records[0])
        for qualifier, term in mechanisms:
            if self._matches(ip, term, domain, depth):
                return qualifier, f"{domain}: {term}"
        if redirect:
            self._count()
            result, reason = self._check(ip, redirect, depth + 1)
            if result == "none":
                raise _SpfError("permerror", f"redirect={redirect} has no SPF record")
            return result, reason
        return "neutral", f"{domain}: no mechanism matched"

    def _matches(self, ip, term: str, domain: str, depth: int) -> bool:
        name, _, rest = term.partition(":")
        name = name.lower()
        shape = re.fullmatch(r"(?i)(a|mx)(?::([^/]+))?(?:/(\d+))?(?://(\d+))?", term)
        if shape:  # a, a/24, a:host/24, mx//64 ...
            mech, target = shape.group(1).lower(), shape.group(2) or domain
            prefix = int((shape.group(3) if ip.version == 4 else shape.group(4)) or (32 if ip.version == 4 else 128))
            if "%" in target:
                self.notes.append(f"{term}: macros are not evaluated")
                return False
            self._count()
            hosts = [target]
            if mech == "mx":
                answer = self.q.lookup(target, "MX")
                if answer.failed:
                    raise _SpfError("temperror", answer.describe(), answer)
                hosts = [host for _, host in answer.values][:10] if answer.status == "ok" else []
            for host in hosts:
                for address in self._addresses(host, ip.version):
                    if ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False):
                        return True
            return False
        if name in ("ip4", "ip6"):
            try:
                network = ipaddress.ip_network(rest, strict=False)
            except ValueError:
                raise _SpfError("permerror", f"{term} is not a network") from None
            return network.version == ip.version and ip in network
        if name == "all":
            return True
        if name == "include":
            if "%" in rest:
                self.notes.append(f"{term}: macros are not evaluated")
                return False
            self._count()
            result, reason = self._check(ip, rest, depth + 1)
            if result == "none":
                raise _SpfError("permerror", f"include:{rest} has no SPF record")
            return result == "pass"
        if name == "exists":
            if "%" in rest:
                self.notes.append(f"{term}: macros are not evaluated")
                return False
            self._count()
            return bool(self._addresses(rest, 4))
        if name == "ptr":
            self._count()
            self.notes.append("ptr is deprecated (RFC 7208) and not evaluated")
            return False
        raise _SpfError("permerror", f"unknown mechanism {term!r}")
