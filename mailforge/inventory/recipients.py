"""The relays' list of valid recipients, read from the sources the topology names.

Kept as local parts crossed with every hosted domain plus extra full
addresses, because that is how the data arrives and it lets the map of a
million addresses be rendered with a few string operations per domain.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Problem
from .names import NameError_, check_local_part, normalize_domain

if TYPE_CHECKING:
    from .model import CsvSource, LdapSource, Recipients
    from .positions import Located


@dataclass
class RecipientSet:
    """Every valid recipient: `local_parts` at every domain, plus `extra` per domain."""

    local_parts: tuple[str, ...] = ()
    extra: dict[str, frozenset[str]] = field(default_factory=dict)
    _merged: dict[str, tuple[str, ...]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def local_parts_at(self, domain: str) -> tuple[str, ...]:
        """Sorted local parts valid at `domain` (merged once per domain: maps are read several times)."""
        extra = self.extra.get(domain)
        if not extra:
            return self.local_parts
        if domain not in self._merged:
            self._merged[domain] = _merge_sorted(self.local_parts, extra)
        return self._merged[domain]

    def count(self, domains: list[str]) -> int:
        return sum(len(self.local_parts_at(d)) for d in domains)


def _merge_sorted(local_parts: tuple[str, ...], extra: frozenset[str]) -> tuple[str, ...]:
    """`local_parts` (sorted) with `extra` added: a few inline addresses cost a few bisections,
    not a sort of the whole list."""
    if len(extra) * 64 > len(local_parts):
        return tuple(sorted(set(local_parts) | extra))
    from bisect import bisect_left

    merged = list(local_parts)
    for local in sorted(extra):
        position = bisect_left(merged, local)
        if position == len(merged) or merged[position] != local:
            merged.insert(position, local)
    return tuple(merged)


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


def _field_column(line: str, delimiter: str, index: int) -> int | None:
    """1-based character column where field `index` starts in one physical CSV line."""
    if index == 0:
        return 1
    quoted, field = False, 0
    for position, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == delimiter and not quoted:
            field += 1
            if field == index:
                return position + 2
    return None


def _read_csv(spec: CsvSource, path: Path, add, problems: list[Problem]) -> None:
    """Each non-empty value of the column `spec.column`, handed to `add`; problems name the CSV line."""
    key = "recipients.csv"
    data = path.read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")  # a byte order mark from a spreadsheet export
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        problems.append(
            Problem(
                path,
                line,
                column,
                key,
                f"file is not UTF-8 text (byte {data[exc.start]:#04x})",
                "a CSV file saved as UTF-8 (with or without a byte order mark)",
            )
        )
        return
    lines: list[str] | None = None

    def column_of(line: int, index: int) -> int | None:
        nonlocal lines
        if lines is None:
            lines = re.split(r"\r\n|\r|\n", text)  # the line breaks the csv module counts
        return _field_column(lines[line - 1], spec.delimiter, index) if line <= len(lines) else None

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=spec.delimiter, strict=True)
    header: list[str] | None = None
    index = 0
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                matches = [i for i, name in enumerate(header) if name == spec.column] or [
                    i for i, name in enumerate(header) if name.casefold() == spec.column.casefold()
                ]
                if not matches:
                    hint = ""
                    others = [d for d in ",;\t|" if d != spec.delimiter and d in row[0]]
                    if len(header) == 1 and others:
                        hint = f"; the header holds {others[0]!r}: is that the delimiter?"
                    problems.append(
                        Problem(
                            path,
                            line,
                            1,
                            f"{key}.column",
                            f"no column {spec.column!r} in the header line; its columns are: {', '.join(map(repr, header))}{hint}",
                            "column: the header of the column holding the addresses",
                        )
                    )
                    return
                if len(matches) > 1:
                    problems.append(
                        Problem(
                            path,
                            line,
                            column_of(line, matches[1]),
                            f"{key}.column",
                            f"column {spec.column!r} appears {len(matches)} times in the header line (fields {', '.join(str(i + 1) for i in matches)})",
                            "a header naming the address column once",
                        )
                    )
                    return
                index = matches[0]
                continue
            if index >= len(row):
                problems.append(
                    Problem(
                        path,
                        line,
                        None,
                        key,
                        f"the row has {len(row)} field{'s' if len(row) != 1 else ''}, so no column {spec.column!r} (field {index + 1} of {len(header)})",
                        f"a row with the header's {len(header)} fields",
                    )
                )
                continue
            value = row[index].strip()
            if not value:
                continue  # a row without an address (e.g. a person with no mailbox)
            try:
                add(value)
            except NameError_ as exc:
                where = column_of(line, index) if line == reader.line_num else None
                problems.append(Problem(path, line, where, key, f"column {spec.column!r}: {exc}", exc.expected))
    except csv.Error as exc:
        problems.append(
            Problem(
                path,
                reader.line_num or start,
                None,
                key,
                f"not valid CSV: {exc}",
                'fields separated by the delimiter, a field holding the delimiter or a quote put in "double quotes" with quotes doubled',
            )
        )


def _ldap_password(spec: LdapSource, directory: Path, source: Located, problems: list[Problem]) -> tuple[bool, str | None]:
    """(usable, password) for `spec`: from the environment or a file, never from the inventory."""
    path = ("recipients", "ldap")
    if spec.password_env:
        value = os.environ.get(spec.password_env)
        if not value:
            problems.append(
                source.problem(
                    path + ("password_env",), f"environment variable {spec.password_env!r} is not set or is empty", f"the bind password in {spec.password_env}"
                )
            )
            return False, None
        return True, value
    if spec.password_file:
        file = Path(spec.password_file) if Path(spec.password_file).is_absolute() else directory / spec.password_file
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(
                source.problem(
                    path + ("password_file",), f"file {spec.password_file!r} not found (looked for {file})", "a path relative to the inventory directory"
                )
            )
            return False, None
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(
                source.problem(
                    path + ("password_file",),
                    f"file {spec.password_file!r} cannot be read: {type(exc).__name__}",
                    "a readable UTF-8 file holding the password on its first line",
                )
            )
            return False, None
        lines = text.splitlines()
        value = lines[0] if lines else ""
        if not value:
            # An empty password would make the bind an unauthenticated one, which servers accept.
            problems.append(
                source.problem(
                    path + ("password_file",), f"file {spec.password_file!r} holds no password on its first line", "the bind password on the file's first line"
                )
            )
            return False, None
        return True, value
    return True, None


def _read_ldap(spec: LdapSource, directory: Path, source: Located, add, problems: list[Problem]) -> None:
    """Each value of `spec.attributes` in the entries the search finds, handed to `add`."""
    from .ldap import LdapSourceError, search

    path = ("recipients", "ldap")
    usable, password = _ldap_password(spec, directory, source, problems)
    if not usable:
        return
    ca_file = None
    if spec.ca_file:
        ca = Path(spec.ca_file) if Path(spec.ca_file).is_absolute() else directory / spec.ca_file
        if not ca.is_file():
            problems.append(source.problem(path + ("ca_file",), f"file {spec.ca_file!r} not found (looked for {ca})", "a PEM file of CA certificates"))
            return
        ca_file = str(ca)
    label = f"LDAP {spec.uri}"
    position = {name: index for index, name in enumerate(spec.attributes)}
    try:
        for entry in search(
            uri=spec.uri,
            bind_dn=spec.bind_dn,
            password=password,
            base=spec.base,
            filter=spec.filter,
            attributes=list(spec.attributes),
            page_size=spec.page_size,
            start_tls=spec.start_tls,
            ca_file=ca_file,
            timeout=spec.timeout,
        ):
            for attribute, values in entry.values.items():
                for raw in values:
                    try:
                        try:
                            value = raw.decode("utf-8").strip()
                        except UnicodeDecodeError:
                            raise NameError_(f"a value of {len(raw)} bytes is not UTF-8 text", "an address in UTF-8") from None
                        if value:
                            add(value)
                    except NameError_ as exc:
                        problems.append(
                            source.problem(
                                path + ("attributes", position[attribute]), f"{label}: entry {entry.dn!r}, attribute {attribute}: {exc}", exc.expected
                            )
                        )
    except LdapSourceError as exc:
        problems.append(source.problem(path + (exc.key,), f"{label}: {exc}", exc.expected))


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL_PART_LINE = rf"(?!#){_ATEXT}+(?:\.{_ATEXT}+)*"
# A line the fast path cannot take as it is: neither blank, nor a comment, nor a plain local part.
_OTHER_LINE = re.compile(rf"^(?!(?:{_LOCAL_PART_LINE}|[ \t]*(?:#[^\n]*)?)\r?$).*$", re.M)
_PLAIN_LINE = re.compile(rf"^({_LOCAL_PART_LINE})\r?$", re.M)


def _plain_local_parts(path: Path) -> dict[str, None] | None:
    """Every local part of a file whose lines are all plain local parts, blank or comments, read with
    two regex passes over the whole text; None when any line needs the line-by-line reader (and its
    file:line messages). A million-line export of plain names takes a fraction of a second."""
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return None
    if _OTHER_LINE.search(text):
        return None
    found = _PLAIN_LINE.findall(text.lower())  # atext is ASCII: lower() keeps every line as it is, folded
    if found and max(map(len, found)) > 64:
        return None
    return dict.fromkeys(found)  # in file order: an export that is already sorted sorts in linear time


def load_recipients(
    spec: Recipients, domains: list[str], directory: Path, source: Located, check_domains: bool = True, skip: set[str] | frozenset[str] = frozenset()
) -> tuple[RecipientSet, list[Problem]]:
    """Read every recipient source of `spec`; problems name the file and line, the LDAP entry, or the inline entry.

    `check_domains` is False when the hosted domains themselves are invalid: then
    "outside the hosted domains" would only repeat that problem.  Sources named in
    `skip` ("csv", "ldap") have invalid settings, already reported: they are not read.
    """
    problems: list[Problem] = []
    checker = _AddressChecker(domains, check_domains)
    local_parts: dict[str, None] = {}  # a set that keeps file order (see _plain_local_parts)
    extra: dict[str, set[str]] = {}

    def open_list(key: str | tuple, name: str) -> Path | None:
        path = (directory / name) if not Path(name).is_absolute() else Path(name)
        if not path.is_file():
            problems.append(
                source.problem(
                    ("recipients",) + ((key,) if isinstance(key, str) else key),
                    f"file {name!r} not found (looked for {path})",
                    "a path relative to the inventory directory",
                )
            )
            return None
        return path

    def add_address(value: str) -> None:
        local, domain = checker.check(value)
        extra.setdefault(domain, set()).add(local)

    def file_problem(path: Path, number: int, key: str, exc: Exception, expected: str = ""):
        problems.append(Problem(path, number, 1, f"recipients.{key}", str(exc), getattr(exc, "expected", expected)))

    if spec.local_parts_file:
        path = open_list("local_parts_file", spec.local_parts_file)
        plain = _plain_local_parts(path) if path else None
        if plain is not None:
            local_parts.update(plain)
        elif path:
            for number, text in _entries(path):
                try:
                    if isinstance(text, _NotText):
                        raise text
                    local_parts[check_local_part(text)] = None
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

    csv_spec: CsvSource | None = getattr(spec, "csv", None)
    if csv_spec is not None and "csv" not in skip:
        path = open_list(("csv", "file"), csv_spec.file)
        if path:
            try:
                _read_csv(csv_spec, path, add_address, problems)
            except OSError as exc:
                problems.append(
                    source.problem(("recipients", "csv", "file"), f"file {csv_spec.file!r} cannot be read: {exc.strerror or exc}", "a readable file")
                )

    ldap_spec: LdapSource | None = getattr(spec, "ldap", None)
    if ldap_spec is not None and "ldap" not in skip:
        _read_ldap(ldap_spec, directory, source, add_address, problems)

    result = RecipientSet(
        tuple(sorted(local_parts)),
        {domain: frozenset(parts - local_parts.keys()) for domain, parts in extra.items() if parts - local_parts.keys()},
    )
    return result, problems
