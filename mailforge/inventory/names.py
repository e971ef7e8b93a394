"""Host names, domains and mail addresses as Postfix lookup tables need them.

A map line is `key<whitespace>value`; a key with whitespace, a control
character or a leading `#` silently breaks it, so those are refused here, and
names are folded to the one form Postfix looks up (lower case, IDN as ASCII).
"""

from __future__ import annotations

import re

import idna

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# RFC 5322 dot-atom text: what a local part may hold without quoting.
_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")


class NameError_(ValueError):
    """A name that cannot be used, with what would be accepted instead."""

    def __init__(self, message: str, expected: str):
        super().__init__(message)
        self.expected = expected


def normalize_domain(value: str, *, what: str = "domain") -> str:
    """Return the ASCII, lower-case form of a domain or host name, or raise NameError_."""
    expected = f"a fully qualified {what} such as mx1.example.com (letters, digits, hyphens; IDN allowed)"
    if not isinstance(value, str):
        raise NameError_(f"{value!r} is not a {what}", expected)
    text = value.strip()
    if text != value or not text:
        raise NameError_(f"{value!r} has surrounding whitespace or is empty", expected)
    if any(ord(c) < 32 or ord(c) == 127 or c.isspace() for c in text):
        raise NameError_(f"{value!r} contains whitespace or control characters", expected)
    if text.endswith("."):
        text = text[:-1]
    try:
        ascii_name = text.encode("ascii").decode().lower() if text.isascii() else idna.encode(text, uts46=True).decode()
    except idna.IDNAError as exc:
        raise NameError_(f"{value!r} is not a valid internationalised name ({exc})", expected) from None
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise NameError_(f"{value!r} is not fully qualified", expected)
    if len(ascii_name) > 253:
        raise NameError_(f"{value!r} is longer than 253 characters", expected)
    for label in labels:
        if not _LABEL.match(label):
            raise NameError_(f"{value!r} has an invalid label {label!r}", expected)
    if "xn--" in ascii_name:
        try:
            idna.decode(ascii_name)
        except idna.IDNAError as exc:
            raise NameError_(f"{value!r} has an invalid punycode label ({exc})", expected) from None
    if labels[-1].isdigit():
        raise NameError_(f"{value!r} looks like an address, not a name", expected)
    return ascii_name


def check_local_part(value: str) -> str:
    """Return the local part folded to lower case, or raise NameError_."""
    if len(value) <= 64 and _ATOM.match(value):  # the common case, decided by one regex
        return value.lower()
    expected = "a local part of letters, digits and !#$%&'*+/=?^_`{|}~.- with no spaces, e.g. alice or first.last"
    if not value:
        raise NameError_("empty local part", expected)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise NameError_(f"{value!r} contains a control character", expected)
    if any(c.isspace() for c in value):
        raise NameError_(f"{value!r} contains whitespace, which would split the map line", expected)
    if "@" in value:
        raise NameError_(f"{value!r} contains '@'", expected)
    if not _ATOM.match(value):
        raise NameError_(f"{value!r} is not a plain local part", expected)
    if len(value) > 64:
        raise NameError_(f"{value!r} is longer than 64 characters", expected)
    return value.lower()
