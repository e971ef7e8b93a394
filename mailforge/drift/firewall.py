"""The loaded firewall rules against the rendered ones, both as the kernel prints them.

The rules file on disk says nothing about what the kernel enforces, so drift compares the loaded
rules (`iptables-save`) with the rendered file brought to the same form: loaded into a throw-away
network namespace and printed back, or, where that cannot run, rewritten by a textual normaliser.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess
from functools import lru_cache

CTSTATE_ORDER = ["INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT"]


def ruleset(text: str) -> dict[str, dict]:
    """iptables-save text -> {table: {"policies": {chain: policy}, "rules": {chain: [rule, ...]}}}:
    no comment lines, no counters. Tables with nothing in them (built-in chains only, policy ACCEPT,
    no rule) are left out: the kernel shows such a table once anything has looked at it."""
    tables: dict[str, dict] = {}
    table = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {"policies": {}, "rules": {}})
        elif table is None or line == "COMMIT":
            continue
        elif line.startswith(":"):
            words = line[1:].split()
            table["policies"][words[0]] = words[1] if len(words) > 1 else "-"
        else:
            line = re.sub(r"^\[\d+:\d+\]\s+", "", line)  # iptables-save -c counters
            words = line.split(None, 2)
            if len(words) >= 2 and words[0] in ("-A", "-I"):
                table["rules"].setdefault(words[1], []).append("-A " + " ".join(line.split()[1:]))
    return {
        name: t
        for name, t in tables.items()
        if any(t["rules"].values())
        or any(p not in ("ACCEPT", "-") for p in t["policies"].values())
        or set(t["policies"]) - {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}
    }


def canonical_lines(text: str) -> list[str]:
    """The ruleset as comparable lines: per table, the chains and their policies, then each chain's rules in order."""
    lines = []
    for name, table in sorted(ruleset(text).items()):
        lines.append(f"*{name}")
        lines += [f":{chain} {policy}" for chain, policy in sorted(table["policies"].items())]
        for chain in sorted(table["rules"]):
            lines += table["rules"][chain]
        lines.append("COMMIT")
    return lines


def _textual_rule(rule: str, family: int) -> str:
    """A rule as iptables-save prints it, as far as a text rewrite can tell: addresses with their
    prefix, `-m tcp` before --dport, conntrack states in the kernel's order."""
    words = shlex.split(rule)
    out: list[str] = []
    i = 0
    protocol = None
    while i < len(words):
        word = words[i]
        if word in ("-s", "-d", "--source", "--destination") and i + 1 < len(words):
            value = words[i + 1]
            try:
                value = str(ipaddress.ip_network(value, strict=False))
            except ValueError:
                pass
            out += [{"--source": "-s", "--destination": "-d"}.get(word, word), value]
            i += 2
            continue
        if word in ("-p", "--protocol") and i + 1 < len(words):
            protocol = words[i + 1]
            out += ["-p", protocol]
            i += 2
            if (
                protocol in ("tcp", "udp")
                and any(w in ("--dport", "--sport", "--dports") for w in words[i:])
                and not (i + 1 < len(words) and words[i] == "-m" and words[i + 1] == protocol)
            ):
                out += ["-m", protocol]
            continue
        if word in ("--ctstate", "--state") and i + 1 < len(words):
            states = words[i + 1].split(",")
            states.sort(key=lambda s: CTSTATE_ORDER.index(s) if s in CTSTATE_ORDER else len(CTSTATE_ORDER))
            out += [word, ",".join(states)]
            i += 2
            continue
        if word == "--comment" and i + 1 < len(words):
            out += [word, '"' + words[i + 1] + '"']
            i += 2
            continue
        out.append(word)
        i += 1
    return " ".join(out)


def textual_canonical(text: str, family: int) -> str:
    """The rendered rules as the kernel would print them, without asking the kernel."""
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        lines.append(_textual_rule(line, family) if line.startswith(("-A ", "-I ")) else line)
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=64)
def kernel_canonical(text: str, family: int) -> str | None:
    """Load the rules into a throw-away network namespace and print them back (needs root and
    iptables on the controller); None where that cannot run."""
    tool = "iptables" if family == 4 else "ip6tables"
    try:
        result = subprocess.run(["unshare", "--net", "sh", "-c", f"{tool}-restore && {tool}-save"], input=text, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 and "*" in result.stdout else None


def canonical_rendered(text: str, family: int) -> tuple[list[str], str]:
    """The rendered rules file as comparable lines, and how they were made ("kernel" or "textual")."""
    printed = kernel_canonical(text, family)
    if printed is not None:
        return canonical_lines(printed), "kernel"
    return canonical_lines(textual_canonical(text, family)), "textual"


def firewall_method() -> str:
    """How this controller canonicalises the rendered rules: by loading them into a throw-away
    network namespace (root and iptables here), or with the textual normaliser."""
    probe = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"
    return "kernel" if kernel_canonical(probe, 4) is not None else "textual"
