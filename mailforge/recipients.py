"""The relays' list of valid recipients, read from the sources the topology names.

Kept as local parts crossed with every hosted domain plus extra full
addresses, because that is how the data arrives and it lets the map of a
million addresses be rendered with a few string operations per domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import Problem
from .mailnames import NameError_, check_local_part, normalize_domain

if TYPE_CHECKING:
    from .topology import Recipients
    from .yamlsource import Located


@dataclass
class RecipientSet:
    """Every valid recipient: `local_parts` at every domain, plus `extra` per domain."""

    local_parts: tuple[str, ...] = ()
    extra: dict[str, frozenset[str]] = field(default_factory=dict)

    def local_parts_at(self, domain: str) -> tuple[str, ...]:
        """Sorted local parts valid at `domain`."""
        extra = self.extra.get(domain)
        if not extra:
            return self.local_parts
        return tuple(sorted(set(self.local_parts) | extra))

    def count(self, domains: list[str]) -> int:
        return sum(len(self.local_parts_at(d)) for d in domains)


class _NotText(ValueError):
    expected = "UTF-8 text"


def _entries(path: Path):
    """(line number, text or _NotText) of each entry in a list file: blank lines and # comments skipped."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield number, _NotText(f"line is not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})")
                continue
            if number == 1:
                text = text.removeprefix("\ufeff")  # a byte order mark from a spreadsheet export
            stripped = text.strip()
            if stripped and not stripped.startswith("#"):
                yield number, text


class _AddressChecker:
    """Normalises addresses and places them under a hosted domain, remembering domains it has seen."""

    def __init__(self, domains: list[str], check_domains: bool = True):
        self.check_domains = check_domains
        self.hosted = set(domains)
        self.hosted_text = ", ".join(dict.fromkeys(domains))
        self.domain_cache: dict[str, str] = {}

    def check(self, value: str) -> tuple[str, str]:
        if value.count("@") != 1:
            raise NameError_(f"{value!r} is not an address with exactly one '@'", "a full address such as alice@example.com")
        local, domain = value.split("@")
        local = check_local_part(local)
        normal = self.domain_cache.get(domain)
        if normal is None:
            normal = self.domain_cache[domain] = normalize_domain(domain)
        if self.check_domains and normal not in self.hosted:
            raise NameError_(f"{value!r} is outside the hosted domains", f"an address at one of: {self.hosted_text}")
        return local, normal


def load_recipients(spec: Recipients, domains: list[str], directory: Path, source: Located,
                    check_domains: bool = True) -> tuple[RecipientSet, list[Problem]]:
    """Read every recipient source of `spec`; problems name the file and line, or the inline entry.

    `check_domains` is False when the hosted domains themselves are invalid: then
    "outside the hosted domains" would only repeat that problem.
    """
    problems: list[Problem] = []
    checker = _AddressChecker(domains, check_domains)
    local_parts: set[str] = set()
    extra: dict[str, set[str]] = {}

    def open_list(key: str, name: str) -> Path | None:
        path = (directory / name) if not Path(name).is_absolute() else Path(name)
        if not path.is_file():
            problems.append(source.problem(("recipients", key), f"file {name!r} not found (looked for {path})", "a path relative to the inventory directory"))
            return None
        return path

    def file_problem(path: Path, number: int, key: str, exc: Exception, expected: str = ""):
        problems.append(Problem(path, number, 1, f"recipients.{key}", str(exc), getattr(exc, "expected", expected)))

    if spec.local_parts_file:
        path = open_list("local_parts_file", spec.local_parts_file)
        if path:
            for number, text in _entries(path):
                try:
                    if isinstance(text, _NotText):
                        raise text
                    local_parts.add(check_local_part(text))
                except (NameError_, _NotText) as exc:
                    file_problem(path, number, "local_parts_file", exc)

    if spec.addresses_file:
        path = open_list("addresses_file", spec.addresses_file)
        if path:
            for number, text in _entries(path):
                try:
                    if isinstance(text, _NotText):
                        raise text
                    local, domain = checker.check(text)
                    extra.setdefault(domain, set()).add(local)
                except (NameError_, _NotText) as exc:
                    file_problem(path, number, "addresses_file", exc)

    for index, value in enumerate(spec.addresses):
        try:
            local, domain = checker.check(value)
            extra.setdefault(domain, set()).add(local)
        except NameError_ as exc:
            problems.append(source.problem(("recipients", "addresses", index), str(exc), exc.expected))

    result = RecipientSet(
        tuple(sorted(local_parts)),
        {domain: frozenset(parts - local_parts) for domain, parts in extra.items() if parts - local_parts},
    )
    return result, problems
