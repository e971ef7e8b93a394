"""Reading recipient addresses from an LDAP directory (ldap3), page by page.

Directories cap how many entries one search returns (OpenLDAP's sizelimit,
Active Directory's MaxPageSize), so the search uses the simple paged results
control (RFC 2696): each page stays under the cap and the cookie fetches the
next one.  Referrals are not followed, so the password is only ever sent to
the server the inventory names.

The password is passed in, never stored, and scrubbed from any text that
leaves this module (server messages included).  ldap3 is imported only when a
directory is searched, so inventories without one do not pay for it.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

PAGED_RESULTS = "1.2.840.113556.1.4.319"


class LdapSourceError(Exception):
    """The directory could not be searched: `key` is the setting to look at, under recipients.ldap."""

    def __init__(self, key: str, message: str, expected: str = ""):
        super().__init__(message)
        self.key = key
        self.expected = expected


@dataclass(frozen=True)
class Entry:
    dn: str
    values: dict[str, list[bytes]]  # the configured attribute name -> raw values


def _words(description: str) -> str:
    """ldap3's result descriptions are camelCase: invalidCredentials -> invalid credentials."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", description).lower()


def _scrub(text: str, password: str | None) -> str:
    return text.replace(password, "********") if password else text


def _cause(exc: BaseException, password: str | None) -> str:
    """A one-line reason from an ldap3 exception, without its wrapping noise."""
    text = str(exc) or type(exc).__name__
    tls = re.search(r"\[SSL: ([A-Z0-9_]+)\] ([^(')\]]+)", text)
    if tls:  # "socket ssl wrapping error: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ... (_ssl.c:1006)"
        return _scrub(f"TLS failed: {tls.group(2).strip().rstrip(',')}", password)
    # LDAPSocketOpenError for every address tried: "socket connection error while opening: [Errno 111] Connection refused"
    found = re.findall(r"\[Errno -?\d+\] ([^'\]\)]+)", text)
    if found:
        text = "; ".join(dict.fromkeys(s.strip().lower() for s in found))
    text = " ".join(text.split()).strip("()'\", ")
    if text == "invalid server address":
        text = "the host name does not resolve (invalid server address)"
    return _scrub(text, password)


def search(
    *,
    uri: str,
    bind_dn: str | None,
    password: str | None,
    base: str,
    filter: str,
    attributes: list[str],
    page_size: int,
    start_tls: bool,
    ca_file: str | None,
    timeout: float,
) -> Iterator[Entry]:
    """Every entry under `base` matching `filter` that has one of `attributes`; raises LdapSourceError."""
    import ldap3
    from ldap3.core import exceptions as lx

    secure = start_tls or uri.lower().startswith("ldaps:")
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_file) if secure else None
    server = ldap3.Server(uri, connect_timeout=timeout, get_info=ldap3.NONE, tls=tls)
    connection = ldap3.Connection(
        server,
        user=bind_dn,
        password=password,
        authentication=ldap3.SIMPLE if bind_dn else ldap3.ANONYMOUS,
        auto_bind=ldap3.AUTO_BIND_NONE,
        receive_timeout=timeout,
        read_only=True,
        auto_referrals=False,
        raise_exceptions=False,
        check_names=False,
    )
    wanted = {name.lower(): name for name in attributes}

    def failed(key: str, what: str, expected: str = "") -> LdapSourceError:
        result = connection.result or {}
        reason = _words(str(result.get("description") or "error"))
        extra = _scrub(" ".join(str(result.get("message") or "").split()), password)
        return LdapSourceError(key, f"{what}: {reason}" + (f" ({extra})" if extra else ""), expected)

    try:
        try:
            connection.open()
        except lx.LDAPSocketOpenError as exc:
            raise LdapSourceError(
                "uri", f"cannot connect: {_cause(exc, password)}", "a reachable LDAP server: check the host, the port and any firewall in between"
            ) from None
        if start_tls and not connection.start_tls():
            raise failed("start_tls", "StartTLS failed", "a server that offers StartTLS with a certificate the CAs trust (ca_file)")
        if not connection.bind():
            who = f"bind as {bind_dn!r} failed" if bind_dn else "anonymous bind failed"
            raise failed("bind_dn" if bind_dn else "uri", who, "the right bind_dn and password")
        cookie = None
        while True:
            connection.search(base, filter, search_scope=ldap3.SUBTREE, attributes=list(attributes), paged_size=page_size, paged_cookie=cookie)
            result = connection.result or {}
            code = result.get("result")
            if code == 32:  # noSuchObject
                raise failed("base", f"search base {base!r} does not exist", "the DN of an existing entry, e.g. ou=people,dc=example,dc=com")
            if code == 4:  # sizeLimitExceeded
                raise failed(
                    "page_size",
                    "the server stopped the search at its size limit although the search was paged",
                    "a page_size below the server's size limit, or a server that supports paged results",
                )
            if code == 11:  # adminLimitExceeded: the page is bigger than the server allows
                raise failed("page_size", f"the server refused pages of {page_size} entries", "a smaller page_size")
            if code != 0:
                raise failed("filter" if code in (7, 87) else "base", "search failed")
            for item in connection.response or ():
                if item.get("type") != "searchResEntry":
                    continue  # referrals and continuation references are not followed
                values: dict[str, list[bytes]] = {}
                for name, raw in (item.get("raw_attributes") or {}).items():
                    configured = wanted.get(name.lower().split(";", 1)[0])
                    if configured and raw:
                        values.setdefault(configured, []).extend(raw)
                if values:
                    yield Entry(item.get("dn", ""), values)
            cookie = (result.get("controls") or {}).get(PAGED_RESULTS, {}).get("value", {}).get("cookie")
            if not cookie:
                break
    except LdapSourceError:
        raise
    except lx.LDAPInvalidFilterError as exc:
        raise LdapSourceError("filter", f"invalid search filter {filter!r}: {_cause(exc, password)}", "a filter such as (objectClass=inetOrgPerson)") from None
    except lx.LDAPStartTLSError as exc:
        raise LdapSourceError(
            "start_tls", f"StartTLS failed: {_cause(exc, password)}", "a certificate the CAs trust (ca_file) for the host in the uri"
        ) from None
    except (lx.LDAPResponseTimeoutError, lx.LDAPSocketReceiveError, TimeoutError, ssl.SSLError, OSError, lx.LDAPException) as exc:
        if isinstance(exc, (lx.LDAPResponseTimeoutError, TimeoutError)) or "timed out" in str(exc):
            cause = f"no answer within {timeout:g} s"
        else:
            cause = _cause(exc, password)
        raise LdapSourceError("uri", f"the connection failed: {cause}", "a reachable LDAP server that answers within timeout") from None
    except Exception as exc:  # noqa: BLE001 - ldap3 fails with KeyError & co. on answers that are not LDAP
        raise LdapSourceError(
            "uri", f"the answer is not LDAP ({type(exc).__name__} while decoding it)", "the host and port of an LDAP server (ldaps:// for a TLS port)"
        ) from None
    finally:
        try:
            connection.unbind()
        except Exception:  # noqa: BLE001 - closing a connection that failed
            pass
