"""The value types of the inventory: each refuses a bad value with a message and what would be accepted.

A validator raises `fail(message, expected)`; `problems.py` turns it into a located Problem.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, StrictInt
from pydantic_core import PydanticCustomError

from .names import NameError_, normalize_domain
from .releases import RELEASES, Codename


def fail(message: str, expected: str) -> PydanticCustomError:
    return PydanticCustomError("mailforge", "{message}", {"message": message, "expected": expected})


def _domain(value: str) -> str:
    try:
        return normalize_domain(value)
    except NameError_ as exc:
        raise fail(str(exc), exc.expected) from None


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise fail(f"{value!r} is not an IPv4 or IPv6 address", "an address such as 192.0.2.25 or 2001:db8::25") from None


def _network(value: str) -> str:
    text = str(value)
    try:
        return str(ipaddress.ip_network(text))
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise fail(f"{text!r} is not an IPv4 or IPv6 network", "a CIDR such as 192.0.2.0/24 or 2001:db8::/64") from None
        raise fail(f"{text!r} has host bits set", f"the network address, {loose}") from None


def _name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", value):
        raise fail(f"{value!r} is not a usable host name", "lower-case letters, digits, '-' or '_', starting with a letter or digit")
    return value


def _config_text(value: str) -> str:
    """Text that ends up inside a Postfix or HAProxy file: one line, no control characters."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise fail(
            f"{value!r} contains a line break or control character, which would inject lines into the rendered files",
            "text on a single line with no control characters",
        )
    return value


def _file_path(value: str) -> str:
    _config_text(value)
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise fail(f"{value!r} is not an absolute path without spaces", "a path such as /etc/ssl/certs/mx.pem")
    return value


def _main_cf_value(value: object) -> str | int | bool:
    if isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, str):
        return _config_text(value)
    raise fail(f"{value!r} is not a single main.cf value", "a string, number or yes/no")


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise fail(f"{value} is not a TCP port", "a number from 1 to 65535")
    return value


def _debian_release(value: object) -> object:
    if value not in RELEASES:
        raise fail(
            f"{value!r} is not a Debian release mailforge supports",
            " or ".join(f"{r.codename} (Debian {r.version})" for r in RELEASES.values()),
        )
    return value


Domain = Annotated[str, AfterValidator(_domain)]
Address = Annotated[str, AfterValidator(_address)]
Network = Annotated[str, AfterValidator(_network)]
HostName = Annotated[str, AfterValidator(_name)]
Port = Annotated[StrictInt, AfterValidator(_port)]
ConfigText = Annotated[str, AfterValidator(_config_text)]
FilePath = Annotated[str, AfterValidator(_file_path)]
MainCfValue = Annotated[object, AfterValidator(_main_cf_value)]
# A Literal for the JSON Schema's enum; the validator before it gives the message.
DebianCodename = Annotated[Codename, BeforeValidator(_debian_release)]


def _csv_delimiter(value: str) -> str:
    if len(value) != 1 or value in '"\r\n' or value.isalnum():
        raise fail(
            f"{value!r} is not a usable CSV delimiter", "one character that is not a letter, digit, quote or line break, e.g. ',' ';' or \"\\t\" for a tab"
        )
    return value


def _ldap_uri(value: str) -> str:
    _config_text(value)
    parts = urllib.parse.urlsplit(value)
    try:
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        raise fail(f"{value!r} has an invalid port", "a port from 1 to 65535, e.g. ldap://ldap.example.com:389") from None
    if parts.scheme.lower() not in ("ldap", "ldaps") or not parts.hostname:
        raise fail(f"{value!r} is not an ldap:// or ldaps:// URI with a host", "a URI such as ldap://ldap.example.com or ldaps://ldap.example.com:636")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise fail(
            f"{value!r} holds more than the server's address",
            "only scheme, host and port, e.g. ldaps://ldap.example.com:636 (the search base goes under 'base', the bind DN under 'bind_dn')",
        )
    return value


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        # The value is not shown: a password put here by mistake must not be printed.
        raise fail(
            "is not the name of an environment variable (the value is not shown, in case it is the password itself)",
            "a variable name such as MAILFORGE_LDAP_PASSWORD; its value is the password",
        )
    return value


def _ldap_attribute(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+", value):
        raise fail(f"{value!r} is not an LDAP attribute name", "an attribute such as mail or mailAlternateAddress")
    return value


def _ldap_filter(value: str) -> str:
    _config_text(value)
    if not (value.startswith("(") and value.endswith(")")) or value.count("(") != value.count(")"):
        raise fail(f"{value!r} is not an LDAP filter", "a filter in parentheses, e.g. (objectClass=inetOrgPerson) or (&(objectClass=person)(mail=*))")
    return value


CsvDelimiter = Annotated[str, AfterValidator(_csv_delimiter)]
LdapUri = Annotated[str, AfterValidator(_ldap_uri)]
EnvName = Annotated[str, AfterValidator(_env_name)]
LdapAttribute = Annotated[str, AfterValidator(_ldap_attribute)]
LdapFilter = Annotated[str, AfterValidator(_ldap_filter)]
