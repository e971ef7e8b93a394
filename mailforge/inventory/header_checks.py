"""Syntax of Postfix header_checks entries, judged by the same regcomp Postfix uses.

Python's `re` is not POSIX: `(?i)` compiles there and fails in Postfix.  Postfix's
regexp tables call the C library's regcomp(REG_EXTENDED | REG_ICASE), so the
check below calls it too, through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from typing import cast

REG_EXTENDED, REG_ICASE, REG_NEWLINE = 1, 2, 4
ACTIONS_WITH_ARGUMENT = {"BCC", "FILTER", "PREPEND", "REDIRECT", "REPLACE"}
ACTIONS = ACTIONS_WITH_ARGUMENT | {"DISCARD", "DUNNO", "HOLD", "IGNORE", "INFO", "PASS", "REJECT", "STRIP", "WARN"}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None)


def _regcomp_error(pattern: str, flags: int) -> str | None:
    regex = ctypes.create_string_buffer(4096)  # larger than any libc's regex_t
    code = _libc.regcomp(regex, pattern.encode("utf-8"), flags)
    if code == 0:
        _libc.regfree(regex)
        return None
    message = ctypes.create_string_buffer(256)
    _libc.regerror(code, regex, message, len(message))
    return message.value.decode("utf-8", "replace")


def split_pattern(text: str) -> tuple[str, str] | str:
    """(regex, flags) of a `[!]/regex/flags` pattern, or an error message."""
    body = text[1:] if text.startswith("!") else text
    if not body or body[0].isspace() or body[0].isalnum():
        return "a pattern starts with a delimiter such as '/'"
    delimiter = body[0]
    i = 1
    while i < len(body):
        if body[i] == "\\":
            i += 2
            continue
        if body[i] == delimiter:
            break
        i += 1
    else:
        return f"the closing {delimiter!r} is missing"
    regex, flags = body[1:i], body[i + 1 :]
    if not re.fullmatch(r"[imx]*", flags):
        return f"unknown flags {flags!r} after the pattern (Postfix knows i, m and x)"
    return regex, flags


def _compile_flags(flags: str) -> int:
    cflags = REG_EXTENDED | REG_ICASE
    for flag in flags:  # each flag toggles its option, as in Postfix's dict_regexp
        cflags ^= {"i": REG_ICASE, "m": REG_NEWLINE, "x": REG_EXTENDED}[flag]
    return cflags


def matches(text: str, line: str) -> bool:
    """Whether the header_checks pattern `text` (already known to compile) matches `line`."""
    negated = text.startswith("!")
    regex, flags = cast(tuple[str, str], split_pattern(text))  # a pattern that compiles splits
    compiled = ctypes.create_string_buffer(4096)
    if _libc.regcomp(compiled, regex.encode("utf-8"), _compile_flags(flags) | 8) != 0:  # 8: REG_NOSUB
        raise ValueError(f"{text!r} does not compile")
    try:
        found = _libc.regexec(compiled, line.encode("utf-8"), 0, None, 0) == 0
    finally:
        _libc.regfree(compiled)
    return found != negated


def pattern_error(text: str) -> str | None:
    """Why Postfix would refuse this header_checks pattern, or None."""
    if any(c in text for c in "\r\n"):
        return "the pattern spans lines"
    parts = split_pattern(text)
    if isinstance(parts, str):
        return f"{text!r}: {parts}"
    regex, flags = parts
    error = _regcomp_error(regex, _compile_flags(flags))
    return f"{text!r} does not compile as a POSIX regular expression: {error}" if error else None


def action_error(text: str) -> str | None:
    """Why Postfix would refuse this header_checks action, or None."""
    if any(c in text for c in "\r\n"):
        return "the action spans lines"
    words = text.split(None, 1)
    if not words:
        return "the action is empty"
    verb = words[0].upper()
    if verb not in ACTIONS:
        return f"{words[0]!r} is not a header_checks action"
    if verb in ACTIONS_WITH_ARGUMENT and len(words) < 2:
        return f"{verb} needs an argument"
    return None
